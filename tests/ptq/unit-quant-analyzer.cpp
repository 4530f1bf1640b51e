// QuantAnalyzer on a three-layer model (linear → ReLU → linear) whose every score the test works
// out itself: the quantized forward written here from the encodings' scale and offset with the
// quantize formula of DESIGN.md (not qkit's kernels), the score a negative MSE against the FP32
// output, so each per-layer enablement, the sensitivity and the per-layer MSE have a closed form.
// (In the ptq suite, not a suite of its own, to keep test executables few until analysis/
// grows its own.)
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <cstdlib>
#include <iterator>
#include <random>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include <qkit/analysis/quant_analyzer.hpp>
#include <qkit/nn/nn.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "ptq_test_util.hpp"
#include "report_browser.hpp"

namespace unit_quant_analyzer {  // the suite is one translation unit: tests/CMakeLists.txt

using report_browser::read_json;

using namespace qkit;
using namespace qkit::nn;

namespace {

tensor normal(std::size_t n, std::size_t d, std::uint32_t seed) { return ptq_test::normal_tensor({n, d}, seed); }

auto make_model() { return ptq_test::small_mlp(); }
using model_t = ptq_test::small_mlp_t;

// q = clamp(round(x / scale) - offset, 0, 2^bw - 1), x̂ = scale * (q + offset) (DESIGN.md).
double qdq(double x, const encoding& e) {
  const double q = std::clamp(std::nearbyint(x / e.scale) - double(e.offset), 0.0,
                              std::ldexp(1.0, e.bitwidth) - 1.0);
  return e.scale * (q + double(e.offset));
}

// Which quantizers the hand-written forward applies.
struct on_set {
  bool input = false, w0 = false, relu_out = false, w2 = false, out = false;
};

// The model's output for x with the chosen quantizers, from the sim's encodings.
template <class Sim>
std::vector<double> forward_by_hand(Sim& sim, const model_t& m, const tensor& x, on_set s) {
  const auto& L0 = m.get<0>();
  const auto& L2 = m.get<2>();
  auto enc = [&](const std::string& q) { return sim.with_quantizer(q, [](auto& z) { return z.encodings()[0]; }); };
  std::vector<double> y;
  for (std::size_t n = 0; n < x.shape(0); ++n) {
    std::vector<double> h(3);
    for (std::size_t o = 0; o < 3; ++o) {
      double a = L0.bias()(o);
      for (std::size_t i = 0; i < 4; ++i) {
        const double xi = s.input ? qdq(x(n, i), enc("input")) : x(n, i);
        const double w = s.w0 ? qdq(L0.weight()(o, i), enc("0.weight")) : L0.weight()(o, i);
        a += w * xi;
      }
      a = std::max(a, 0.0);
      h[o] = s.relu_out ? qdq(a, enc("1")) : a;
    }
    for (std::size_t o = 0; o < 2; ++o) {
      double a = L2.bias()(o);
      for (std::size_t i = 0; i < 3; ++i)
        a += (s.w2 ? qdq(L2.weight()(o, i), enc("2.weight")) : L2.weight()(o, i)) * h[i];
      y.push_back(s.out ? qdq(a, enc("2")) : a);
    }
  }
  return y;
}

double neg_mse(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
  return -s / double(a.size());
}

struct fixture {
  model_t model = make_model();
  tensor eval_x = normal(64, 4, 11);
  quantsim<model_t, presets::w4a8> sim{model, normal(1, 4, 1)};
  std::vector<double> reference;
  std::filesystem::path dir;
  // A results folder per test case: ctest runs the cases in parallel.
  explicit fixture(const std::string& name)
      : dir(std::filesystem::path(QKIT_TEST_OUTPUT) / ("quant_analyzer_" + name)) {
    calibrate(sim, data::dataset(normal(256, 4, 5)), 256);
    reference = forward_by_hand(sim, model, eval_x, {});
    std::filesystem::remove_all(dir);
  }
  // The score: −MSE of the sim's output against the FP32 output on eval_x.
  std::function<double(decltype(sim)&)> score() {
    return [this](auto& s) {
      const tensor y = s.forward(eval_x);
      std::vector<double> v(y.begin(), y.end());
      return neg_mse(v, reference);
    };
  }
  double by_hand(on_set s) { return neg_mse(forward_by_hand(sim, model, eval_x, s), reference); }
  std::set<std::string> enabled() {
    std::set<std::string> on;
    sim.for_each_quantizer([&](const std::string& n, quantizer_kind, const auto& q) {
      if (q.enabled()) on.insert(n);
    });
    return on;
  }
};

}  // namespace

TEST_CASE("quant_analyzer: the quantized layers and their quantizers, as AIMET toggles a layer") {
  fixture f("layers");
  const auto layers = analysis::quantized_layers(f.sim);
  // The linear before the ReLU has no output quantizer (the pair is one supergroup); the biases
  // are not quantized (AIMET's default config).
  REQUIRE(layers.size() == 3);
  CHECK(layers[0].layer == "0");
  CHECK(layers[0].quantizers == std::vector<std::string>{"input", "0.weight"});
  CHECK(layers[1].layer == "1");
  CHECK(layers[1].quantizers == std::vector<std::string>{"1"});
  CHECK(layers[2].layer == "2");
  CHECK(layers[2].quantizers == std::vector<std::string>{"2.weight", "2"});
}

TEST_CASE("quant_analyzer: sensitivity and per-layer enablement equal the scores worked by hand") {
  fixture f("scores");
  const auto before = f.enabled();
  analysis::quant_analyzer_options opt;
  opt.results_dir = f.dir;
  analysis::quant_analyzer<decltype(f.sim)> qa(f.sim, f.score(), opt);

  const auto s = qa.check_model_sensitivity_to_quantization();
  const auto near = [](double got, double want) {
    return std::fabs(got - want) <= 1e-5 * std::max(1e-3, std::fabs(want));
  };
  CHECK(std::fabs(s.fp32) < 1e-10);
  CHECK(near(s.weights_quantized, f.by_hand({.w0 = true, .w2 = true})));
  CHECK(near(s.activations_quantized, f.by_hand({.input = true, .relu_out = true, .out = true})));
  CHECK(near(s.quantized, f.by_hand({true, true, true, true, true})));
  CHECK(f.enabled() == before);

  const auto en = qa.per_layer_quant_enabled();
  REQUIRE(en.size() == 3);
  CHECK(near(en[0].second, f.by_hand({.input = true, .w0 = true})));
  CHECK(near(en[1].second, f.by_hand({.relu_out = true})));
  CHECK(near(en[2].second, f.by_hand({.w2 = true, .out = true})));
  CHECK(f.enabled() == before);

  const auto dis = qa.per_layer_quant_disabled();
  REQUIRE(dis.size() == 3);
  CHECK(near(dis[0].second, f.by_hand({.relu_out = true, .w2 = true, .out = true})));
  CHECK(near(dis[1].second, f.by_hand({.input = true, .w0 = true, .w2 = true, .out = true})));
  CHECK(near(dis[2].second, f.by_hand({.input = true, .w0 = true, .relu_out = true})));
  CHECK(f.enabled() == before);

  // The files hold the same numbers, keyed by layer in dataflow order.
  const auto j = read_json(f.dir / "per_layer_quant_enabled.json");
  REQUIRE(j.size() == 3);
  CHECK(j.at("2").get<double>() == en[2].second);
  CHECK(read_json(f.dir / "per_layer_quant_disabled.json").at("0").get<double>() == dis[0].second);
  CHECK(read_json(f.dir / "model_sensitivity.json").at("quantized").get<double>() == s.quantized);

  // Cost: 4 evaluations for the sensitivity, one per layer for each per-layer analysis.
  REQUIRE(qa.costs().size() == 3);
  CHECK(qa.costs()[0].evaluations == 4);
  CHECK(qa.costs()[1].evaluations == 3);
  CHECK(qa.costs()[2].evaluations == 3);
}

namespace {

// The fixture's score as an nn::metric: −MSE of the outputs against the FP32 output rows of the
// same samples.
struct neg_mse_metric {
  const std::vector<double>* reference;
  double sum = 0.0;
  std::size_t n = 0;
  void update(const tensor& y, const data::batch& b) {
    const std::size_t row = y.size() / b.size();
    for (std::size_t k = 0; k < y.size(); ++k) {
      const double d = double(y.data()[k]) - (*reference)[b.first * row + k];
      sum += d * d;
    }
    n += y.size();
  }
  double result() const { return -sum / double(n); }
};

}  // namespace

TEST_CASE("quant_analyzer: per-layer enablement on a data set, rerunning only what changes, equals the hand-worked scores") {
  fixture f("data_mode");
  analysis::quant_analyzer_options opt;
  opt.results_dir = f.dir;
  analysis::quant_analyzer<decltype(f.sim)> qa(f.sim, f.score(), opt);
  const auto before = f.enabled();
  const data::dataset eval(f.eval_x);
  const auto near = [](double got, double want) {
    return std::fabs(got - want) <= 1e-5 * std::max(1e-3, std::fabs(want));
  };
  // Batches of 16: the 64 samples in four, each layer's metric fed batch by batch.
  const auto en = qa.per_layer_quant_enabled(eval, neg_mse_metric{&f.reference}, 16);
  CHECK(f.enabled() == before);
  REQUIRE(en.size() == 3);
  CHECK(near(en[0].second, f.by_hand({.input = true, .w0 = true})));
  CHECK(near(en[1].second, f.by_hand({.relu_out = true})));
  CHECK(near(en[2].second, f.by_hand({.w2 = true, .out = true})));
  const auto dis = qa.per_layer_quant_disabled(eval, neg_mse_metric{&f.reference}, 16);
  CHECK(f.enabled() == before);
  CHECK(near(dis[0].second, f.by_hand({.relu_out = true, .w2 = true, .out = true})));
  CHECK(near(dis[1].second, f.by_hand({.input = true, .w0 = true, .w2 = true, .out = true})));
  CHECK(near(dis[2].second, f.by_hand({.input = true, .w0 = true, .relu_out = true})));
  // Node by node, the same arithmetic as the whole forward pass: equal to the callback's scores.
  const auto en_cb = qa.per_layer_quant_enabled();
  const auto dis_cb = qa.per_layer_quant_disabled();
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(en[i].second == en_cb[i].second);
    CHECK(dis[i].second == dis_cb[i].second);
  }
  // Cost, worked by hand: per sample the nodes do 12 (linear 4→3), 3 (ReLU) and 6 (linear 3→2)
  // multiply-accumulates, 21 in all. One shared pass, then layer 0 reruns all three nodes,
  // layer 1 the last two, layer 2 the last: 1 + (21 + 9 + 6) / 21 evaluations, against 3.
  REQUIRE(qa.costs().size() == 4);
  CHECK(qa.costs()[0].evaluation_equivalents == doctest::Approx(1.0 + 36.0 / 21.0));
  CHECK(qa.costs()[1].evaluation_equivalents == doctest::Approx(1.0 + 36.0 / 21.0));
  CHECK(qa.costs()[0].evaluations == 0);
  CHECK(qa.costs()[0].forward_passes == 4);
  CHECK(qa.costs()[2].evaluation_equivalents == 3.0);
  CHECK(read_json(f.dir / "per_layer_quant_enabled.json").at("1").get<double>() == en_cb[1].second);
  CHECK_THROWS_WITH_AS(qa.per_layer_quant_enabled(data::dataset(tensor::from_shape({0, 4})), neg_mse_metric{&f.reference}),
                       doctest::Contains("the evaluation data set is empty"), data_error);
}

