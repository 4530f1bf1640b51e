// Bias correction against closed forms: on one linear layer the corrected bias cancels the
// weight-quantization error (W_q − W)·E[x], with W_q worked out in the test from AIMET's 4-bit
// symmetric grid; the clipped-normal means of analytical correction against published values of
// Φ and φ and a Monte Carlo estimate; and bad input refused with the model left as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>

#include <qkit/nn/nn.hpp>
#include <qkit/ptq/bias_correction.hpp>
#include <qkit/ptq/cross_layer_equalization.hpp>
#include <qkit/sim/quantsim.hpp>

namespace unit_bias_correction {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using namespace qkit::nn;

namespace {

// x[n, i] ~ N(mu_i, 1), seeded.
tensor sample_tensor(std::size_t n, const std::vector<float>& mu, std::uint32_t seed) {
  tensor x = tensor::from_shape({n, mu.size()});
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t i = 0; i < mu.size(); ++i) x(r, i) = mu[i] + d(rng);
  return x;
}
data::dataset samples_with_mean(std::size_t n, const std::vector<float>& mu, std::uint32_t seed) {
  return data::dataset(sample_tensor(n, mu, seed));
}

// AIMET's symmetric grid: delta = absmax / floor((2^bw - 1) / 2), q = clamp(round(w / delta)).
float symmetric_qdq(float w, float absmax, int bw) {
  const double steps = std::pow(2.0, bw) - 1.0;
  const double delta = absmax / std::floor(steps / 2.0);
  const double q = std::clamp(std::nearbyint(w / delta), -std::ceil(steps / 2.0), std::floor(steps / 2.0));
  return float(q * delta);
}

}  // namespace

TEST_CASE("bias correction: one linear layer's corrected bias cancels (W_q - W)·E[x]") {
  const std::vector<float> mu{3.0f, -2.0f, 1.0f, 0.5f};
  const std::vector<std::vector<float>> w{{0.31f, -0.77f, 0.05f, 0.9f},
                                          {-0.42f, 0.13f, 0.66f, -0.21f},
                                          {0.08f, 0.58f, -0.94f, 0.37f}};
  auto model = sequential(linear(4, 3));
  auto& L = model.get<0>();
  for (std::size_t o = 0; o < 3; ++o) {
    for (std::size_t i = 0; i < 4; ++i) L.weight()(o, i) = w[o][i];
    L.bias()(o) = 0.1f * float(o);
  }
  const data::dataset data = samples_with_mean(2000, mu, 7);
  quantsim<decltype(model), presets::w4a8> sim(model, sample_tensor(1, mu, 1));
  sim.set_enabled("input", false);  // isolate the weight-quantization error

  ptq::bias_correction_options opt;
  opt.samples = 2000;
  const auto report = ptq::correct_bias(sim, data, opt);
  REQUIRE(report.layers.size() == 1);
  CHECK(report.layers[0].method == ptq::bias_correction_method::empirical);
  CHECK(report.recalibrated);

  // Closed form: absmax over the whole (per-tensor) weight is 0.94.
  std::vector<double> xbar(4, 0.0);
  for (std::size_t r = 0; r < 2000; ++r)
    for (std::size_t i = 0; i < 4; ++i) xbar[i] += data.samples()(r, i) / 2000.0;
  const auto& Ls = sim.model().get<0>();
  for (std::size_t o = 0; o < 3; ++o) {
    double err_expected = 0.0, err_sample = 0.0;
    for (std::size_t i = 0; i < 4; ++i) {
      const double dw = double(symmetric_qdq(w[o][i], 0.94f, 4)) - double(w[o][i]);
      err_expected += dw * mu[i];
      err_sample += dw * xbar[i];
    }
    // Exactly the sample error on the data it saw, and the expected error up to sampling noise
    // (|dw| <= delta/2 = 0.067, standard error of a mean of 2000 N(0,1) is 0.022 per input).
    CHECK(Ls.bias()(o) == doctest::Approx(0.1 * double(o) - err_sample).epsilon(1e-4));
    CHECK(std::fabs(double(Ls.bias()(o)) - (0.1 * double(o) - err_expected)) < 0.02);
  }
  // The model the sim was built from is not touched.
  CHECK(L.bias()(1) == doctest::Approx(0.1f));
}

