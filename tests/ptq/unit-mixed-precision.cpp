// Automatic mixed precision (analysis/mixed_precision.hpp) on linear(4, 3) → ReLU → linear(3, 2),
// scored by −MSE against the FP32 output. The truths worked here: the quantizer groups of that
// graph, its MACs (12 and 6 per sample) and every point's relative bit-operations from them by
// hand, phase-1 scores against a simulation calibrated afresh and set by hand, binary search
// choosing what brute force chooses, and the chosen bitwidths in the exported encodings.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <limits>

#include <qkit/analysis/mixed_precision.hpp>
#include <qkit/io/encodings_file.hpp>
#include <qkit/nn/nn.hpp>
#include <qkit/sim/calibrate.hpp>

#include "ptq_test_util.hpp"
#include "report_browser.hpp"

namespace unit_mixed_precision {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using analysis::amp_candidate;
using analysis::w_a;

namespace {

using P = presets::w8a8;
using sim_t = quantsim<ptq_test::small_mlp_t, P>;

struct setup {
  ptq_test::small_mlp_t model = ptq_test::small_mlp();
  tensor example = ptq_test::normal_tensor({1, 4}, 1);
  data::dataset calib{ptq_test::normal_tensor({512, 4}, 5)};
  tensor eval_x = ptq_test::normal_tensor({256, 4}, 11);
  tensor reference;
  setup() {
    auto m = model;
    nn::no_hooks h;
    reference = nn::forward(m, eval_x, h);
  }
  sim_t sim() {
    sim_t s(model, example);
    calibrate(s, calib, 512);
    return s;
  }
  auto score() {
    return [this](auto& s) {
      const tensor y = s.forward(eval_x);
      double e = 0.0;
      for (std::size_t i = 0; i < y.size(); ++i) e += std::pow(double(y.data()[i]) - reference.data()[i], 2);
      return -e / double(y.size());
    };
  }
  analysis::amp_options options(const std::string& name, double drop) {
    analysis::amp_options o;
    o.results_dir = std::filesystem::path(QKIT_TEST_OUTPUT) / ("amp_" + name);
    std::filesystem::remove_all(o.results_dir);
    o.allowed_drop = drop;
    o.verbose = false;
    return o;
  }
};

const std::vector<amp_candidate> candidates{w_a(16, 16), w_a(8, 8), w_a(4, 8)};
const std::vector<amp_candidate> all16(3, w_a(16, 16));

// Σ MACs × activation bits × weight bits of a configuration (a candidate per group), by hand:
// group 0 holds the input and layer 0's weight (12 MACs), group 1 the ReLU output and layer 2's
// weight (6 MACs); group 2 (the output) has no weighted layer.
double bitops(const std::vector<amp_candidate>& c) {
  return 12.0 * c[0].activation.bitwidth * c[0].param.bitwidth + 6.0 * c[1].activation.bitwidth * c[1].param.bitwidth;
}

}  // namespace

TEST_CASE("mixed precision: quantizer groups and MACs of linear → ReLU → linear") {
  setup s;
  auto sim = s.sim();
  const auto g = analysis::find_quantizer_groups(sim);
  REQUIRE(g.size() == 3);
  CHECK(g[0].activations == std::vector<std::string>{"input"});
  CHECK(g[0].params == std::vector<std::string>{"0.weight"});
  CHECK(g[1].activations == std::vector<std::string>{"1"});
  CHECK(g[1].params == std::vector<std::string>{"2.weight"});
  CHECK(g[2].activations == std::vector<std::string>{"2"});
  CHECK(g[2].params.empty());
  const auto macs = analysis::layer_macs(sim, s.example);
  CHECK(macs.at("0") == 12.0);
  CHECK(macs.at("2") == 6.0);
}

TEST_CASE("mixed precision: the curve's costs are worked by hand, phase 1 scores what a fresh simulation set by hand scores, binary search chooses what brute force does") {
  setup s;
  auto sim = s.sim();
  auto o = s.options("curve", 1e-3);
  const auto r = analysis::choose_mixed_precision(sim, s.example, candidates, s.score(), nullptr, o);
  CHECK(r.baseline == w_a(16, 16));
  REQUIRE(r.groups.size() == 3);
  CHECK(r.sensitivity.size() == 3 * 2);  // every group at the two lower candidates
  CHECK(r.fp32 == 0.0);
  // Phase 1: the group alone at the candidate, the rest at W16A16, in a simulation calibrated
  // afresh and set through the quantizers' own API.
  for (const auto& e : r.sensitivity) {
    CAPTURE(r.groups[e.group].name());
    CAPTURE(e.candidate.label());
    auto fresh = s.sim();
    auto set = [&](const analysis::quantizer_group& g, const amp_candidate& c) {
      for (const auto& a : g.activations) {
        fresh.activation_quantizer(a).set_bitwidth(c.activation.bitwidth);
        fresh.activation_quantizer(a).compute_encodings();
      }
      for (const auto& p : g.params) {
        fresh.param_quantizer(p).set_bitwidth(c.param.bitwidth);
        fresh.compute_param_encodings(p);
      }
    };
    for (const auto& g : r.groups) set(g, w_a(16, 16));
    set(r.groups[e.group], e.candidate);
    CHECK(e.score == s.score()(fresh));
    std::vector<amp_candidate> cfg(3, w_a(16, 16));
    cfg[e.group] = e.candidate;
    CHECK(e.bitops_reduction == doctest::Approx(1.0 - bitops(cfg) / bitops(all16)));
  }
  for (std::size_t i = 1; i < r.sensitivity.size(); ++i) CHECK(r.sensitivity[i - 1].score >= r.sensitivity[i].score);
  // Phase 2: every point's cost from the configuration of its steps, by hand.
  std::vector<amp_candidate> cfg(3, w_a(16, 16));
  CHECK(r.curve[0].relative_bitops == 1.0);
  std::size_t output_steps = 0;
  for (std::size_t i = 1; i < r.curve.size(); ++i) {
    cfg[r.curve[i].group] = r.curve[i].candidate;
    CHECK(r.curve[i].relative_bitops == doctest::Approx(bitops(cfg) / bitops(all16)));
    if (r.curve[i].group == 2) {  // the output: 8 bits cost no bit-operation less
      ++output_steps;
      CHECK(r.curve[i].candidate.activation.bitwidth == 8);
      CHECK(r.curve[i].relative_bitops == r.curve[i - 1].relative_bitops);
    } else {
      CHECK(r.curve[i].relative_bitops < r.curve[i - 1].relative_bitops);
    }
  }
  // A point per lowering of the two weighted groups (W16A16 → W8A8 → W4A8) and one for the
  // output going to 8 bits; its second entry (W4A8: the same 8-bit activations) is passed over.
  CHECK(output_steps == 1);
  CHECK(r.curve.size() == 1 + 4 + 1);
  // The chosen point is the cheapest that meets the target; the sim carries it.
  for (std::size_t i = r.chosen_step + 1; i < r.curve.size(); ++i) CHECK(r.curve[i].score < r.target);
  CHECK((r.curve[r.chosen_step].score >= r.target || r.chosen_step == 0));
  CHECK(s.score()(sim) == r.score);
  // Pareto: no point is cheaper and at least as good as one marked on the front.
  for (const auto& p : r.curve)
    if (p.pareto)
      for (const auto& q : r.curve) CHECK_FALSE((q.relative_bitops < p.relative_bitops && q.score >= p.score));

  auto sim2 = s.sim();
  auto o2 = s.options("curve_brute", 1e-3);
  o2.search = analysis::amp_search::brute_force;
  const auto b = analysis::choose_mixed_precision(sim2, s.example, candidates, s.score(), nullptr, o2);
  CHECK(b.chosen_step == r.chosen_step);
  CHECK(r.search_evaluations <= b.search_evaluations);
  CHECK(b.search_evaluations == b.curve.size() - 1);
  for (std::size_t i = 0; i < b.curve.size(); ++i) CHECK(b.curve[i].score == r.curve[i].score);
}

TEST_CASE("mixed precision: an unreachable target keeps the baseline, a free one takes every step; the curve is written either way") {
  setup s;
  auto sim = s.sim();
  const auto none = analysis::choose_mixed_precision(sim, s.example, candidates, s.score(), nullptr, s.options("none", 0.0));
  CHECK(none.chosen_step == 0);  // W16A16 loses something against FP32 on −MSE
  CHECK_FALSE(none.target_met);
  CHECK(none.curve.size() == 6);
  for (const auto& p : none.curve) CHECK(p.score <= 0.0);
  auto sim2 = s.sim();
  auto o = s.options("all", 1e9);
  const auto all = analysis::choose_mixed_precision(sim2, s.example, candidates, s.score(), &s.calib, o);
  CHECK(all.chosen_step == all.curve.size() - 1);
  CHECK(all.relative_bitops == doctest::Approx(bitops({w_a(4, 8), w_a(4, 8), w_a(4, 8)}) / bitops(all16)));
  // The chosen bitwidths go out with the encodings.
  sim2.export_encodings(o.results_dir / "model.encodings");
  const auto f = io::read_encodings(o.results_dir / "model.encodings");
  CHECK(f.param_encodings.at("0.weight")[0].bitwidth == 4);
  CHECK(f.param_encodings.at("2.weight")[0].bitwidth == 4);
  CHECK(f.activation_encodings.at("input")[0].bitwidth == 8);
  const auto j = report_browser::read_json(o.results_dir / "pareto_list.json");
  CHECK(j.size() == all.curve.size());
  // The pages render offline.
  const auto dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "screenshots";
  std::filesystem::create_directories(dir);
  for (const auto& page : {all.pareto_html, all.sensitivity_html}) {
    CAPTURE(page.string());
    const auto shown = report_browser::render_in_chromium(page, dir / ("amp_" + page.stem().string() + ".png"));
    CHECK(shown.errors == 0);
    CHECK(shown.points > 0);
  }
}

TEST_CASE("mixed precision: a quantizer left at its own precision keeps the encodings it was given, frozen; at another it recomputes from its statistics") {
  setup s;
  auto sim = s.sim();
  // Hand-set 8-bit weight encodings (twice the min-max step), frozen as AdaRound leaves them.
  auto given = sim.param_quantizer("0.weight").encodings();
  for (auto& e : given) e.scale *= 2.0;
  sim.set_and_freeze_encodings("0.weight", given);
  const auto input_given = sim.activation_quantizer("input").encodings();
  // Everything may be lowered: W8A8 wins everywhere over W16A16 here (only two candidates).
  auto o = s.options("kept", 1e9);
  const auto r = analysis::choose_mixed_precision(sim, s.example, {w_a(16, 16), w_a(8, 8)}, s.score(), nullptr, o);
  REQUIRE(r.chosen_step == r.curve.size() - 1);
  CHECK(sim.param_quantizer("0.weight").encodings() == given);
  CHECK(sim.param_quantizer("0.weight").frozen());
  CHECK(sim.activation_quantizer("input").encodings() == input_given);
  // Where the choice is the baseline, the weights are at 16 bits: min-max of the weights, as a
  // fresh simulation computes them, not the given 8-bit encodings.
  auto fresh = s.sim();
  fresh.param_quantizer("0.weight").set_bitwidth(16);
  fresh.compute_param_encodings("0.weight");
  auto at16 = s.sim();
  at16.set_and_freeze_encodings("0.weight", given);
  auto o16 = s.options("kept16", 0.0);  // nothing meets −MSE 0: the baseline is chosen
  const auto b = analysis::choose_mixed_precision(at16, s.example, {w_a(16, 16), w_a(8, 8)}, s.score(), nullptr, o16);
  REQUIRE(b.chosen_step == 0);
  CHECK(at16.param_quantizer("0.weight").encodings() == fresh.param_quantizer("0.weight").encodings());
  CHECK(at16.param_quantizer("0.weight").bitwidth() == 16);
}

TEST_CASE("mixed precision: a rerun evaluates nothing, a run stopped half way resumes with only the missing scores, other inputs invalidate the cache") {
  setup s;
  auto o = s.options("cache", 1e-3);
  int calls = 0;
  auto counted = [&](auto& x) {
    ++calls;
    return s.score()(x);
  };
  auto sim = s.sim();
  const auto first = analysis::choose_mixed_precision(sim, s.example, candidates, counted, nullptr, o);
  // FP32, the baseline, 3 groups × 2 candidates, the 5 other points of the curve but the first:
  // step 1 lowers one group alone, a configuration phase 1 already scored.
  CHECK(calls == 1 + 1 + 6 + 4);
  CHECK(first.evaluations == std::size_t(calls));
  CHECK(first.cached_scores == 1);
  calls = 0;
  auto sim2 = s.sim();
  const auto again = analysis::choose_mixed_precision(sim2, s.example, candidates, counted, nullptr, o);
  CHECK(calls == 0);
  CHECK(again.evaluations == 0);
  CHECK(again.chosen_step == first.chosen_step);
  CHECK(again.score == first.score);
  for (std::size_t i = 0; i < first.curve.size(); ++i) CHECK(again.curve[i].score == first.curve[i].score);

  // Stopped by the callback at the third phase-2 point; the rerun makes exactly the missing calls.
  auto o2 = s.options("cache_stop", 1e-3);
  o2.search = analysis::amp_search::brute_force;
  int n = 0;
  auto dies = [&](auto& x) -> double {
    if (++n == 1 + 1 + 6 + 2) throw std::runtime_error("the machine went down");
    return s.score()(x);
  };
  auto sim3 = s.sim();
  CHECK_THROWS_WITH_AS(analysis::choose_mixed_precision(sim3, s.example, candidates, dies, nullptr, o2),
                       doctest::Contains("phase 2, step 3"), error);
  calls = 0;
  const auto resumed = analysis::choose_mixed_precision(sim3, s.example, candidates, counted, nullptr, o2);
  CHECK(calls == 3);  // steps 3 to 5
  CHECK(resumed.cached_scores == 1 + 1 + 6 + 2);  // FP32, baseline, phase 1, steps 1 and 2
  CHECK(resumed.chosen_step == first.chosen_step);

  // Other weights under the same folder: the cache is not used.
  auto other = s.model;
  other.get<0>().weight()(0, 0) += 0.5f;
  quantsim<ptq_test::small_mlp_t, P> sim4(other, s.example);
  calibrate(sim4, s.calib, 512);
  std::vector<std::string> log;
  o.log = [&](const std::string& l) { log.push_back(l); };
  calls = 0;
  (void)analysis::choose_mixed_precision(sim4, s.example, candidates, counted, nullptr, o);
  CHECK(calls == 12);
  o.cache_id = "mine";
  (void)analysis::choose_mixed_precision(sim4, s.example, candidates, counted, nullptr, o);
  auto sim5 = s.sim();
  (void)analysis::choose_mixed_precision(sim5, s.example, candidates, counted, nullptr, o);
  bool said = false;
  for (const auto& l : log) said = said || l.find("other inputs") != std::string::npos;
  CHECK(said);

  // A cache file that is not JSON, or not of the shape written (here with the right
  // fingerprint), is ignored and logged, never trusted: everything is evaluated again.
  const auto file = o.results_dir / ".amp_cache" / "mine" / "scores.json";
  auto wrong_shape = report_browser::read_json(file);
  wrong_shape["entries"] = nlohmann::json::array();
  for (const std::string bad : {std::string("{"), std::string("[]"), wrong_shape.dump()}) {
    CAPTURE(bad);
    io::write_file_atomically(file, bad);
    log.clear();
    calls = 0;
    auto sim6 = s.sim();
    (void)analysis::choose_mixed_precision(sim6, s.example, candidates, counted, nullptr, o);
    CHECK(calls == 12);
    bool unreadable = false;
    for (const auto& l : log) unreadable = unreadable || l.find("unreadable") != std::string::npos;
    CHECK(unreadable);
  }
}

TEST_CASE("mixed precision: float16 candidates — FP16 is the baseline above W16A16, counted as √1.5 × 16 bits a side, and exports as float16") {
  setup s;
  auto sim = s.sim();
  const amp_candidate fp16{{16, dtype::floating}, {16, dtype::floating}};
  const amp_candidate w8a_fp16{{16, dtype::floating}, {8, dtype::integer}};
  auto o = s.options("fp16", 1e9);  // every step taken
  const auto r = analysis::choose_mixed_precision(sim, s.example, {w_a(16, 16), fp16, w8a_fp16, w_a(8, 8)}, s.score(), nullptr, o);
  CHECK(r.baseline == fp16);
  CHECK(r.baseline.label() == "FP16");
  CHECK(w8a_fp16.label() == "W8AFP16");
  // By hand: a float side counts √1.5 × 16, so FP16 costs 1.5 × 256 = 384 per MAC, W16A16 256,
  // W8 with float16 activations 8 × √1.5 × 16, W8A8 64.
  const double f = std::sqrt(1.5) * 16.0;
  for (const auto& e : r.sensitivity) {
    CAPTURE(e.candidate.label());
    if (r.groups[e.group].params.empty()) continue;
    const double macs = e.group == 0 ? 12.0 : 6.0;
    const double per_mac = e.candidate == w_a(16, 16) ? 256.0 : e.candidate == w8a_fp16 ? 8.0 * f : 64.0;
    CHECK(e.bitops_reduction == doctest::Approx((macs * (384.0 - per_mac)) / (18.0 * 384.0)));
  }
  // The cheapest point: W8A8 everywhere, 64 / 384 of the baseline.
  CHECK(r.chosen_step == r.curve.size() - 1);
  CHECK(r.relative_bitops == doctest::Approx(64.0 / 384.0));
  // The baseline point had float16 quantizers: its encodings say so.
  auto base = s.sim();
  auto ob = s.options("fp16_base", 0.0);  // −MSE 0 is out of reach: the baseline is kept
  const auto b = analysis::choose_mixed_precision(base, s.example, {fp16, w_a(8, 8)}, s.score(), nullptr, ob);
  REQUIRE(b.chosen_step == 0);
  const auto e = base.encodings();
  CHECK(e.param_encodings.at("0.weight").at(0).dtype == dtype::floating);
  CHECK(e.activation_encodings.at("input").at(0).dtype == dtype::floating);
  CHECK(e.activation_encodings.at("input").at(0).bitwidth == 16);
}

TEST_CASE("mixed precision: bad input is refused before anything changes") {
  setup s;
  auto sim = s.sim();
  auto o = s.options("bad", 0.01);
  auto run = [&](std::vector<amp_candidate> c) {
    return analysis::choose_mixed_precision(sim, s.example, std::move(c), s.score(), nullptr, o);
  };
  CHECK_THROWS_WITH_AS(run({w_a(4, 16), w_a(16, 8)}), doctest::Contains("no baseline"), config_error);
  CHECK_THROWS_WITH_AS(run({w_a(16, 16), w_a(3, 8)}), doctest::Contains("3 bits"), config_error);
  CHECK_THROWS_AS(run({w_a(16, 16), {{8, dtype::floating}, {8, dtype::integer}}}), config_error);
  CHECK_THROWS_AS(run({w_a(16, 16)}), config_error);
  o.allowed_drop = -1.0;
  CHECK_THROWS_WITH_AS(run(candidates), doctest::Contains("allowed_drop"), config_error);
  o.allowed_drop = 0.01;
  int n = 0;
  auto base = s.score();
  auto nan_later = [&](auto& x) { return ++n >= 3 ? std::numeric_limits<double>::quiet_NaN() : base(x); };
  const auto before = sim.encodings();
  CHECK_THROWS_WITH_AS(analysis::choose_mixed_precision(sim, s.example, candidates, nan_later, nullptr, o),
                       doctest::Contains("phase 1"), error);
  CHECK(sim.encodings().activation_encodings == before.activation_encodings);  // put back
  // Encodings loaded from a file carry no statistics to recompute other bitwidths from.
  sim.export_encodings(o.results_dir / "x.encodings");
  sim_t loaded(s.model, s.example);
  loaded.load_encodings(o.results_dir / "x.encodings");
  CHECK_THROWS_WITH_AS(analysis::choose_mixed_precision(loaded, s.example, candidates, s.score(), nullptr, o),
                       doctest::Contains("calibrate the simulation first"), calibration_error);
}

}  // namespace unit_mixed_precision
