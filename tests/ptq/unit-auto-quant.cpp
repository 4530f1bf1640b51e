// AutoQuant (ptq/auto_quant.hpp) on a small conv → batch norm → ReLU6 → depthwise conv → batch
// norm → ReLU → conv → pool → linear model at W4A8 per tensor, scored by −MSE against the FP32
// output. The truths: every stage's score is the score of the simulation built the ordinary way
// (a quantsim of the candidate's own range-setter types computing its own encodings; the model
// equalized by ptq::equalize), the flow's choices follow from those scores by AIMET's rules,
// the returned simulation and the files reproduce the chosen score, and the cache is checked by
// counting the callback's calls.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <stdexcept>

#include <qkit/io/encodings_file.hpp>
#include <qkit/nn/nn.hpp>
#include <qkit/analysis/auto_quant_mixed_precision.hpp>
#include <qkit/ptq/auto_quant.hpp>

#include "ptq_test_util.hpp"
#include "report_browser.hpp"

namespace unit_auto_quant {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using namespace qkit::nn;
using report_browser::read_json;

namespace {

auto make_model() {
  auto m = sequential(conv2d(1, 6, 3, {.padding = 1, .bias = false}), batch_norm(6), relu6(),
                      conv2d(6, 6, 3, {.padding = 1, .groups = 6}), batch_norm(6), relu(), conv2d(6, 4, 1),
                      global_avg_pool(), flatten(), linear(4, 3));
  init_parameters(m, 7);
  // Channels of very different scale after folding, so per-tensor 4-bit weights suffer and
  // cross-layer equalization has something to do.
  const float gammas[6] = {0.05f, 3.0f, 0.2f, 1.0f, 6.0f, 0.5f};
  for (std::size_t c = 0; c < 6; ++c) {
    m.get<1>().weight()(c) = gammas[c];
    m.get<1>().bias()(c) = 0.1f * float(c);
    m.get<4>().weight()(c) = gammas[5 - c];
  }
  return m;
}
using model_t = decltype(make_model());
using P = presets::w4a8;

tensor images(std::size_t n, std::uint32_t seed) {
  return ptq_test::normal_tensor({n, 1, 8, 8}, seed);
}

struct setup {
  model_t model = make_model();
  tensor example = images(1, 1);
  data::dataset calib{images(256, 5)};
  tensor eval_x = images(128, 11);
  tensor reference;
  int calls = 0;
  setup() {
    auto m = model;
    no_hooks h;
    reference = nn::forward(m, eval_x, h);
  }
  // −MSE of any model or simulation's output against the FP32 output; counts its calls.
  auto score() {
    return [this](auto& m) {
      ++calls;
      tensor y;
      if constexpr (requires { m.forward(eval_x); }) y = m.forward(eval_x);
      else {
        no_hooks h;
        y = nn::forward(m, eval_x, h);
      }
      double s = 0.0;
      for (std::size_t i = 0; i < y.size(); ++i) {
        const double d = double(y.data()[i]) - reference.data()[i];
        s += d * d;
      }
      return -s / double(y.size());
    };
  }
  ptq::auto_quant_options options(const std::string& name, double drop) {
    ptq::auto_quant_options o;
    o.results_dir = std::filesystem::path(QKIT_TEST_OUTPUT) / ("auto_quant_" + name);
    std::filesystem::remove_all(o.results_dir);
    o.allowed_drop = drop;
    o.calibration_samples = 256;
    o.adaround.iterations = 500;  // AdaRound's own tests check what it computes
    o.adaround.samples = 128;
    o.verbose = false;
    return o;
  }
  // The ordinary way: a simulation of the candidate's own types computing its encodings.
  template <class W, class A>
  double direct(const model_t& m, batch_norm_mode bn, W w, A a, bool weights_on = true) {
    quantsim<model_t, P, W, A> sim(m, example, P::default_config(), a, w, {.batch_norms = bn});
    if (!weights_on)
      sim.for_each_quantizer([](const std::string&, quantizer_kind k, auto& q) {
        if (k == quantizer_kind::param) q.set_enabled(false);
      });
    calibrate(sim, calib, 256);
    const int before = calls;
    const double s = score()(sim);
    calls = before;
    return s;
  }
  // The candidate's range setters as types (only the ones AIMET's candidates use, to keep
  // the instantiations few).
  template <class F>
  double direct_for(const ptq::range_candidate& c, F&& f) {
    auto with_act = [&](auto w) {
      switch (c.activations) {
        case range_method::minmax: return f(w, minmax_range{});
        case range_method::tf_enhanced: return f(w, tf_enhanced_range{});
        case range_method::percentile_99_9: return f(w, percentile_range{99.9});
        case range_method::percentile_99_99: return f(w, percentile_range{99.99});
        default: break;
      }
      FAIL("not one of AIMET's candidates");
      return 0.0;
    };
    return c.weights == range_method::minmax ? with_act(minmax_range{}) : with_act(tf_enhanced_range{});
  }
};

const ptq::auto_quant_stage& stage(const ptq::auto_quant_result<model_t, P>& r, const std::string& name) {
  for (const auto& s : r.stages)
    if (s.name == name) return s;
  FAIL("no stage " << name);
  return r.stages.front();
}

}  // namespace

TEST_CASE("auto_quant: each stage scores what the simulation built directly scores, and the flow stops at the first stage that meets the target") {
  setup s;
  auto o = s.options("stop_early", 1e9);  // any stage meets it
  auto r = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
  INFO(r.summary());
  CHECK(r.fp32 == 0.0);  // the FP32 model against its own output
  REQUIRE(r.stages.size() == 6);

  // Selection: AIMET's five candidates, each scored as its own simulation would score (batch
  // norms live, as AIMET scores the unfolded model); the best (first on ties) is chosen.
  const auto& sel = stage(r, "QuantScheme Selection");
  REQUIRE(sel.trials.size() == 5);
  const auto cands = ptq::aimet_range_candidates();
  double best = -1e300;
  ptq::range_candidate chosen;
  for (std::size_t i = 0; i < cands.size(); ++i) {
    CAPTURE(cands[i].label());
    CHECK(sel.trials[i].label == cands[i].label());
    const double d = s.direct_for(cands[i], [&](auto w, auto a) { return s.direct(s.model, batch_norm_mode::keep, w, a); });
    CHECK(sel.trials[i].score == d);
    if (d > best) {
      best = d;
      chosen = cands[i];
    }
  }
  CHECK(r.ranges == chosen);

  // W32: the chosen activation ranges, the weights in float.
  const double w32 = s.direct_for(r.ranges, [&](auto w, auto a) { return s.direct(s.model, batch_norm_mode::keep, w, a, false); });
  CHECK(stage(r, "W32 Evaluation").score == w32);
  CHECK(stage(r, "W32 Evaluation").status == "passed");

  // Batch norm folding meets the (unmissable) target: the flow stops there.
  const double bn = s.direct_for(r.ranges, [&](auto w, auto a) { return s.direct(s.model, batch_norm_mode::fold, w, a); });
  CHECK(stage(r, "Batchnorm Folding").score == bn);
  CHECK(stage(r, "Batchnorm Folding").status == "met");
  CHECK(stage(r, "Cross-Layer Equalization").status == "skipped");
  CHECK(stage(r, "AdaRound").status == "skipped");
  CHECK(r.chosen_stage == "Batchnorm Folding");
  CHECK(r.target_met);
  CHECK(r.evaluations == 1 + 5 + 1 + 1);
  REQUIRE(r.sim);
  auto& sim = *r.sim;
  CHECK(s.score()(sim) == bn);
  sim.for_each_quantizer([](const std::string& n, quantizer_kind, const auto& q) {
    CAPTURE(n);
    CHECK((!q.enabled() || q.frozen()));
  });
}

TEST_CASE("auto_quant: short of the target every technique runs, AdaRound starts from the better one, and the best is returned with files that reload") {
  setup s;
  // A target the activations alone meet (W32 passes) and the 4-bit weights do not.
  double w32_loss = 0.0;
  {
    auto o = s.options("probe", 1e9);
    const auto r = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
    w32_loss = r.fp32 - stage(r, "W32 Evaluation").score;
  }
  auto o = s.options("all_stages", 1.5 * w32_loss);
  auto r = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
  INFO(r.summary());
  REQUIRE_FALSE(r.w32_missed);
  const auto& bn = stage(r, "Batchnorm Folding");
  const auto& cle = stage(r, "Cross-Layer Equalization");
  const auto& ada = stage(r, "AdaRound");
  REQUIRE(ada.status != "skipped");
  // CLE's score is the equalized model's ordinary simulation's.
  auto eq = s.model;
  const auto rep = ptq::equalize(eq, s.example);
  CHECK_FALSE(rep.scaled.empty());
  CHECK(rep.relu6_replaced.size() == 1);
  CHECK(cle.score == s.direct_for(r.ranges, [&](auto w, auto a) { return s.direct(eq, batch_norm_mode::fold, w, a); }));
  // AdaRound from the better of the two (AIMET), its techniques continuing that one's.
  const auto& from = cle.score > bn.score ? cle : bn;
  CHECK(ada.note.find(from.name) != std::string::npos);
  REQUIRE(ada.techniques.size() == from.techniques.size() + 1);
  CHECK(ada.techniques.back() == "adaround");
  CHECK(cle.status == (cle.score > bn.score ? "applied" : "discarded"));
  // Nothing met the target: the best stage is returned.
  for (const auto* st : {&bn, &cle, &ada}) CHECK(st->score < r.target);
  const auto* best = &bn;
  for (const auto* st : {&cle, &ada})
    if (st->score > best->score) best = st;
  CHECK(r.chosen_stage == best->name);
  CHECK_FALSE(r.target_met);
  CHECK(r.score == best->score);
  REQUIRE(r.sim);
  auto& sim = *r.sim;
  CHECK(s.score()(sim) == r.score);
  // The stage's files, loaded the way a user would, give the same simulation.
  auto m = s.model;
  fold_batch_norms(m);
  load_weights(m, r.weights);
  ptq::replace_relu6(m, read_json(r.weights.parent_path() / "relu6_replaced.json").get<std::vector<std::string>>());
  quantsim<model_t, P> fresh(m, s.example);
  fresh.load_encodings(r.encodings, true);
  CHECK(s.score()(fresh) == r.score);
  // Every ptq stage left its files.
  for (const auto* st : {&bn, &cle, &ada}) {
    CHECK(std::filesystem::exists(o.results_dir / st->key / "model.npz"));
    CHECK(std::filesystem::exists(o.results_dir / st->key / "model.encodings"));
  }
}

TEST_CASE("auto_quant: W32 below the target stops the flow without a simulation") {
  setup s;
  auto o = s.options("w32", 0.0);  // −MSE: any quantized activation loses something
  const auto r = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
  CHECK(r.w32_missed);
  CHECK_FALSE(r.sim);
  CHECK(stage(r, "W32 Evaluation").status == "stopped");
  for (const char* n : {"Batchnorm Folding", "Cross-Layer Equalization", "AdaRound"}) CHECK(stage(r, n).status == "skipped");
  const auto j = read_json(o.results_dir / "diagnostics.json");
  CHECK(j.at("w32_missed") == true);
  CHECK(j.at("chosen_stage") == "");
}

TEST_CASE("auto_quant: a rerun evaluates nothing again, a run stopped half way resumes, other inputs invalidate the cache") {
  setup s;
  double w32_loss = 0.0;
  {
    auto o = s.options("cache_probe", 1e9);
    w32_loss = [&] {
      const auto r = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
      return r.fp32 - stage(r, "W32 Evaluation").score;
    }();
  }
  auto o = s.options("cache", 1.5 * w32_loss);
  std::vector<std::string> log;
  o.log = [&](const std::string& l) { log.push_back(l); };
  const auto first = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
  CHECK(first.evaluations == 1 + 5 + 1 + 3);

  // Everything from the cache: no evaluation, the same result.
  auto again = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
  CHECK(again.evaluations == 0);
  CHECK(again.chosen_stage == first.chosen_stage);
  CHECK(again.score == first.score);
  for (const auto& st : again.stages)
    if (st.status != "skipped" && !(st.name == "QuantScheme Selection" && st.trials.empty())) CHECK(st.cached);
  auto& sim = *again.sim;
  CHECK(s.score()(sim) == first.score);

  // Stopped half way: the callback fails at the 9th call (cross-layer equalization).
  auto o2 = s.options("resume", o.allowed_drop);
  int n = 0;
  auto base = s.score();
  auto failing = [&](auto& m) {
    if (++n == 9) throw std::runtime_error("machine went down");
    return base(m);
  };
  try {
    (void)ptq::auto_quant<P>(s.model, s.example, s.calib, failing, o2);
    FAIL("no exception");
  } catch (const error& e) {
    CHECK(std::string(e.what()).find("Cross-Layer Equalization") != std::string::npos);
    CHECK(std::string(e.what()).find("machine went down") != std::string::npos);
  }
  const auto resumed = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o2);
  CHECK(resumed.evaluations == 2);  // CLE and AdaRound only
  CHECK(resumed.score == first.score);
  CHECK(stage(resumed, "Batchnorm Folding").cached);
  CHECK_FALSE(stage(resumed, "Cross-Layer Equalization").cached);