TEST_CASE("quant_analyzer: per-layer MSE against the FP32 layer outputs worked by hand") {
  fixture f("mse");
  analysis::quant_analyzer_options opt;
  opt.results_dir = f.dir;
  opt.mse_samples = 40;  // batches of 16, 16, 8: the sums must weight every sample alike
  opt.mse_batch_size = 16;
  analysis::quant_analyzer<decltype(f.sim)> qa(f.sim, f.score(), opt);
  const tensor x = normal(50, 4, 21);
  const auto before = f.enabled();
  const auto mse = qa.per_layer_mse_loss(data::dataset(x));
  CHECK(f.enabled() == before);
  REQUIRE(mse.size() == 3);

  // The whole model's output: the first 40 samples, all quantized vs none.
  tensor x40 = tensor::from_shape({40, 4});
  std::copy(x.begin(), x.begin() + 160, x40.begin());
  const auto fp = forward_by_hand(f.sim, f.model, x40, {});
  const auto q = forward_by_hand(f.sim, f.model, x40, {true, true, true, true, true});
  CHECK(mse[2].first == "2");
  CHECK(std::fabs(mse[2].second + neg_mse(q, fp)) <= 1e-5 * std::fabs(neg_mse(q, fp)));
  CHECK(mse[2].second > 0.0);

  // The ReLU's output: quantized input, weight and output vs float.
  double want = 0.0;
  const auto& L0 = f.model.get<0>();
  auto enc = [&](const std::string& n) { return f.sim.with_quantizer(n, [](auto& z) { return z.encodings()[0]; }); };
  for (std::size_t n = 0; n < 40; ++n)
    for (std::size_t o = 0; o < 3; ++o) {
      double a = L0.bias()(o), b = L0.bias()(o);
      for (std::size_t i = 0; i < 4; ++i) {
        a += double(L0.weight()(o, i)) * x(n, i);
        b += qdq(L0.weight()(o, i), enc("0.weight")) * qdq(x(n, i), enc("input"));
      }
      const double d = qdq(std::max(b, 0.0), enc("1")) - std::max(a, 0.0);
      want += d * d / 120.0;
    }
  CHECK(mse[1].first == "1");
  CHECK(std::fabs(mse[1].second - want) <= 1e-5 * want);
  CHECK(read_json(f.dir / "per_layer_mse_loss.json").at("1").get<double>() == mse[1].second);
  REQUIRE(qa.costs().size() == 1);
  CHECK(qa.costs()[0].forward_passes == 2);
  CHECK(qa.costs()[0].evaluations == 0);
}

