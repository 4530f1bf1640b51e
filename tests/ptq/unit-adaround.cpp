// AdaRound against independent truths: h(α) and its slope against the closed form at chosen
// points, the regularizer and the chained gradient against finite differences, β against the
// cosine worked by hand, the soft weight at h ∈ {0, 1} against floor/floor + 1 on a grid built
// in the test; on one linear layer the learned rounding beats round-to-nearest on a loss the
// test computes itself, and every rounded weight is on the grid within one step of W; the
// same call gives the same bits with 1 and 2 threads; bad input leaves everything as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include <qkit/nn/nn.hpp>
#include <qkit/ptq/adaround.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>
#include <qkit/tensor/thread_pool.hpp>

#include "ptq_test_util.hpp"

namespace unit_adaround {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using namespace qkit::nn;
namespace am = qkit::ptq::adaround_math;

namespace {

using ptq_test::normal_tensor;

auto small_conv_model(std::uint32_t seed) {
  auto m = sequential(conv2d(2, 8, 3, {.padding = 1}), relu(),
                      conv2d(8, 8, 3, {.padding = 1, .groups = 8}), relu6(),
                      conv2d(8, 4, 1), global_avg_pool(), flatten(), linear(4, 3));
  std::mt19937 rng(seed);
  m.get<0>().reset_parameters(rng);
  m.get<2>().reset_parameters(rng);
  m.get<4>().reset_parameters(rng);
  m.get<7>().reset_parameters(rng);
  for (auto* b : {&m.get<0>().bias(), &m.get<2>().bias(), &m.get<4>().bias(), &m.get<7>().bias()})
    for (auto& v : *b) v = 0.05f;
  return m;
}

ptq::adaround_options quick(std::size_t iterations) {
  ptq::adaround_options o;
  o.iterations = iterations;
  o.samples = 128;
  o.calibration_samples = 128;
  o.verbose = false;
  return o;
}

std::vector<tensor> weights_of(auto& model) {
  std::vector<tensor> w;
  for_each_parameter(model, [&](const std::string&, tensor& v, tensor*) { w.push_back(v); });
  return w;
}

}  // namespace

TEST_CASE("adaround: h(alpha) and dh/dalpha against the closed form") {
  // sigma(0) = 1/2: h = 1/2 * 1.2 - 0.1 = 0.5, slope 1.2 * 1/4 = 0.3.
  CHECK(am::rectified_sigmoid(0.0f) == doctest::Approx(0.5).epsilon(1e-6));
  CHECK(am::rectified_sigmoid_grad(0.0f) == doctest::Approx(0.3).epsilon(1e-6));
  // sigma(ln 3) = 3/4: h = 0.8, slope 1.2 * 3/16 = 0.225.
  CHECK(am::rectified_sigmoid(std::log(3.0f)) == doctest::Approx(0.8).epsilon(1e-6));
  CHECK(am::rectified_sigmoid_grad(std::log(3.0f)) == doctest::Approx(0.225).epsilon(1e-6));
  // sigma(-ln 3) = 1/4: h = 0.2.
  CHECK(am::rectified_sigmoid(-std::log(3.0f)) == doctest::Approx(0.2).epsilon(1e-6));
  // Saturated ends: sigma > 11/12 gives h = 1, sigma < 1/12 gives 0, and no slope.
  CHECK(am::rectified_sigmoid(5.0f) == 1.0f);
  CHECK(am::rectified_sigmoid(-5.0f) == 0.0f);
  CHECK(am::rectified_sigmoid_grad(5.0f) == 0.0f);
  CHECK(am::rectified_sigmoid_grad(-5.0f) == 0.0f);
  // alpha starts where h is the fractional part.
  for (float r : {0.0f, 0.1f, 0.37f, 0.5f, 0.93f})
    CHECK(am::rectified_sigmoid(am::initial_alpha(r)) == doctest::Approx(r).epsilon(1e-5));
}

TEST_CASE("adaround: the regularizer and its gradient against finite differences") {
  // 1 - |2h - 1|^beta at h = 0.3, beta = 5: 1 - 0.4^5.
  CHECK(am::regularizer(0.3f, 5.0f) == doctest::Approx(1.0 - std::pow(0.4, 5)).epsilon(1e-6));
  CHECK(am::regularizer(0.5f, 20.0f) == 1.0f);
  CHECK(am::regularizer(1.0f, 2.0f) == 0.0f);
  for (float beta : {2.0f, 7.5f, 20.0f})
    for (double h : {0.12, 0.3, 0.61, 0.88}) {
      const double e = 1e-4;
      const double fd = (double(am::regularizer(float(h + e), beta)) -
                         double(am::regularizer(float(h - e), beta))) / (2 * e);
      CHECK(am::regularizer_grad(float(h), beta) == doctest::Approx(fd).epsilon(2e-2));
    }
  // Chained through h(alpha), as the optimizer sees it.
  for (double a : {-1.7, -0.4, 0.25, 1.3}) {
    const double e = 1e-3;
    auto f = [](double x) { return double(am::regularizer(am::rectified_sigmoid(float(x)), 4.0f)); };
    const double fd = (f(a + e) - f(a - e)) / (2 * e);
    const float h = am::rectified_sigmoid(float(a));
    CHECK(am::regularizer_grad(h, 4.0f) * am::rectified_sigmoid_grad(float(a)) ==
          doctest::Approx(fd).epsilon(2e-2));
  }
}

TEST_CASE("adaround: beta falls from 20 to 2 on a cosine after a 20% warm start") {
  CHECK_FALSE(am::regularized(199, 1000, 0.2));
  CHECK(am::regularized(200, 1000, 0.2));
  CHECK(am::beta_at(200, 1000, 0.2, 20.0f, 2.0f) == doctest::Approx(20.0));
  CHECK(am::beta_at(600, 1000, 0.2, 20.0f, 2.0f) == doctest::Approx(11.0));  // cos(pi/2) = 0
  CHECK(am::beta_at(1000, 1000, 0.2, 20.0f, 2.0f) == doctest::Approx(2.0));
}

TEST_CASE("adaround: the soft weight at h = 0 and h = 1 is floor and floor + 1 on the grid") {
  const tensor w = normal_tensor({4, 6}, 3, 0.5f);
  // A 4-bit symmetric grid worked by hand: delta = 0.1, integers [-8, 7].
  ptq::detail::grid_params g{};
  g.scale = 0.1f;
  g.lo = -8.0f;
  g.hi = 7.0f;
  ptq::detail::rounding_problem rp;
  rp.init(w, {g});
  for (float a : {-20.0f, 20.0f}) {
    rp.alpha.fill(a);
    rp.soft_weight();
    for (std::size_t k = 0; k < w.size(); ++k) {
      const float f = std::floor(w.data()[k] / 0.1f) + (a > 0 ? 1.0f : 0.0f);
      CHECK(rp.soft.data()[k] == 0.1f * std::clamp(f, -8.0f, 7.0f));
    }
  }
  // Initialised at the fractional part: the soft weight is W itself inside the grid.
  rp.init(w, {g});
  rp.soft_weight();
  for (std::size_t k = 0; k < w.size(); ++k)
    if (w.data()[k] > -0.8f && w.data()[k] < 0.7f)
      CHECK(rp.soft.data()[k] == doctest::Approx(w.data()[k]).epsilon(1e-4));
}

TEST_CASE("adaround: on one linear layer the learned rounding beats round-to-nearest") {
  auto model = sequential(linear(16, 8), relu());
  model.get<0>().weight() = normal_tensor({8, 16}, 11, 0.4f);
  for (auto& v : model.get<0>().bias()) v = 0.1f;
  const tensor x = normal_tensor({512, 16}, 12);
  const data::dataset ds(x);
  quantsim<decltype(model), presets::w4a8> sim(model, data::first(ds, 1).samples());
  auto o = quick(3000);
  o.samples = 512;
  const auto report = ptq::adaround(sim, ds, o);
  REQUIRE(report.layers.size() == 1);
  MESSAGE(report.summary());

  // The grid: AIMET's 4-bit symmetric per-tensor encoding of max |W| (delta = absmax / 7).
  const auto& W = model.get<0>().weight();
  float absmax = 0.0f;
  for (float v : W) absmax = std::max(absmax, std::fabs(v));
  const float delta = float(double(absmax) / 7.0);
  const auto& enc = sim.param_quantizer("0.weight").encodings()[0];
  CHECK(enc.scale == doctest::Approx(delta).epsilon(1e-6));
  CHECK(sim.param_quantizer("0.weight").frozen());

  const auto& Wa = sim.model().get<0>().weight();
  int flipped = 0;
  for (std::size_t k = 0; k < W.size(); ++k) {
    const float q = Wa.data()[k] / delta;
    CHECK(std::fabs(q - std::nearbyint(q)) < 1e-4f);          // on the grid
    CHECK(std::fabs(Wa.data()[k] - W.data()[k]) <= delta * 1.0001f);  // within one step
    CHECK(std::nearbyint(q) >= -8.0f);
    CHECK(std::nearbyint(q) <= 7.0f);
    flipped += std::nearbyint(q) != std::clamp(std::nearbyint(W.data()[k] / delta), -8.0f, 7.0f);
  }
  CHECK(flipped > 0);

  // The reconstruction loss after the ReLU, worked here: Σ (relu(x·Wqᵀ + b) - relu(x·Wᵀ + b))² / N.
  auto loss = [&](auto weight_at) {
    double s = 0.0;
    for (std::size_t n = 0; n < 512; ++n)
      for (std::size_t o2 = 0; o2 < 8; ++o2) {
        double yq = 0.1, y = 0.1;
        for (std::size_t i = 0; i < 16; ++i) {
          yq += double(weight_at(o2, i)) * x(n, i);
          y += double(W(o2, i)) * x(n, i);
        }
        const double d = std::max(yq, 0.0) - std::max(y, 0.0);
        s += d * d;
      }
    return s / 512.0;
  };
  const double nearest = loss([&](std::size_t o2, std::size_t i) {
    return delta * std::clamp(std::nearbyint(W(o2, i) / delta), -8.0f, 7.0f);
  });
  const double learned = loss([&](std::size_t o2, std::size_t i) { return Wa(o2, i); });
  MESSAGE("reconstruction loss: nearest " << nearest << ", adaround " << learned);
  CHECK(learned < nearest);
  CHECK(report.layers[0].nearest_loss == doctest::Approx(nearest).epsilon(1e-3));
  CHECK(report.layers[0].adaround_loss == doctest::Approx(learned).epsilon(1e-3));
  // The simulation now computes with exactly those weights (qdq of an on-grid weight is itself).
  const tensor wq = sim.quantized_parameter("0.weight");
  for (std::size_t k = 0; k < W.size(); ++k) CHECK(wq.data()[k] == Wa.data()[k]);
}

TEST_CASE("adaround: per-channel weights land on each channel's grid, conv and depthwise too") {
  auto model = small_conv_model(5);
  const data::dataset ds(normal_tensor({128, 2, 8, 8}, 6));
  quantsim<decltype(model), presets::w4a8_per_channel> sim(model, data::first(ds, 1).samples());
  const auto report = ptq::adaround(sim, ds, quick(400));
  CHECK(report.layers.size() == 4);
  CHECK(report.recalibrated);
  for (const char* name : {"0", "2", "4", "7"}) {
    const auto& q = sim.param_quantizer(std::string(name) + ".weight");
    CHECK(q.frozen());
    const auto& encs = q.encodings();
    sim.with_layer(name, [&](auto& leaf) {
      if constexpr (requires { leaf.weight(); }) {
        const tensor& w = leaf.weight();
        REQUIRE(encs.size() == (q.per_channel() ? w.shape(0) : 1));
        const std::size_t per = w.size() / w.shape(0);
        for (std::size_t k = 0; k < w.size(); ++k) {
          const auto& e = encs[q.per_channel() ? k / per : 0];
          const double q2 = double(w.data()[k]) / e.scale;
          CHECK(std::fabs(q2 - std::nearbyint(q2)) < 1e-3);
          CHECK(std::nearbyint(q2) >= double(e.offset));
          CHECK(std::nearbyint(q2) <= double(e.offset + e.qmax()));
        }
      }
    });
  }
  for (const auto& l : report.layers) CHECK(l.adaround_loss <= l.nearest_loss * 1.05);
}

TEST_CASE("adaround: the same call gives bit-identical weights with 1 and 2 threads and again") {
  const data::dataset ds(normal_tensor({96, 2, 8, 8}, 9));
  auto run = [&](std::size_t threads) {
    set_num_threads(threads);
    auto model = small_conv_model(8);
    quantsim<decltype(model), presets::w4a8> sim(model, data::first(ds, 1).samples());
    auto o = quick(300);
    o.seed = 42;
    (void)ptq::adaround(sim, ds, o);
    return weights_of(sim.model());
  };
  const auto one = run(1), two = run(2), again = run(2);
  set_num_threads(2);
  REQUIRE(one.size() == two.size());
  for (std::size_t i = 0; i < one.size(); ++i) {
    CHECK(one[i] == two[i]);
    CHECK(two[i] == again[i]);
  }
  // Not vacuous: the learned rounding differs from round-to-nearest.
  auto model = small_conv_model(8);
  quantsim<decltype(model), presets::w4a8> sim(model, data::first(ds, 1).samples());
  auto o = quick(300);
  o.seed = 42;
  double flipped = 0.0;
  for (const auto& l : ptq::adaround(sim, ds, o).layers) flipped += l.flipped;
  CHECK(flipped > 0.0);
  CHECK(weights_of(sim.model()) == one);
}

TEST_CASE("adaround: with activation quantizers kept on, the inputs are the quantized ones") {
  // The layers then read quantized activations (the model input, the ReLU's output, ...): the
  // cached inputs, and so the rounding, differ from the float-input run; the activation
  // quantizers end as they were placed, with encodings.
  auto model = small_conv_model(51);
  const data::dataset ds(normal_tensor({96, 2, 8, 8}, 52));
  auto run = [&](bool quantized) {
    // 3-bit activations: coarse enough that the inputs' quantization changes the rounding.
    quantsim<decltype(model), sim_preset<4, 3>> sim(model, data::first(ds, 1).samples());
    auto o = quick(300);
    o.quantized_activations = quantized;
    const auto r = ptq::adaround(sim, ds, o);
    CHECK(r.layers.size() == 4);
    CHECK(sim.activation_quantizer("1").enabled());
    CHECK(sim.activation_quantizer("1").has_encodings());
    return weights_of(sim.model());
  };
  const auto off = run(false), on = run(true);
  bool differs = false;
  for (std::size_t i = 0; i < off.size(); ++i) differs |= off[i] != on[i];
  CHECK(differs);
}

TEST_CASE("adaround: float16 and 32-bit weights are not on an integer grid: skipped, unchanged") {
  auto model = small_conv_model(61);
  const data::dataset ds(normal_tensor({32, 2, 8, 8}, 62));
  quantsim<decltype(model), presets::fp16> half(model, data::first(ds, 1).samples());
  const auto r16 = ptq::adaround(half, ds, quick(10));
  CHECK(r16.layers.empty());
  CHECK(r16.skipped.size() == 4);
  CHECK(weights_of(half.model()) == weights_of(model));
  quantsim<decltype(model), presets::fp32> full(model, data::first(ds, 1).samples());
  CHECK(ptq::adaround(full, ds, quick(10)).skipped.size() == 4);
  CHECK(weights_of(full.model()) == weights_of(model));
}

TEST_CASE("apply_adaround: a fresh QuantSim of the returned model loads its encodings file") {
  auto model = small_conv_model(21);
  const data::dataset ds(normal_tensor({128, 2, 8, 8}, 22));
  const tensor example = data::first(ds, 1).samples();
  const auto dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "adaround";
  ptq::adaround_report report;
  auto rounded = ptq::apply_adaround<presets::w4a8>(model, example, ds, dir, "small", quick(200),
                                                     &report);
  CHECK(report.layers.size() == 4);
  REQUIRE(std::filesystem::exists(dir / "small.encodings"));

  // The same rounding in place, for comparison.
  quantsim<decltype(model), presets::w4a8, tf_enhanced_range> in_place(model, example);
  (void)ptq::adaround(in_place, ds, quick(200));

  quantsim<decltype(rounded), presets::w4a8> fresh(rounded, example);
  fresh.set_and_freeze_param_encodings(dir / "small.encodings");
  calibrate(fresh, ds, 128, 64);
  for (const char* name : {"0.weight", "2.weight", "4.weight", "7.weight"}) {
    CHECK(fresh.param_quantizer(name).frozen());
    CHECK(fresh.param_quantizer(name).encodings() == in_place.param_quantizer(name).encodings());
    CHECK(fresh.quantized_parameter(name) == in_place.quantized_parameter(name));
  }
  const tensor x = data::first(ds, 16).samples();
  CHECK(fresh.forward(x) == in_place.forward(x));
}

TEST_CASE("adaround: bad input is refused and leaves the model and the simulation as they were") {
  auto model = small_conv_model(31);
  const data::dataset ds(normal_tensor({64, 2, 8, 8}, 32));
  quantsim<decltype(model), presets::w4a8_per_channel> sim(model, data::first(ds, 1).samples());
  calibrate(sim, ds, 64, 32);
  const auto before = weights_of(sim.model());
  const std::string summary = sim.summary();
  auto unchanged = [&] {
    CHECK(weights_of(sim.model()) == before);
    CHECK(sim.summary() == summary);
  };

  CHECK_THROWS_AS(ptq::adaround(sim, data::dataset(), quick(10)), calibration_error);
  unchanged();

  auto o = quick(10);
  o.layers_to_ignore = {"1"};  // a ReLU
  CHECK_THROWS_WITH_AS(ptq::adaround(sim, ds, o), doctest::Contains("not a conv or linear"),
                       config_error);
  unchanged();

  tensor bad = ds.samples();
  bad(10, 1, 3, 3) = std::nanf("");
  CHECK_THROWS_WITH_AS(ptq::adaround(sim, data::dataset(bad), quick(10)),
                       doctest::Contains("sample 10"), calibration_error);
  unchanged();

  o = quick(10);
  o.cache_bytes = 1000;
  CHECK_THROWS_WITH_AS(ptq::adaround(sim, ds, o), doctest::Contains("cache_bytes"), config_error);
  unchanged();

  // A frozen per-channel encoding with 3 channels where conv "4" has 4: refused up front.
  auto encs = sim.param_quantizer("4.weight").encodings();
  encs.pop_back();
  sim.set_and_freeze_encodings("4.weight", encs);
  const auto before_bad = weights_of(sim.model());
  const std::string summary_bad = sim.summary();
  CHECK_THROWS_WITH_AS(ptq::adaround(sim, ds, quick(10)), doctest::Contains("4 output channels"),
                       shape_error);
  CHECK(weights_of(sim.model()) == before_bad);
  CHECK(sim.summary() == summary_bad);
}

TEST_CASE("adaround: a failure at a later layer undoes the layers already rounded") {
  // A weight of 1e38 in conv "4" makes what follows it infinite: found when the input of the
  // linear layer "7" is captured, after layers 0, 2 and 4 have been rounded and frozen.
  auto model = small_conv_model(41);
  model.get<4>().weight()(0, 0, 0, 0) = 1e38f;
  const data::dataset ds(normal_tensor({64, 2, 8, 8}, 42));
  quantsim<decltype(model), presets::w4a8> sim(model, data::first(ds, 1).samples());
  const auto before = weights_of(sim.model());
  const std::string summary = sim.summary();
  CHECK_THROWS_WITH_AS(ptq::adaround(sim, ds, quick(20)), doctest::Contains("'7'"),
                       calibration_error);
  CHECK(weights_of(sim.model()) == before);
  CHECK(sim.summary() == summary);
  CHECK_FALSE(sim.param_quantizer("0.weight").frozen());
}
}  // namespace unit_adaround