  // A stage whose files changed runs again; the others stay cached.
  std::filesystem::remove(o2.results_dir / "batchnorm_folding" / "model.npz");
  CHECK(ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o2).evaluations == 1);

  // Another model under the same cache id: the cache is ignored, and the log says so.
  o.cache_id = "fixed";
  CHECK(ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o).evaluations == 10);
  auto other = s.model;
  other.get<9>().bias()(0) += 0.5f;
  log.clear();
  CHECK(ptq::auto_quant<P>(other, s.example, s.calib, s.score(), o).evaluations == 10);
  bool said = false;
  for (const auto& l : log) said = said || l.find("other inputs") != std::string::npos;
  CHECK(said);
}

TEST_CASE("auto_quant: at 16-bit activations only min-max activation ranges are tried (AIMET's rule)") {
  setup s;
  using P16 = presets::w8a16;
  auto o = s.options("a16", 1e9);
  const auto r = ptq::auto_quant<P16>(s.model, s.example, s.calib, s.score(), o);
  const auto& sel = r.stages[1];
  REQUIRE(sel.trials.size() == 2);
  CHECK(sel.trials[0].label == "W min-max / A min-max");
  CHECK(sel.trials[1].label == "W TF-Enhanced / A min-max");
  o.range_candidates = {{range_method::tf_enhanced, range_method::tf_enhanced}};
  CHECK_THROWS_AS(ptq::auto_quant<P16>(s.model, s.example, s.calib, s.score(), o), config_error);
}