TEST_CASE("quant_analyzer: min-max ranges in AIMET's names, per channel nested (file read back)") {
  auto model = make_model();
  sim_config cfg = presets::w4a8_per_channel::default_config();
  cfg.op_type["Gemm"].per_channel_quantization = true;  // AIMET's per-channel config: Gemm per tensor
  quantsim<model_t, presets::w4a8_per_channel> sim(model, normal(1, 4, 1), cfg);
  calibrate(sim, data::dataset(normal(128, 4, 5)), 128);
  analysis::quant_analyzer_options opt;
  opt.results_dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "quant_analyzer_pc";
  analysis::quant_analyzer<decltype(sim)> qa(sim, [](auto&) { return 1.0; }, opt);
  qa.export_per_layer_encoding_min_max_range();
  const auto w = read_json(opt.results_dir / "min_max_ranges/weights.json");
  const auto a = read_json(opt.results_dir / "min_max_ranges/activations.json");
  CHECK(w.size() == 2);
  REQUIRE(w.contains("0_weight"));
  const auto& e0 = sim.param_quantizer("0.weight").encodings();
  REQUIRE(e0.size() == 3);  // one per output channel
  for (std::size_t c = 0; c < 3; ++c) {
    CHECK(w["0_weight"][std::to_string(c)][0].get<double>() == e0[c].min);
    CHECK(w["0_weight"][std::to_string(c)][1].get<double>() == e0[c].max);
    // AIMET's symmetric weight grid: min = -(max + one step).
    CHECK(e0[c].min == doctest::Approx(-(e0[c].max + e0[c].scale)));
  }
  CHECK(a.size() == 3);
  CHECK(a.contains("0_input_0"));
  CHECK(a.contains("1_output_0"));
  CHECK(a["2_output_0"][1].get<double>() == sim.activation_quantizer("2").encodings()[0].max);
}