TEST_CASE("bias correction: the clipped-normal mean after ReLU and ReLU6") {
  using ptq::detail::clipped_normal_mean;
  // AIMET's ReLU formula with Φ(0.5) = 0.6914625, φ(0.5) = 0.3520653: μ = 1, σ = 2 gives
  // 1·Φ(0.5) + 2·φ(0.5).
  CHECK(clipped_normal_mean(1.0, 2.0, 0.0, INFINITY) ==
        doctest::Approx(0.6914625 + 2.0 * 0.3520653).epsilon(1e-6));
  // No clipping: the mean itself; σ = 0: the clamped mean.
  CHECK(clipped_normal_mean(-0.7, 1.3, -INFINITY, INFINITY) == doctest::Approx(-0.7));
  CHECK(clipped_normal_mean(7.0, 0.0, 0.0, 6.0) == 6.0);
  // ReLU6 against a Monte Carlo estimate (10^6 samples, standard error < 0.003).
  std::mt19937 rng(3);
  std::normal_distribution<double> d(4.5, 2.5);
  double s = 0.0;
  const int n = 1000000;
  for (int i = 0; i < n; ++i) s += std::clamp(d(rng), 0.0, 6.0);
  CHECK(clipped_normal_mean(4.5, 2.5, 0.0, 6.0) == doctest::Approx(s / n).epsilon(3e-3));
}

TEST_CASE("bias correction: analytical uses the folded batch norm before the layer") {
  // conv(1 -> 2) + BN + ReLU -> conv(2 -> 1). The second conv's correction is
  // -(W_q - W)·E[relu(N(beta, gamma²))], the first has no batch norm before it (skipped).
  auto model = sequential(conv2d(1, 2, 1, {.bias = false}), batch_norm(2), relu(),
                          conv2d(2, 1, 1));
  auto& bn = model.get<1>();
  model.get<0>().weight().fill(1.0f);
  bn.running_var().fill(1.0f - bn.epsilon());
  bn.weight()(0) = 2.0f;
  bn.weight()(1) = -0.5f;  // the standard deviation is |γ|
  bn.bias()(0) = 1.0f;
  bn.bias()(1) = 0.25f;
  auto& B = model.get<3>();
  B.weight()(0, 0, 0, 0) = 0.3f;
  B.weight()(0, 1, 0, 0) = -0.71f;
  tensor x = tensor::from_shape({1, 1, 2, 2});
  x.fill(0.5f);
  quantsim<decltype(model), presets::w4a8> sim(model, x);
  const auto report = ptq::correct_bias_analytical(sim);
  REQUIRE(report.layers.size() == 1);
  CHECK(report.layers[0].layer == "3");
  CHECK(report.skipped == std::vector<std::string>{"0"});
  const double e0 = 0.6914625 + 2.0 * 0.3520653;  // μ = 1, σ = 2 (as above)
  const double a = -0.25 / 0.5;                    // μ = 0.25, σ = 0.5
  const double e1 = 0.25 * (1.0 - 0.5 * std::erfc(-a / std::sqrt(2.0))) +
                    0.5 * std::exp(-0.5 * a * a) / std::sqrt(2.0 * M_PI);
  const double dw0 = double(symmetric_qdq(0.3f, 0.71f, 4)) - 0.3;
  const double dw1 = double(symmetric_qdq(-0.71f, 0.71f, 4)) + 0.71;
  CHECK(sim.model().get<3>().bias()(0) == doctest::Approx(-(dw0 * e0 + dw1 * e1)).epsilon(1e-5));
}

TEST_CASE("bias correction: analytical where a batch norm precedes, empirical elsewhere") {
  auto model = sequential(conv2d(1, 4, 3, {.padding = 1, .bias = false}), batch_norm(4), relu(),
                          conv2d(4, 3, 1), global_avg_pool(), flatten(), linear(3, 2));
  init_parameters(model, 8);
  auto& bn = model.get<1>();
  for (std::size_t c = 0; c < 4; ++c) {
    bn.weight()(c) = 0.5f + 0.3f * float(c);
    bn.bias()(c) = -0.4f + 0.35f * float(c);
  }
  tensor images = tensor::from_shape({64, 1, 6, 6});
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& v : images) v = nd(rng);
  const data::dataset data(images);
  using Sim = quantsim<decltype(model), presets::w4a8>;
  Sim mixed(model, data::first(data, 1).samples());
  ptq::bias_correction_options o;
  o.analytical_where_possible = true;
  o.samples = 64;
  o.calibration_samples = 64;
  const auto r = ptq::correct_bias(mixed, data, o);
  REQUIRE(r.layers.size() == 3);
  CHECK(r.layers[0].method == ptq::bias_correction_method::empirical);   // after the input
  CHECK(r.layers[1].method == ptq::bias_correction_method::analytical);  // after conv-bn-relu
  CHECK(r.layers[2].method == ptq::bias_correction_method::empirical);   // after pooling
  // The analytical layer got exactly what the data-free call gives it (same encodings, same
  // batch-norm statistics).
  Sim alone(model, data::first(data, 1).samples());
  qkit::calibrate(alone, data, 64);
  (void)ptq::correct_bias_analytical(alone);
  CHECK(mixed.model().get<3>().bias() == alone.model().get<3>().bias());
  // The empirical ones did move.
  CHECK_FALSE(mixed.model().get<0>().bias() == alone.model().get<0>().bias());
}