TEST_CASE("auto_quant_mixed_precision: AMP runs on AutoQuant's simulation, keeps its 4-bit encodings where it leaves W4A8, and checks its candidates first") {
  setup s;
  auto o = s.options("amp", 1e9);  // AutoQuant stops at its first stage; AMP may take every step
  analysis::amp_options ao;
  ao.allowed_drop = 1e9;
  ao.verbose = false;
  const std::vector<analysis::amp_candidate> cands{analysis::w_a(4, 8), analysis::w_a(8, 8), analysis::w_a(16, 16)};
  auto out = analysis::auto_quant_mixed_precision<P>(s.model, s.example, s.calib, s.score(), o, cands, ao);
  REQUIRE(out.mixed_precision);
  const auto& r = *out.mixed_precision;
  CHECK(r.chosen_step == r.curve.size() - 1);
  // W16A16 is within 16-bit noise of FP32 (steps near 1e-4 here, so a mean squared error near
  // 1e-9 per quantizer): its activation ranges were gathered with float weights, not W4's.
  CHECK(-r.baseline_score < 1e-5);
  // The cheapest point: every weighted group at W4A8 with AutoQuant's own encodings, so the
  // weights' encodings are exactly the ones AutoQuant wrote for its chosen stage.
  const auto aq = io::read_encodings(out.auto_quant.encodings);
  const auto mixed = io::read_encodings(out.encodings);
  for (std::size_t g = 0; g < r.groups.size(); ++g)
    for (const auto& p : r.groups[g].params) {
      CAPTURE(p);
      CHECK(r.chosen[g] == analysis::w_a(4, 8));
      CHECK(mixed.param_encodings.at(p) == aq.param_encodings.at(p));
    }
  CHECK(std::filesystem::exists(o.results_dir / "mixed_precision" / "pareto_list.json"));
  // The returned simulation scores what AMP says it does, every encoding frozen.
  CHECK(s.score()(*out.auto_quant.sim) == r.score);
  out.auto_quant.sim->for_each_quantizer([](const std::string& n, quantizer_kind, const auto& q) {
    CAPTURE(n);
    if (q.enabled() && q.has_encodings()) CHECK(q.frozen());
  });
  // Bad candidates are refused before AutoQuant evaluates anything.
  const int before = s.calls;
  CHECK_THROWS_WITH_AS(analysis::auto_quant_mixed_precision<P>(s.model, s.example, s.calib, s.score(), s.options("amp_bad", 0.01),
                                                          {analysis::w_a(4, 16), analysis::w_a(16, 8)}, ao),
                       doctest::Contains("no baseline"), config_error);
  CHECK(s.calls == before);
}