namespace {

// Counts of `values` in the histogram's bins, by hand: bin k holds [left + k·w, left + (k+1)·w).
std::vector<std::uint64_t> count_by_hand(const std::vector<double>& values, double left, double w,
                                         std::size_t bins) {
  std::vector<std::uint64_t> c(bins, 0);
  for (const double v : values) {
    const auto k = static_cast<std::ptrdiff_t>(std::floor((v - left) / w));
    REQUIRE(k >= 0);
    REQUIRE(static_cast<std::size_t>(k) < bins);
    ++c[static_cast<std::size_t>(k)];
  }
  return c;
}

void check_histogram(const nlohmann::json& ch, const std::vector<double>& values, const encoding& e) {
  const auto counts = ch.at("counts").get<std::vector<std::uint64_t>>();
  CHECK(counts == count_by_hand(values, ch.at("bin_left").get<double>(), ch.at("bin_width").get<double>(),
                                counts.size()));
  CHECK(counts.size() <= 128);
  CHECK(ch.at("data_min").get<double>() == *std::min_element(values.begin(), values.end()));
  CHECK(ch.at("data_max").get<double>() == *std::max_element(values.begin(), values.end()));
  CHECK(ch.at("encoding").at("min").get<double>() == e.min);
  CHECK(ch.at("encoding").at("max").get<double>() == e.max);
}

}  // namespace