TEST_CASE("bias correction: bad input is refused and leaves the simulation as it was") {
  auto model = sequential(linear(4, 3));
  init_parameters(model, 2);
  quantsim<decltype(model), presets::w8a8> sim(model, sample_tensor(1, {0, 0, 0, 0}, 1));
  const tensor bias = sim.model().get<0>().bias();
  CHECK_THROWS_AS(ptq::correct_bias(sim, data::dataset()), calibration_error);
  ptq::bias_correction_options ignore;
  ignore.layers_to_ignore = {"nope"};
  CHECK_THROWS_WITH_AS(ptq::correct_bias(sim, samples_with_mean(8, {0, 0, 0, 0}, 2), ignore),
                       doctest::Contains("no layer named 'nope'"), config_error);
  // Samples the model cannot take fail inside the pass: nothing changed.
  CHECK_THROWS_AS(ptq::correct_bias(sim, samples_with_mean(8, {0, 0, 0}, 2)), shape_error);
  CHECK(sim.model().get<0>().bias() == bias);
  CHECK(!sim.activation_quantizer("input").has_encodings());

  // A name that is no conv or linear.
  auto two = sequential(linear(4, 3, /*bias=*/false), relu(), linear(3, 2, /*bias=*/false));
  init_parameters(two, 3);
  quantsim<decltype(two), presets::w8a8> sim2(two, sample_tensor(1, {0, 0, 0, 0}, 1));
  ptq::bias_correction_options relu_name;
  relu_name.layers_to_ignore = {"1"};
  CHECK_THROWS_WITH_AS(ptq::correct_bias(sim2, samples_with_mean(8, {0, 0, 0, 0}, 2), relu_name),
                       doctest::Contains("'1' in layers_to_ignore is a relu"), config_error);

  // A failure after the first layer was corrected (here: the progress callback): every bias is
  // as it was, and the biases the pass added are gone again.
  ptq::bias_correction_options failing;
  failing.samples = 8;
  failing.calibration_samples = 8;
  failing.progress = [](const ptq::bias_correction_progress& p) {
    if (p.index == 1) throw std::runtime_error("stop");
  };
  CHECK_THROWS_AS(ptq::correct_bias(sim2, samples_with_mean(8, {1, 2, 3, 4}, 3), failing),
                  std::runtime_error);
  CHECK_FALSE(sim2.model().get<0>().has_bias());
  CHECK_FALSE(sim2.model().get<2>().has_bias());
  CHECK(!sim2.param_quantizer("0.weight").has_encodings());
  // Without the failure the same call corrects both layers (each gets a bias).
  failing.progress = nullptr;
  CHECK(ptq::correct_bias(sim2, samples_with_mean(8, {1, 2, 3, 4}, 3), failing).layers.size() == 2);
  CHECK(sim2.model().get<0>().has_bias());
}

TEST_CASE("bias correction and equalization give the same bits on one and on two threads") {
  auto make = [] {
    auto m = sequential(conv2d(1, 8, 3, {.padding = 1, .bias = false}), batch_norm(8), relu6(),
                        conv2d(8, 8, 3, {.padding = 1, .groups = 8}), relu(), conv2d(8, 4, 1),
                        global_avg_pool(), flatten(), linear(4, 3));
    init_parameters(m, 5);
    // Large β on half the channels, so that high-bias absorption moves something too.
    for (std::size_t c = 0; c < 8; c += 2) m.get<1>().bias()(c) = 5.0f;
    return m;
  };
  tensor images = tensor::from_shape({96, 1, 10, 10});
  std::mt19937 rng(6);
  std::normal_distribution<float> d(0.3f, 1.0f);
  for (auto& v : images) v = d(rng);
  const data::dataset data(images);
  auto run = [&](std::size_t threads) {
    set_num_threads(threads);
    auto m = make();
    CHECK_FALSE(ptq::equalize(m, data::first(data, 1).samples()).absorbed.empty());
    quantsim<decltype(m), presets::w4a8> sim(m, data::first(data, 1).samples());
    ptq::bias_correction_options o;
    o.samples = 64;
    o.calibration_samples = 96;
    o.batch_size = 32;
    (void)ptq::correct_bias(sim, data, o);
    std::vector<tensor> params;
    for_each_parameter(sim.model(), [&](const std::string&, tensor& v, tensor*) { params.push_back(v); });
    return std::make_pair(params, sim.forward(data.samples()));
  };
  const auto one = run(1), two = run(2);
  set_num_threads(0);
  REQUIRE(one.first.size() == two.first.size());
  for (std::size_t i = 0; i < one.first.size(); ++i)
    CHECK(std::memcmp(one.first[i].data(), two.first[i].data(), one.first[i].size() * 4) == 0);
  CHECK(std::memcmp(one.second.data(), two.second.data(), one.second.size() * 4) == 0);
}
}  // namespace unit_bias_correction