TEST_CASE("auto_quant: bad input is refused with a clear error") {
  setup s;
  auto o = s.options("bad", -0.01);
  CHECK_THROWS_WITH_AS(ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o),
                       doctest::Contains("allowed_drop"), config_error);
  o.allowed_drop = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o), config_error);
  o.allowed_drop = 0.01;
  o.range_candidates.clear();
  CHECK_THROWS_AS(ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o), config_error);
  o.range_candidates = ptq::aimet_range_candidates();
  CHECK_THROWS_AS(ptq::auto_quant<P>(s.model, s.example, data::dataset{}, s.score(), o), calibration_error);
  // A NaN score names the stage it came from.
  auto base = s.score();
  int n = 0;
  auto nan_later = [&](auto& m) { return ++n >= 3 ? std::numeric_limits<double>::quiet_NaN() : base(m); };
  CHECK_THROWS_WITH_AS(ptq::auto_quant<P>(s.model, s.example, s.calib, nan_later, o),
                       doctest::Contains("QuantScheme Selection"), error);
  // A results folder that cannot be made.
  o.results_dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "auto_quant_file";
  std::filesystem::create_directories(o.results_dir.parent_path());
  { std::ofstream(o.results_dir) << "a file"; }
  CHECK_THROWS_WITH_AS(ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o),
                       doctest::Contains("results folder"), error);
  std::filesystem::remove(o.results_dir);
}