TEST_CASE("quant_analyzer: statistics histograms count the FP32 inputs of each quantizer (counted by hand)") {
  auto model = make_model();
  sim_config cfg = presets::w4a8_per_channel::default_config();
  cfg.op_type["Gemm"].per_channel_quantization = true;
  quantsim<model_t, presets::w4a8_per_channel> sim(model, normal(1, 4, 1), cfg);
  calibrate(sim, data::dataset(normal(128, 4, 5)), 128);
  analysis::quant_analyzer_options opt;
  opt.results_dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "quant_analyzer_hist";
  std::filesystem::remove_all(opt.results_dir);
  opt.mse_samples = 40;
  opt.mse_batch_size = 16;
  analysis::quant_analyzer<decltype(sim)> qa(sim, [](auto&) { return 1.0; }, opt);
  const tensor x = normal(50, 4, 21);
  qa.export_per_layer_stats_histogram(data::dataset(x));
  REQUIRE(qa.costs().size() == 1);
  CHECK(qa.costs()[0].forward_passes == 1);
  CHECK(qa.costs()[0].evaluations == 0);

  // The model input over the first 40 samples: every count checked against bins worked here.
  // The ReLU's output (the FP32 pass calibration sees) is computed here in double while the pass
  // runs in float, so only its extremes (to float precision) and total are checked.
  std::vector<double> in(x.begin(), x.begin() + 160);
  const auto j_in = read_json(opt.results_dir / "activations_pdf/0_input_q0.json");
  CHECK(j_in.at("quantizer") == "input");
  REQUIRE(j_in.at("channels").size() == 1);
  check_histogram(j_in["channels"][0], in, sim.activation_quantizer("input").encodings()[0]);

  std::vector<double> relu;
  const auto& L0 = model.get<0>();
  for (std::size_t n = 0; n < 40; ++n)
    for (std::size_t o = 0; o < 3; ++o) {
      double ad = L0.bias()(o);
      for (std::size_t i = 0; i < 4; ++i) ad += double(L0.weight()(o, i)) * x(n, i);
      relu.push_back(std::max(ad, 0.0));
    }
  const auto j_relu = read_json(opt.results_dir / "activations_pdf/1_output_q0.json");
  const auto& ch = j_relu["channels"][0];
  CHECK(ch.at("data_min").get<double>() == 0.0);
  CHECK(ch.at("data_max").get<double>() == doctest::Approx(*std::max_element(relu.begin(), relu.end())).epsilon(1e-6));
  std::uint64_t total = 0;
  for (const auto c : ch.at("counts").get<std::vector<std::uint64_t>>()) total += c;
  CHECK(total == 120);
  CHECK(ch.at("encoding").at("max").get<double>() == sim.activation_quantizer("1").encodings()[0].max);

  // Per-channel weights: one histogram per output channel, each with its own encoding.
  const auto j_w = read_json(opt.results_dir / "weights_pdf/0/0_weight.json");
  REQUIRE(j_w.at("channels").size() == 3);
  for (std::size_t c = 0; c < 3; ++c) {
    CAPTURE(c);
    std::vector<double> w;
    for (std::size_t i = 0; i < 4; ++i) w.push_back(L0.weight()(c, i));
    CHECK(j_w["channels"][c].at("channel") == c);
    check_histogram(j_w["channels"][c], w, sim.param_quantizer("0.weight").encodings()[c]);
  }
  CHECK(std::filesystem::exists(opt.results_dir / "weights_pdf/2/2_weight.html"));
  CHECK(std::filesystem::exists(opt.results_dir / "activations_pdf/2_output_q0.html"));
}

