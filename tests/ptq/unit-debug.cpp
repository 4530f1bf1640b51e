// The debugging workflow (analysis/debug.hpp) on linear → ReLU → linear, scored by −MSE against
// the FP32 output. The calibration data carries rare outliers on one input feature (4 values in
// 8,000), so min-max input ranges are ~20x too wide and the activations cause the drop: the
// truths checked are the FP32 check's exact zeros (the simulation's float path is the model's),
// the chosen range setter's input range excluding the outliers (its max below the largest
// ordinary value's bound, worked from the data), step 6's bitwidths in the written encodings,
// and the written files reproducing the final score in a fresh simulation.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include <qkit/analysis/debug.hpp>
#include <qkit/io/encodings_file.hpp>
#include <qkit/nn/nn.hpp>

#include "ptq_test_util.hpp"
#include "report_browser.hpp"

namespace unit_debug {  // the suite is one translation unit: tests/CMakeLists.txt

using report_browser::read_json;

using namespace qkit;
using namespace qkit::nn;

namespace {


// Normal samples; with `outliers`, every 500th sample has feature 0 at 60.
tensor samples(std::size_t n, std::uint32_t seed, bool outliers) {
  tensor x = ptq_test::normal_tensor({n, 4}, seed);
  if (outliers)
    for (std::size_t i = 0; i < n; i += 500) x(i, 0) = 60.0f;
  return x;
}

// The output of a model (nn::forward) or a simulation (its forward).
template <class M>
tensor run(M& m, const tensor& x) {
  if constexpr (requires { m.forward(x); }) {
    return m.forward(x);
  } else {
    nn::no_hooks h;
    return nn::forward(m, x, h);
  }
}

struct setup {
  ptq_test::small_mlp_t model = ptq_test::small_mlp();
  tensor example = samples(1, 1, false);
  data::dataset calib{samples(2000, 5, true)};
  tensor eval_x = samples(256, 11, false);
  tensor reference;
  setup() {
    auto m = model;
    reference = run(m, eval_x);
  }
  // −MSE of any model or simulation's output against the FP32 output.
  auto score() {
    return [this](auto& m) {
      const tensor y = run(m, eval_x);
      double s = 0.0;
      for (std::size_t i = 0; i < y.size(); ++i) s += (double(y.data()[i]) - reference.data()[i]) * (double(y.data()[i]) - reference.data()[i]);
      return -s / double(y.size());
    };
  }
  analysis::debug_options options(const std::string& name) {
    analysis::debug_options o;
    o.results_dir = std::filesystem::path(QKIT_TEST_OUTPUT) / ("debug_" + name);
    std::filesystem::remove_all(o.results_dir);
    o.calibration_samples = 2000;
    o.adaround_options.iterations = 50;  // AdaRound's own tests check its result
    o.adaround_options.samples = 256;
    o.verbose = false;
    o.analyzer.mse_samples = 64;
    return o;
  }
};

}  // namespace

TEST_CASE("debug_quantization: outlier activations are found, fixed by a percentile range, and the result reloads") {
  setup s;
  auto o = s.options("outliers");
  o.allowed_drop = 1e-4;
  const auto r = analysis::debug_quantization<presets::w8a8>(s.model, s.example, s.calib, s.calib, s.score(), o);
  INFO(r.summary());
  REQUIRE(r.steps.size() == 6);

  // 1. The simulation's float path is the model's: every score exactly the FP32 one (0).
  CHECK(r.fp32 == 0.0);
  REQUIRE(r.steps[0].trials.size() == 3);
  for (const auto& t : r.steps[0].trials) CHECK(t.score == 0.0);
  CHECK(r.steps[0].findings[0].find("exactly") != std::string::npos);

  // 2. The activations hurt, the 8-bit weights barely.
  const auto& s2 = r.steps[1].trials;
  REQUIRE(s2.size() == 5);  // W8A8, weights only, activations only, W8A16, W16A8
  const double w_only = s2[1].score, a_only = s2[2].score;
  CHECK(-a_only > o.allowed_drop / 2);
  CHECK(-w_only < -a_only / 10);

  // 3 is skipped (weights do not hurt); 4 tries the five other range setters and chooses one
  // that leaves out the outliers: the input range ends near the ordinary values' largest.
  CHECK_FALSE(r.steps[2].ran);
  CHECK(r.steps[3].ran);
  CHECK(r.steps[3].trials.size() == 6);
  CHECK(r.activations != range_method::minmax);
  float ordinary = 0.0f;
  for (std::size_t i = 0; i < s.calib.size(); ++i)
    for (std::size_t f = 0; f < 4; ++f)
      if (s.calib.samples()(i, f) < 50.0f) ordinary = std::max(ordinary, s.calib.samples()(i, f));
  auto loaded = analysis::load_debug_result<presets::w8a8>(s.model, s.example, o.results_dir);
  CHECK(loaded.activation_quantizer("input").encodings()[0].max < ordinary * 1.05);
  CHECK(r.score > s2[0].score);  // better than min-max

  // 5 writes QuantAnalyzer's pages; 6 raises quantizers only if the target is still missed.
  CHECK(std::filesystem::exists(o.results_dir / "analysis/index.html"));
  CHECK(std::filesystem::exists(o.results_dir / "analysis/activations_pdf/0_input_q0.html"));
  double best4 = -1e30;
  for (const auto& t : r.steps[3].trials) best4 = std::max(best4, t.score);
  CHECK(r.steps[5].ran == (best4 < r.target));

  // The files reproduce the final score in a fresh simulation.
  CHECK(s.score()(loaded) == r.score);
  const auto j = read_json(o.results_dir / "debug_report.json");
  CHECK(j.at("score").get<double>() == r.score);
  CHECK(j.at("steps").size() == 6);
  CHECK(j.at("activation_range") == to_string(r.activations));
  CHECK(std::filesystem::exists(o.results_dir / "debug_report.html"));
}

TEST_CASE("debug_quantization: a target no precision meets raises every quantizer, says so, and the bitwidths are in the files") {
  setup s;
  auto o = s.options("unreachable");
  o.allowed_drop = 0.0;  // only the FP32 model itself meets it
  o.try_every_fix = true;
  const auto r = analysis::debug_quantization<presets::w4a8>(s.model, s.example, s.calib, s.calib, s.score(), o);
  INFO(r.summary());
  CHECK_FALSE(r.target_met);
  CHECK(r.failed_step.find("step 6") == 0);
  CHECK(r.steps[2].ran);  // every fix tried
  CHECK(r.steps[2].trials.size() >= 5);  // none, CLE, per-channel, CLE + bias correction, AdaRound
  CHECK(r.steps[3].ran);
  REQUIRE(r.steps[5].ran);
  // Every quantized layer raised once: weights 4 → 8, activations 8 → 16.
  std::map<std::string, int> raised(r.raised.begin(), r.raised.end());
  CHECK(raised.at("0.weight") == 8);
  CHECK(raised.at("2.weight") == 8);
  CHECK(raised.at("input") == 16);
  CHECK(raised.at("1") == 16);
  CHECK(raised.at("2") == 16);
  CHECK(r.steps[5].trials.size() == 3);
  const auto f = io::read_encodings(o.results_dir / "model.encodings");
  CHECK(f.param_encodings.at("0.weight")[0].bitwidth == 8);
  CHECK(f.activation_encodings.at("1")[0].bitwidth == 16);
  auto loaded = analysis::load_debug_result<presets::w4a8>(s.model, s.example, o.results_dir);
  CHECK(s.score()(loaded) == r.score);
  CHECK(loaded.param_quantizer("2.weight").bitwidth() == 8);
}

TEST_CASE("debug_quantization: bad input") {
  setup s;
  auto o = s.options("bad");
  o.allowed_drop = -0.01;
  CHECK_THROWS_WITH_AS(analysis::debug_quantization<presets::w8a8>(s.model, s.example, s.calib, s.calib, s.score(), o),
                       doctest::Contains("allowed_drop is -0.01"), config_error);
  o.allowed_drop = 0.01;
  CHECK_THROWS_WITH_AS(analysis::debug_quantization<presets::w8a8>(s.model, s.example, s.calib, s.calib,
                                                                   [](auto&) { return std::nan(""); }, o),
                       doctest::Contains("for step 1 (FP32 model)"), qkit::error);
  CHECK_THROWS_AS(analysis::debug_quantization<presets::w8a8>(s.model, s.example, data::dataset(tensor::from_shape({0, 4})),
                                                              s.calib, s.score(), o),
                  calibration_error);
  io::write_file_atomically(o.results_dir / "a_file", "x");
  o.results_dir = o.results_dir / "a_file" / "results";
  CHECK_THROWS_WITH_AS(analysis::debug_quantization<presets::w8a8>(s.model, s.example, s.calib, s.calib, s.score(), o),
                       doctest::Contains("cannot create the results folder"), qkit::error);
}

// Regression: a weights file holds parameters only, so a result whose ReLU6 cross-layer
// equalization had turned into ReLU loaded back with its ReLU6 (a different model wherever
// activations pass 6). The loader applies relu6_replaced.json; without it the score differs.
TEST_CASE("load_debug_result: a model whose ReLU6 CLE turned into ReLU loads as it was saved") {
  setup s;
  auto m = sequential(linear(4, 3), relu6(), linear(3, 2));
  m.get<0>().weight() = ptq_test::normal_tensor({3, 4}, 21, 8.0f);  // pre-activations well past 6
  m.get<2>().weight() = ptq_test::normal_tensor({2, 3}, 22);
  auto eq = m;
  REQUIRE(ptq::equalize(eq, s.example).relu6_replaced.size() == 1);
  quantsim<decltype(m), presets::w8a8> sim(eq, s.example);
  calibrate(sim, s.calib, 2000);
  const auto dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "debug_relu6";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  nn::save_weights(sim.model(), dir / "model.npz");
  io::write_file_atomically(dir / "relu6_replaced.json", nlohmann::json(ptq::replaced_relu6(sim.model())).dump());
  io::write_file_atomically(dir / "quantsim_config.json", sim_config_to_json(presets::w8a8::default_config()).dump());
  sim.export_encodings(dir / "model.encodings");
  auto out = [&](auto& x) { return x.forward(s.eval_x); };
  const tensor want = out(sim);
  auto loaded = analysis::load_debug_result<presets::w8a8>(m, s.example, dir);
  CHECK(out(loaded) == want);
  std::filesystem::remove(dir / "relu6_replaced.json");
  auto without = analysis::load_debug_result<presets::w8a8>(m, s.example, dir);
  CHECK_FALSE(out(without) == want);
}

}  // namespace unit_debug