TEST_CASE("auto_quant: diagnostics.html draws the flow and the scores, offline in headless Chromium") {
  setup s;
  auto o = s.options("report", 1e9);
  const auto r = ptq::auto_quant<P>(s.model, s.example, s.calib, s.score(), o);
  const auto j = read_json(o.results_dir / "diagnostics.json");
  REQUIRE(j.at("stages").size() == r.stages.size());
  std::size_t trials = 0;
  for (std::size_t i = 0; i < r.stages.size(); ++i) {
    CHECK(j["stages"][i]["name"] == r.stages[i].name);
    CHECK(j["stages"][i]["status"] == r.stages[i].status);
    trials += r.stages[i].trials.size();
  }
  CHECK(j.at("chosen_stage") == r.chosen_stage);
  const std::filesystem::path png = std::filesystem::path(QKIT_TEST_OUTPUT) / "screenshots" / "auto_quant_diagnostics.png";
  std::filesystem::create_directories(png.parent_path());
  const auto shown = report_browser::render_in_chromium(r.report, png);
  CHECK(shown.errors == 0);
  CHECK(shown.console.empty());
  CHECK(shown.flow_boxes == int(r.stages.size()));
  CHECK(shown.points == int(2 * trials));  // a bar and a target point per scored simulation
}

}  // namespace unit_auto_quant