TEST_CASE("quant_analyzer: every report page renders offline in headless Chromium with its data") {
  fixture f("reports");
  analysis::quant_analyzer_options opt;
  opt.results_dir = f.dir;
  analysis::quant_analyzer<decltype(f.sim)> qa(f.sim, f.score(), opt);
  (void)qa.check_model_sensitivity_to_quantization();
  (void)qa.per_layer_quant_enabled();
  (void)qa.per_layer_quant_disabled();
  qa.export_per_layer_encoding_min_max_range();
  (void)qa.per_layer_mse_loss(data::dataset(normal(64, 4, 9)));
  qa.export_per_layer_stats_histogram(data::dataset(normal(64, 4, 9)));

  // Chart elements each page must draw: one bar per category of its JSON file; a histogram's
  // bins of its first channel and two points for each of the encoding's min and max lines.
  std::vector<std::pair<std::string, int>> pages{
      {"model_sensitivity.html", 4},           {"per_layer_quant_enabled.html", 3},
      {"per_layer_quant_disabled.html", 3},    {"per_layer_mse_loss.html", 3},
      {"min_max_ranges/weights.html", 2},      {"min_max_ranges/activations.html", 3},
      {"index.html", 0}};
  for (const char* h : {"activations_pdf/0_input_q0", "activations_pdf/1_output_q0",
                        "activations_pdf/2_output_q0", "weights_pdf/0/0_weight", "weights_pdf/2/2_weight"})
    pages.emplace_back(std::string(h) + ".html",
                       int(read_json(f.dir / (std::string(h) + ".json"))["channels"][0]["counts"].size()) + 4);
  const std::filesystem::path shots = std::filesystem::path(QKIT_TEST_OUTPUT) / "screenshots";
  std::filesystem::create_directories(shots);
  for (const auto& page_points : pages) {  // not a structured binding: CAPTURE is a lambda (clang < 16)
    const std::string& page = page_points.first;
    const int points = page_points.second;
    CAPTURE(page);
    REQUIRE(std::filesystem::exists(f.dir / page));
    std::string shot = page;
    std::replace(shot.begin(), shot.end(), '/', '_');
    const auto png = shots / (shot + ".png");
    const report_browser::rendered r = report_browser::render_in_chromium(f.dir / page, png);
    CHECK(r.points == points);
    CHECK(r.errors == 0);
    CHECK(r.console.empty());
    for (const auto& e : r.console) MESSAGE(e);
    // A screenshot of a drawn page, kept for a person to look at.
    REQUIRE(std::filesystem::exists(png));
    CHECK(std::filesystem::file_size(png) > 5000);
  }
  // The index links every page.
  const std::string index = report_browser::read_text(f.dir / "index.html");
  for (const auto& [page, points] : pages)
    if (page != "index.html") CHECK(index.find("href=\"" + page + "\"") != std::string::npos);
}

TEST_CASE("quant_analyzer: bad input, and a failing evaluation leaves the sim as it was") {
  fixture f("bad_input");
  analysis::quant_analyzer_options opt;
  opt.results_dir = f.dir;
  const auto before = f.enabled();
  int calls = 0;
  analysis::quant_analyzer<decltype(f.sim)> throws(f.sim, [&](auto&) -> double {
    if (++calls == 2) throw std::runtime_error("evaluation failed");
    return 0.5;
  }, opt);
  // The error names the analysis and the layer; the callback's own exception is nested in it.
  CHECK_THROWS_WITH_AS(throws.per_layer_quant_disabled(),
                       "qkit: quant_analyzer: per_layer_quant_disabled: the evaluation callback "
                       "threw for layer '1': evaluation failed",
                       qkit::error);
  calls = 0;
  try {
    (void)throws.per_layer_quant_disabled();
  } catch (const qkit::error& e) {
    CHECK_THROWS_WITH_AS(std::rethrow_if_nested(e), "evaluation failed", std::runtime_error);
  }
  CHECK(f.enabled() == before);
  CHECK_FALSE(std::filesystem::exists(f.dir / "per_layer_quant_disabled.json"));

  analysis::quant_analyzer<decltype(f.sim)> nan(f.sim, [](auto&) { return std::nan(""); }, opt);
  CHECK_THROWS_WITH_AS(nan.per_layer_quant_enabled(),
                       doctest::Contains("for layer '0' (a score must be a finite number)"), qkit::error);
  CHECK(f.enabled() == before);

  CHECK_THROWS_AS(analysis::quant_analyzer<decltype(f.sim)>(f.sim, nullptr, opt), config_error);
  analysis::quant_analyzer<decltype(f.sim)> ok(f.sim, f.score(), opt);
  CHECK_THROWS_WITH_AS(ok.per_layer_mse_loss(data::dataset(tensor::from_shape({0, 4}))),
                       doctest::Contains("the unlabeled data set is empty"), data_error);
  // Unlabeled samples of the wrong shape: named before any pass runs.
  CHECK_THROWS_WITH_AS(ok.per_layer_mse_loss(data::dataset(normal(8, 5, 2))),
                       doctest::Contains("per_layer_mse_loss: the unlabeled samples have shape [8, 5], "
                                         "the model takes [1, 4]"),
                       shape_error);
  CHECK_THROWS_AS(ok.export_per_layer_stats_histogram(data::dataset(normal(8, 5, 2))), shape_error);
  CHECK(f.enabled() == before);
  // A results folder that cannot be made (a file is in the way): refused at construction.
  const auto blocked = f.dir / "a_file";
  io::write_file_atomically(blocked, "x");
  analysis::quant_analyzer_options bad = opt;
  bad.results_dir = blocked / "results";
  CHECK_THROWS_WITH_AS(analysis::quant_analyzer<decltype(f.sim)>(f.sim, f.score(), bad),
                       doctest::Contains("cannot create the results folder"), qkit::error);

  // Not calibrated: refused when the analyzer is made, naming a quantizer.
  auto model = make_model();
  quantsim<model_t, presets::w4a8> raw(model, normal(1, 4, 1));
  CHECK_THROWS_WITH_AS(analysis::quant_analyzer<decltype(raw)>(raw, [](auto&) { return 0.0; }, opt),
                       doctest::Contains("has no encodings"), calibration_error);
}

}  // namespace unit_quant_analyzer
