// QAT: the straight-through backward of one quantizer against closed forms, the range-learning
// gradients against an independent scalar transcription of AIMET's t1/t2 formulas and against
// finite differences where the quantized function is differentiable in its range (saturated
// values), QuantSim's backward through a linear layer against a hand-written one, regular QAT
// and range learning steps, BN re-estimation and QAT with live batch norms, the training loop,
// determinism and the errors.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <qkit/nn/fit.hpp>
#include <qkit/nn/nn.hpp>
#include <qkit/qat/batch_norm.hpp>
#include <qkit/quant/ste.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>
#include <qkit/tensor/thread_pool.hpp>

#include "ptq/ptq_test_util.hpp"

namespace unit_qat {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using ptq_test::normal_tensor;

namespace {


// Σ g·qdq(x) with the encoding of [lo, hi]: the loss whose range gradient the formulas give.
double weighted_qdq(const std::vector<float>& x, const std::vector<float>& g, double lo, double hi,
                    int bw, scheme s) {
  const encoding e = encoding_from_range(lo, hi, bw, s);
  std::vector<float> y(x.size());
  qdq(x.data(), y.data(), x.size(), e);
  double l = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) l += double(g[i]) * double(y[i]);
  return l;
}

// AIMET's range-learning gradients as its facts sheet writes them (asymmetric), element by
// element: x_q the clamped integer, mask in range, t1 = Σ(x_q + offset − x·mask/Δ)·g / N,
// t2 = N/(max − min)²·Σ Δ·g·(1 − mask); dmin = −t1 + max·t2, dmax = t1 − min·t2.
range_gradient aimet_asymmetric(const std::vector<float>& x, const std::vector<float>& g,
                                double mn, double mx, int bw) {
  const double N = std::ldexp(1.0, bw) - 1.0;
  const double delta = (mx - mn) / N;
  const double offset = -std::clamp(std::nearbyint(-mn / delta), 0.0, N);
  double t1 = 0.0, t2sum = 0.0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double r = std::nearbyint(double(float(x[i]) / float(delta))) - offset;
    const bool in = r >= 0.0 && r <= N;
    const double xq = std::clamp(r, 0.0, N);
    t1 += (xq + offset - (in ? double(x[i]) / delta : 0.0)) * g[i];
    t2sum += delta * g[i] * (in ? 0.0 : 1.0);
  }
  t1 /= N;
  const double t2 = N / ((mx - mn) * (mx - mn)) * t2sum;
  return {-t1 + mx * t2, t1 - mn * t2};
}

// The sums of one grid, from quant/ste.hpp.
ste_sums sums_of(const std::vector<float>& x, const std::vector<float>& g, const encoding& e) {
  std::vector<float> gg = g;
  ste_sums s;
  ste_backward(x.data(), gg.data(), x.size(), e, rounding::half_even, &s);
  return s;
}

}  // namespace

TEST_CASE("ste backward: the gradient passes inside the grid and stops where qdq clamps") {
  // [-1, 1] at 8 bits asymmetric: Δ = 2/255, offset −128, grid [−128Δ, 127Δ] = [−1.0039, 0.996].
  const encoding e = encoding_from_range(-1.0, 1.0, 8);
  const std::vector<float> x{-2.0f, -1.0f, -0.5f, 0.0f, 0.3f, 0.99f, 1.2f, 5.0f};
  std::vector<float> g{1, 2, 3, 4, 5, 6, 7, 8};
  ste_backward(x.data(), g.data(), x.size(), e);
  const std::vector<float> want{0, 2, 3, 4, 5, 6, 0, 0};
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(g[i] == want[i]);
  // The same as the forward's own mask.
  std::vector<float> m(x.size());
  ste_mask(x.data(), m.data(), x.size(), e);
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(m[i] == (want[i] != 0 ? 1.0f : 0.0f));

  // Float16: everything representable passes; beyond 65504 (rounds to inf) stops.
  std::vector<float> xf{1.0f, -3e4f, 7e4f}, gf{1, 1, 1};
  ste_backward(xf.data(), gf.data(), 3, encoding::fp16());
  CHECK(gf[0] == 1.0f);
  CHECK(gf[1] == 1.0f);
  CHECK(gf[2] == 0.0f);
}

TEST_CASE("ste backward's SIMD blocks equal the forward's mask and a scalar sum, at every length") {
  // Lengths around the SIMD width and the 4,096-value block, values inside and outside the
  // grid, clamped infinities, a NaN x and an infinite gradient outside the grid: g must become
  // exactly mask·g (ste_mask, the forward's own mask kernel) with 0 — not NaN — where the mask
  // is 0, and A, B must equal a plain double loop over the same formula.
  std::mt19937 rng(11);
  std::normal_distribution<float> d(0.0f, 1.2f);
  const encoding e = encoding_from_range(-1.0, 2.0, 4);
  const double scale = e.scale;
  for (rounding r : {rounding::half_even, rounding::half_away}) {
    for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{15},
                          std::size_t{16}, std::size_t{17}, std::size_t{4095}, std::size_t{4096},
                          std::size_t{4097}, std::size_t{10001}}) {
      std::vector<float> x(n), g(n), mask(n);
      for (auto& v : x) v = d(rng);
      for (auto& v : g) v = d(rng);
      if (n > 3) {
        x[0] = std::numeric_limits<float>::infinity();
        x[1] = -std::numeric_limits<float>::infinity();
        x[2] = 40.0f;
      }
      ste_mask(x.data(), mask.data(), n, e, r);
      // The scalar formula: T as qdq's integer (the dequantized value over Δ, rounded back).
      std::vector<float> y(n);
      qdq(x.data(), y.data(), n, e, r);
      double want_a = 0.0, want_b = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        const double t = std::nearbyint(double(y[i]) / scale);
        if (mask[i] != 0.0f) {
          want_a += double(g[i]) * (t - double(x[i]) / double(float(scale)));
        } else {
          want_a += double(g[i]) * t;
          want_b += double(g[i]);
        }
      }
      std::vector<float> got = g;
      ste_sums sums;
      ste_backward(x.data(), got.data(), n, e, r, &sums);
      std::vector<float> plain = g;
      ste_backward(x.data(), plain.data(), n, e, r);  // without sums: the other path
      CAPTURE(n);
      CAPTURE(static_cast<int>(r));
      for (std::size_t i = 0; i < n; ++i) {
        const float want = mask[i] != 0.0f ? g[i] : 0.0f;
        CHECK(std::memcmp(&got[i], &want, sizeof(float)) == 0);
        CHECK(std::memcmp(&plain[i], &want, sizeof(float)) == 0);
      }
      CHECK(sums.a == doctest::Approx(want_a).epsilon(1e-12));
      CHECK(sums.b == doctest::Approx(want_b).epsilon(1e-12));
      if (n > 3) {  // an infinite gradient where the grid clamps is 0 after, not NaN
        std::vector<float> gi = g;
        gi[2] = std::numeric_limits<float>::infinity();
        ste_sums si;
        ste_backward(x.data(), gi.data(), n, e, r, &si);
        CHECK(gi[2] == 0.0f);
        CHECK(std::isinf(si.b));
      }
    }
  }
}

TEST_CASE("range gradients equal a scalar transcription of AIMET's asymmetric t1/t2 formulas") {
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.2f, 1.5f);
  for (int bw : {2, 4, 8}) {
    for (const auto range : {std::pair{-1.3, 2.1}, std::pair{-0.4, 0.9}, std::pair{-3.0, 0.5}}) {
      const double mn = range.first, mx = range.second;  // not a binding: CAPTURE (clang < 16)
      std::vector<float> x(997), g(997);
      for (auto& v : x) v = d(rng);
      for (auto& v : g) v = d(rng);
      const encoding e = encoding_from_range(mn, mx, bw);
      const range_gradient ours = range_gradient_of(sums_of(x, g, e), mn, mx, bw, scheme::asymmetric);
      const range_gradient ref = aimet_asymmetric(x, g, mn, mx, bw);
      CAPTURE(bw);
      CAPTURE(mn);
      // Δ in float (as the kernel divides) or in double: equal to about 1e-8.
      CHECK(ours.dmin == doctest::Approx(ref.dmin).epsilon(1e-6));
      CHECK(ours.dmax == doctest::Approx(ref.dmax).epsilon(1e-6));
    }
  }
}

TEST_CASE("range gradients match finite differences where qdq is differentiable in the range") {
  // Saturated values sit on the grid's ends, which move smoothly with the range: there the
  // quantized function is differentiable and the straight-through gradient is exact.
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> far(2.0f, 4.0f), gd(-1.0f, 1.0f);
  // The loss is linear in the range while every value stays saturated, so a wide step has no
  // truncation error and keeps float rounding of qdq's output (~1e-7 of |x̂|) small against it.
  const double h = 1e-2;
  SUBCASE("symmetric: both ends, Δ = max/⌊N/2⌋") {
    std::vector<float> x(64), g(64);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 2 ? -1.0f : 1.0f) * far(rng);
    for (auto& v : g) v = gd(rng);
    for (int bw : {4, 8}) {
      const double mx = 1.25;
      const encoding e = encoding_from_range(-mx, mx, bw, scheme::symmetric_signed);
      const range_gradient rg =
          range_gradient_of(sums_of(x, g, e), -mx, mx, bw, scheme::symmetric_signed);
      const double fd = (weighted_qdq(x, g, -(mx + h), mx + h, bw, scheme::symmetric_signed) -
                         weighted_qdq(x, g, -(mx - h), mx - h, bw, scheme::symmetric_signed)) /
                        (2 * h);
      CHECK(rg.dmax == doctest::Approx(fd).epsilon(1e-4));
      CHECK(rg.dmin == doctest::Approx(-rg.dmax));
    }
  }
  SUBCASE("asymmetric from zero (a ReLU output): values above max and below 0") {
    std::vector<float> x(64), g(64);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = i % 3 ? far(rng) : -far(rng);
    for (auto& v : g) v = gd(rng);
    const double mx = 1.5;
    const encoding e = encoding_from_range(0.0, mx, 8);
    const range_gradient rg = range_gradient_of(sums_of(x, g, e), 0.0, mx, 8, scheme::asymmetric);
    const double fd =
        (weighted_qdq(x, g, 0.0, mx + h, 8, {}) - weighted_qdq(x, g, 0.0, mx - h, 8, {})) / (2 * h);
    CHECK(rg.dmax == doctest::Approx(fd).epsilon(1e-4));
    // Closed form: the values above max contribute g each (x̂ = max there), those below 0 none.
    double above = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i)
      if (x[i] > 0) above += g[i];
    CHECK(rg.dmax == doctest::Approx(above).epsilon(1e-9));
  }
}

namespace {

// y = x·Wᵀ + b, 3 inputs -> 2 outputs, weights set by hand.
using tiny_model = nn::sequential<nn::linear>;
tiny_model make_tiny() {
  tiny_model m{nn::linear(3, 2)};
  auto& l = m.get<0>();
  const float w[6] = {0.5f, -0.25f, 1.0f, -0.75f, 0.3f, 0.2f};
  for (int i = 0; i < 6; ++i) l.weight().data()[i] = w[i];
  l.bias()(0) = 0.1f;
  l.bias()(1) = -0.2f;
  return m;
}

// The last layer's output before its quantizer, as the forward sees it.
struct output_capture {
  tensor before;
  template <class L>
  void layer_output(const nn::dataflow_node&, const L&, const tensor& b, const tensor&) {
    before = b;
  }
};

template <class Sim>
void calibrate_on(Sim& sim, const tensor& x) {
  sim.compute_encodings([&](auto& s) { (void)s.forward(x); });
}

// The data the tiny model's simulations are built and calibrated on.
tensor tiny_calibration() { return normal_tensor({16, 3}, 1, 0.5f); }

// The tiny model's W8A8 simulation, calibrated on tiny_calibration().
quantsim<tiny_model, presets::w8a8> calibrated_tiny() {
  const tensor calib = tiny_calibration();
  quantsim<tiny_model, presets::w8a8> sim(make_tiny(), calib);
  calibrate_on(sim, calib);
  return sim;
}

}  // namespace

TEST_CASE("quantsim backward: straight-through at the input, the weights and the output") {
  auto model = make_tiny();
  const tensor calib = normal_tensor({16, 3}, 1, 0.5f);
  quantsim<tiny_model, presets::w8a8> sim(model, calib);
  sim.activation_quantizer("input").set_enabled(true);
  calibrate_on(sim, calib);
  // Inputs wider than the calibration data: some saturate at the input quantizer and some
  // outputs saturate at the output quantizer.
  const tensor x = normal_tensor({8, 3}, 2, 2.0f);
  sim.set_training(true);
  sim.zero_grad();
  const tensor y = sim.forward(x);
  tensor dy = normal_tensor({8, 2}, 3);
  const tensor dx = sim.backward(dy);

  // By hand: xq = qdq_in(x), z = xq·Wqᵀ + bq (pre-quantization output), dz = dy·mask_out(z),
  // dWq = dzᵀ·xq, dW = dWq·mask_w(W), dxq = dz·Wq, dx = dxq·mask_in(x).
  const auto& qin = sim.activation_quantizer("input");
  const std::string out_name = sim.dataflow().output;
  const auto& qout = sim.activation_quantizer(out_name);
  const tensor xq = qin.qdq(x);
  const tensor wq = sim.quantized_parameter("0.weight");
  const tensor bq = sim.quantized_parameter("0.bias");
  const tensor m_in = qin.ste_mask(x);
  const tensor m_w = sim.param_quantizer("0.weight").ste_mask(sim.model().get<0>().weight());
  tensor z = tensor::from_shape({8, 2});
  for (std::size_t n = 0; n < 8; ++n)
    for (std::size_t o = 0; o < 2; ++o) {
      float acc = 0.0f;
      for (std::size_t i = 0; i < 3; ++i) acc += xq(n, i) * wq(o, i);
      z(n, o) = acc + bq(o);
    }
  const tensor m_out = qout.ste_mask(z);
  std::size_t stopped_in = 0, stopped_out = 0;
  for (float v : m_in) stopped_in += v == 0.0f;
  for (float v : m_out) stopped_out += v == 0.0f;
  REQUIRE(stopped_in > 0);  // the premise: both masks act
  REQUIRE(stopped_out > 0);
  for (std::size_t o = 0; o < 2; ++o)
    for (std::size_t i = 0; i < 3; ++i) {
      double dw = 0.0;
      for (std::size_t n = 0; n < 8; ++n) dw += double(dy(n, o) * m_out(n, o)) * double(xq(n, i));
      CHECK(sim.model().get<0>().weight_grad()(o, i) ==
            doctest::Approx(dw * m_w(o, i)).epsilon(1e-5));
    }
  for (std::size_t n = 0; n < 8; ++n)
    for (std::size_t i = 0; i < 3; ++i) {
      double d = 0.0;
      for (std::size_t o = 0; o < 2; ++o) d += double(dy(n, o) * m_out(n, o)) * double(wq(o, i));
      CHECK(dx(n, i) == doctest::Approx(d * m_in(n, i)).epsilon(1e-5));
    }
  CHECK(y.shape() == dy.shape());
}

TEST_CASE("quantsim backward, per-channel weights: the mask of each channel's own grid") {
  auto model = make_tiny();
  const tensor calib = normal_tensor({16, 3}, 1, 0.5f);
  quantsim<tiny_model, presets::w4a8> sim(model, calib);
  sim.param_quantizer("0.weight").set_channel_axis(0);
  calibrate_on(sim, calib);
  // Frozen per-channel encodings narrower than the weights: channel 0 keeps [-0.6, 0.6],
  // channel 1 [-0.5, 0.5], so 1.0 (channel 0) and -0.75 (channel 1) are clamped.
  sim.set_and_freeze_encodings("0.weight",
                               {encoding_from_range(-0.6, 0.6, 4, scheme::symmetric_signed),
                                encoding_from_range(-0.5, 0.5, 4, scheme::symmetric_signed)});
  sim.set_training(true);
  sim.zero_grad();
  (void)sim.forward(calib);
  tensor dy = tensor::from_shape({16, 2});
  dy.fill(1.0f);
  (void)sim.backward(dy);
  const auto& gw = sim.model().get<0>().weight_grad();
  CHECK(gw(0, 2) == 0.0f);
  CHECK(gw(1, 0) == 0.0f);
  CHECK(gw(0, 0) != 0.0f);
  CHECK(gw(1, 1) != 0.0f);
}

TEST_CASE("range learning in the sim: the gradients of each learned range are its quantizer's") {
  auto sim = calibrated_tiny();
  sim.set_qat_mode(qat_mode::range_learning);
  sim.set_training(true);
  sim.zero_grad();
  output_capture cap;
  const tensor x = normal_tensor({32, 3}, 4, 1.5f);
  (void)sim.forward(x, cap);
  const tensor dy = normal_tensor({32, 2}, 5);
  (void)sim.backward(dy);

  const std::string out = sim.dataflow().output;
  std::vector<float> xs(cap.before.begin(), cap.before.end()), gs(dy.begin(), dy.end());
  const encoding e = sim.activation_quantizer(out).encodings()[0];
  double got_min = 0, got_max = 0, learned_min = 0, learned_max = 0;
  std::size_t names = 0;
  sim.for_each_encoding_parameter([&](const std::string& name, tensor& v, tensor* g) {
    ++names;
    if (name == out + ".encoding_min") got_min = (*g)(0), learned_min = v(0);
    if (name == out + ".encoding_max") got_max = (*g)(0), learned_max = v(0);
  });
  // Learned: the input's and the output's min and max, the weight's max (symmetric); the bias
  // is not quantized in AIMET's default config, so not listed.
  CHECK(names == 5);
  CHECK(learned_min == doctest::Approx(e.min));
  const range_gradient ref = aimet_asymmetric(xs, gs, learned_min, learned_max, 8);
  CHECK(got_min == doctest::Approx(ref.dmin).epsilon(1e-5));
  CHECK(got_max == doctest::Approx(ref.dmax).epsilon(1e-5));
}

TEST_CASE("regular QAT recomputes the weight encodings from the weights at every training forward") {
  const tensor calib = tiny_calibration();
  auto sim = calibrated_tiny();
  const auto act_before = sim.activation_quantizer(sim.dataflow().output).encodings();
  sim.set_training(true);
  sim.model().get<0>().weight()(0, 2) = 3.0f;  // a new largest weight
  (void)sim.forward(calib);
  // Symmetric 8-bit min-max: Δ = max|W| / 127.
  CHECK(sim.param_quantizer("0.weight").encodings()[0].scale == doctest::Approx(3.0 / 127.0));
  CHECK(sim.activation_quantizer(sim.dataflow().output).encodings() == act_before);
}

TEST_CASE("range learning keeps every encoding valid: steps are clamped, never NaN") {
  const tensor calib = tiny_calibration();
  auto sim = calibrated_tiny();
  sim.set_qat_mode(qat_mode::range_learning);
  sim.set_training(true);
  // Drive the ranges far out: max below min, a NaN, an inverted symmetric max.
  sim.for_each_encoding_parameter([&](const std::string& name, tensor& v, tensor*) {
    if (name.ends_with(".encoding_min")) v(0) = 5.0f;
    else if (name == "0.weight.encoding_max") v(0) = std::numeric_limits<float>::quiet_NaN();
    else v(0) = -2.0f;
  });
  const tensor y = sim.forward(calib);
  for (float v : y) CHECK(std::isfinite(v));
  sim.for_each_quantizer([&](const std::string&, quantizer_kind, const auto& q) {
    if (!q.enabled() || !q.has_encodings()) return;
    for (const auto& e : q.encodings()) {
      CHECK(std::isfinite(e.scale));
      CHECK(e.scale > 0.0);
      CHECK(e.min <= 0.0);  // zero representable
      CHECK(e.max >= 0.0);
    }
  });
  CHECK(sim.clamped_range_updates() > 0);
  // The NaN fell back to the last valid value: the calibrated weight range.
  sim.for_each_encoding_parameter([&](const std::string& name, tensor& v, tensor*) {
    if (name == "0.weight.encoding_max") CHECK(v(0) == doctest::Approx(1.0).epsilon(1e-6));
  });
}

TEST_CASE("QAT errors: backward without a forward, range learning without encodings") {
  auto model = make_tiny();
  const tensor calib = normal_tensor({16, 3}, 1, 0.5f);
  quantsim<tiny_model, presets::w8a8> sim(model, calib);
  CHECK_THROWS_WITH_AS(sim.set_qat_mode(qat_mode::range_learning),
                       doctest::Contains("has none (call compute_encodings"), calibration_error);
  calibrate_on(sim, calib);
  tensor dy = tensor::from_shape({16, 2});
  dy.fill(1.0f);
  CHECK_THROWS_WITH_AS((void)sim.backward(dy), doctest::Contains("needs training mode"), error);
  sim.set_training(true);
  CHECK_THROWS_WITH_AS((void)sim.backward(dy), doctest::Contains("without a preceding training forward"), error);
  (void)sim.forward(calib);
  tensor wrong = tensor::from_shape({4, 2});
  wrong.fill(1.0f);
  CHECK_THROWS_AS((void)sim.backward(wrong), shape_error);
  CHECK_NOTHROW((void)sim.backward(dy));
}

namespace {

// Two Gaussian blobs per class in 4-D, 3 classes: a problem a small MLP learns.
data::dataset blobs(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.4f);
  tensor x = tensor::from_shape({n, 4});
  std::vector<int> y(n);
  const float centers[3][4] = {{1, 0, 0, 1}, {-1, 1, 0, 0}, {0, -1, 1, -1}};
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = int(i % 3);
    for (int k = 0; k < 4; ++k) x(i, k) = centers[y[i]][k] + d(rng);
  }
  return data::dataset(std::move(x), y);
}
using mlp = nn::sequential<nn::linear, nn::relu, nn::linear>;
mlp make_mlp() {
  mlp m{nn::linear(4, 16), nn::relu(), nn::linear(16, 3)};
  nn::init_parameters(m, 3);
  return m;
}

}  // namespace

TEST_CASE("fit trains a model and a QuantSim (regular and range learning) to high accuracy") {
  const data::dataset train = blobs(600, 1), test = blobs(300, 2);
  nn::fit_options o;
  o.epochs = 5;
  o.batch_size = 32;
  o.lr = {.base = 0.05f};
  o.validation = &test;
  auto model = make_mlp();
  CHECK(nn::evaluate(model, test) < 0.7);
  nn::sgd opt({.lr = 0.05f, .momentum = 0.9f});
  const nn::fit_result r = nn::fit(model, opt, train, o);
  CHECK(r.epochs.size() == 5);
  CHECK(r.epochs.back().validation_accuracy > 0.95);
  CHECK(r.steps == 5 * 19);

  for (qat_mode mode : {qat_mode::regular, qat_mode::range_learning}) {
    auto m = make_mlp();
    quantsim<mlp, sim_preset<4, 4>> sim(m, data::first(train, 8).samples());
    calibrate_on(sim, train.samples());
    const double before = nn::evaluate(sim, test);
    sim.set_qat_mode(mode);
    nn::sgd qopt({.lr = 0.05f, .momentum = 0.9f});
    const auto qr = nn::fit(sim, qopt, train, o);
    CAPTURE(int(mode));
    CHECK(before < 0.7);
    CHECK(qr.epochs.back().validation_accuracy > 0.9);
    CHECK(!sim.training());
  }
}

TEST_CASE("fit: early stop, best checkpoint, and the same weights with 1 and 2 threads") {
  const data::dataset train = blobs(300, 1), test = blobs(150, 2);
  auto run = [&](std::size_t threads) {
    set_num_threads(threads);
    auto m = make_mlp();
    quantsim<mlp, presets::w8a8> sim(m, data::first(train, 8).samples());
    calibrate_on(sim, train.samples());
    sim.set_qat_mode(qat_mode::range_learning);
    nn::adam opt({.lr = 1e-2f});
    nn::fit_options o;
    o.epochs = 2;
    o.lr = {.base = 1e-2f, .warmup_steps = 5};
    (void)nn::fit(sim, opt, train, o);
    std::vector<float> all;
    nn::for_each_parameter(sim.model(), [&](const std::string&, tensor& v, tensor*) {
      all.insert(all.end(), v.begin(), v.end());
    });
    sim.for_each_encoding_parameter([&](const std::string&, tensor& v, tensor*) {
      all.insert(all.end(), v.begin(), v.end());
    });
    return all;
  };
  const auto one = run(1), two = run(2), again = run(2);
  set_num_threads(0);
  CHECK(one == two);
  CHECK(two == again);

  // Patience 1: training stops after the first epoch that does not improve, and the weights
  // are those of the best epoch, whichever it was.
  auto m = make_mlp();
  nn::sgd opt({.lr = 0.05f});
  nn::fit_options o;
  o.epochs = 6;
  o.validation = &test;
  o.patience = 1;
  o.restore_best = true;
  std::size_t epochs_seen = 0;
  o.on_epoch = [&](const nn::epoch_result&) { ++epochs_seen; };
  o.lr = {.base = 0.05f};
  const auto r = nn::fit(m, opt, train, o);
  CHECK(r.best_epoch >= 1);
  CHECK(r.restored_best);
  CHECK(nn::evaluate(m, test) == doctest::Approx(r.best_validation_accuracy));
  CHECK(epochs_seen == r.epochs.size());
}

TEST_CASE("fit: a NaN loss stops with the step and the layer, and the weights go back") {
  const data::dataset train = blobs(128, 1);
  auto m = make_mlp();
  m.get<2>().weight()(1, 3) = std::numeric_limits<float>::quiet_NaN();
  const tensor before = m.get<0>().weight();
  nn::sgd opt({.lr = 0.05f});
  CHECK_THROWS_WITH_AS(nn::fit(m, opt, train),
                       doctest::Contains("epoch 1 step 1 (global step 1); first non-finite output: Gemm '2'"),
                       training_error);
  CHECK(m.get<0>().weight() == before);

  nn::fit_options bad;
  bad.batch_size = 0;
  CHECK_THROWS_AS(nn::fit(m, opt, train, bad), config_error);
  bad.batch_size = 8;
  bad.patience = 2;
  CHECK_THROWS_WITH_AS(nn::fit(m, opt, train, bad), doctest::Contains("need validation data"),
                       config_error);
  CHECK_THROWS_AS(nn::fit(m, opt, data::dataset(tensor::from_shape({4, 4}))), data_error);
}

namespace {
using bn_model = nn::sequential<nn::linear, nn::batch_norm, nn::relu>;
bn_model make_bn_model() {
  bn_model m{nn::linear(3, 2), nn::batch_norm(2), nn::relu()};
  nn::init_parameters(m, 7);
  m.get<1>().running_mean()(0) = 0.25f;  // statistics to be replaced
  m.get<1>().running_var()(1) = 4.0f;
  return m;
}
}  // namespace

TEST_CASE("reestimate_bn_stats: the average of per-batch mean and variance on the quantized model") {
  const tensor calib = normal_tensor({16, 3}, 1, 0.5f);
  quantsim<bn_model, presets::w8a8> sim(make_bn_model(), calib, presets::w8a8::default_config(),
                                        {}, {}, {.batch_norms = batch_norm_mode::keep});
  calibrate_on(sim, calib);
  const tensor data_x = normal_tensor({12, 3}, 9, 1.0f);
  const data::dataset ds(data_x);
  // By hand: the batch norm sees z = qdq_in(x)·Wqᵀ + b (no quantizer between the linear and the
  // batch norm it is fused with); batches of 4 rows, three of them.
  const tensor xq = sim.activation_quantizer("input").qdq(data_x);
  const tensor wq = sim.quantized_parameter("0.weight");
  const tensor bq = sim.quantized_parameter("0.bias");
  std::vector<double> want_mean(2, 0.0), want_var(2, 0.0);
  for (std::size_t b = 0; b < 3; ++b)
    for (std::size_t o = 0; o < 2; ++o) {
      double z[4], mean = 0.0;
      for (std::size_t r = 0; r < 4; ++r) {
        const std::size_t n = b * 4 + r;
        float acc = 0.0f;
        for (std::size_t i = 0; i < 3; ++i) acc += xq(n, i) * wq(o, i);
        z[r] = double(acc + bq(o));
        mean += z[r] / 4.0;
      }
      double ss = 0.0;
      for (double v : z) ss += (v - mean) * (v - mean);
      want_mean[o] += mean / 3.0;
      want_var[o] += ss / 3.0 / 3.0;  // unbiased: / (4 − 1), then the average of three
    }
  auto& bn = sim.model().get<1>();
  const tensor old_mean = bn.running_mean(), old_var = bn.running_var();
  auto handle = qat::reestimate_bn_stats(sim, ds, 3, 4);
  CHECK(handle.layers() == std::vector<std::string>{"1"});
  for (std::size_t o = 0; o < 2; ++o) {
    CHECK(bn.running_mean()(o) == doctest::Approx(want_mean[o]).epsilon(1e-5));
    CHECK(bn.running_var()(o) == doctest::Approx(want_var[o]).epsilon(1e-5));
  }
  CHECK(bn.momentum() == doctest::Approx(0.1f));  // put back
  CHECK(!sim.training());
  CHECK(!bn.training());
  handle.restore();
  CHECK(bn.running_mean() == old_mean);
  CHECK(bn.running_var() == old_var);

  // A folded simulation has no batch norm to re-estimate; no data is an error too.
  quantsim<bn_model, presets::w8a8> folded(make_bn_model(), calib);
  CHECK_THROWS_WITH_AS(qat::reestimate_bn_stats(folded, ds), doctest::Contains("batch_norm_mode::keep"),
                       config_error);
  CHECK_THROWS_AS(qat::reestimate_bn_stats(sim, data::dataset()), data_error);
}

TEST_CASE("QAT with batch norms live: training uses batch statistics and the gradients reach γ and β") {
  const tensor calib = normal_tensor({16, 3}, 1, 0.5f);
  quantsim<bn_model, presets::w8a8> sim(make_bn_model(), calib, presets::w8a8::default_config(),
                                        {}, {}, {.batch_norms = batch_norm_mode::keep});
  calibrate_on(sim, calib);
  sim.set_qat_mode(qat_mode::range_learning);
  sim.set_training(true);
  sim.zero_grad();
  CHECK(sim.model().get<1>().training());
  const tensor y = sim.forward(calib);
  tensor dy = normal_tensor({16, 2}, 4);
  (void)sim.backward(dy);
  double g = 0.0;
  for (float v : sim.model().get<1>().weight_grad()) g += std::fabs(v);
  CHECK(g > 0.0);
  // Batch statistics moved the running mean off its start (0.25 for channel 0).
  CHECK(sim.model().get<1>().running_mean()(0) != doctest::Approx(0.25f));
  sim.set_training(false);
  CHECK(!sim.model().get<1>().training());
  CHECK(y.shape() == dy.shape());
}

namespace {
using linear_bn = nn::sequential<nn::linear, nn::batch_norm>;
linear_bn make_linear_bn() {
  linear_bn m{nn::linear(3, 2), nn::batch_norm(2)};
  nn::init_parameters(m, 7);
  auto& bn = m.get<1>();
  bn.weight()(0) = 1.5f;
  bn.weight()(1) = -0.5f;  // a negative scale: the grid mirrors
  bn.bias()(0) = 0.2f;
  bn.running_mean()(1) = -0.3f;
  bn.running_var()(0) = 2.0f;
  return m;
}
}  // namespace

TEST_CASE("fold_all_batch_norms_to_scale: the folded sim computes what the live one did, exported as usual") {
  const tensor calib = normal_tensor({32, 3}, 1, 1.0f);
  auto make = [&] {
    quantsim<linear_bn, presets::w8a8> sim(make_linear_bn(), calib, presets::w8a8::default_config(),
                                           {}, {}, {.batch_norms = batch_norm_mode::keep});
    calibrate_on(sim, calib);
    return sim;
  };
  auto live = make();
  auto folded = make();
  const encoding w_before = folded.param_quantizer("0.weight").encodings()[0];
  const auto bn_output = folded.activation_quantizer("1").encodings();
  const auto pairs = qat::fold_all_batch_norms_to_scale(folded);
  REQUIRE(pairs.size() == 1);
  CHECK(pairs[0].layer == "0");
  CHECK(pairs[0].batch_norm == "1");
  CHECK(folded.folded_batch_norms().size() == 1);
  CHECK(!folded.has_quantizer("1"));          // the batch norm's output is the linear's now
  CHECK(folded.activation_quantizer("0").encodings() == bn_output);
  CHECK(folded.activation_quantizer("0").enabled());
  const auto& wq = folded.param_quantizer("0.weight");
  CHECK(wq.per_channel());
  CHECK(wq.frozen());
  const auto& bn = live.model().get<1>();
  for (std::size_t o = 0; o < 2; ++o) {
    const double s = double(bn.weight()(o)) / std::sqrt(double(bn.running_var()(o)) + double(bn.epsilon()));
    CHECK(wq.encodings()[o].scale == doctest::Approx(w_before.scale * std::fabs(s)).epsilon(1e-12));
  }
  // The same function: live BN after the quantized linear vs the folded, rescaled grid — equal
  // up to float rounding, which may move a value across one output step.
  const tensor x = normal_tensor({64, 3}, 2, 1.0f);
  const tensor a = live.forward(x), b = folded.forward(x);
  const double step = bn_output[0].scale;
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a.data()[i] - b.data()[i])));
  CHECK(worst <= step * 1.0001);
  // It exports like a folded simulation: the file has the linear's output, no batch norm.
  const auto f = folded.encodings();
  CHECK(f.activation_encodings.count("0") == 1);
  CHECK(f.activation_encodings.count("1") == 0);
  CHECK(f.param_encodings.at("0.weight").size() == 2);
}

// AIMET's QuantSim disables a foldable batch norm's parameter quantizers (γ and β fold into the
// layer's weights and bias, which are quantized on the target). A quantized γ left on would be
// a per-channel gain that range learning trains and the fold forgets: on the Fashion model that
// cost 0.5 points after W4A4 QAT (docs/qat.md). Where the user turns them on, the fold uses the
// quantized values; the expected grid is worked by hand on a 2-bit γ grid of step 1.
TEST_CASE("fold_all_batch_norms_to_scale: a foldable batch norm's parameters are not quantized, and fold quantized when turned on") {
  const tensor calib = normal_tensor({32, 3}, 1, 1.0f);
  auto make = [&] {
    quantsim<linear_bn, presets::w8a8> sim(make_linear_bn(), calib, presets::w8a8::default_config(),
                                           {}, {}, {.batch_norms = batch_norm_mode::keep});
    sim.model().get<1>().weight()(1) = -0.7f;
    calibrate_on(sim, calib);
    return sim;
  };
  auto plain = make();
  CHECK_FALSE(plain.param_quantizer("1.weight").enabled());
  CHECK_FALSE(plain.param_quantizer("1.bias").enabled());
  CHECK(plain.param_quantizer("0.weight").enabled());
  // A batch norm with no layer to fold into keeps what the config says (weights quantized).
  using bn_first = nn::sequential<nn::batch_norm, nn::linear>;
  quantsim<bn_first, presets::w8a8> lone(bn_first{nn::batch_norm(3), nn::linear(3, 2)}, calib,
                                         presets::w8a8::default_config(), {}, {},
                                         {.batch_norms = batch_norm_mode::keep});
  CHECK(lone.param_quantizer("0.weight").enabled());

  auto quantize_gamma = [](auto& sim) {
    auto& gq = sim.param_quantizer("1.weight");
    gq.set_enabled(true);
    gq.set_channel_axis(std::nullopt);
    gq.set_bitwidth(2);
    gq.set_encoding(encoding_from_range(-1.0, 2.0, 2));  // the grid {-1, 0, 1, 2}
    gq.freeze();
  };
  auto live = make();
  auto folded = make();
  quantize_gamma(live);
  quantize_gamma(folded);
  const encoding w_before = folded.param_quantizer("0.weight").encodings()[0];
  const auto& bn = live.model().get<1>();
  (void)qat::fold_all_batch_norms_to_scale(folded);
  const double q_gamma[2] = {2.0, -1.0};  // 1.5 and -0.7 on that grid (1.5 rounds half to even)
  const auto& wq = folded.param_quantizer("0.weight");
  for (std::size_t o = 0; o < 2; ++o) {
    const double sigma = std::sqrt(double(bn.running_var()(o)) + double(bn.epsilon()));
    CHECK(wq.encodings()[o].scale == doctest::Approx(w_before.scale * std::fabs(q_gamma[o]) / sigma).epsilon(1e-12));
    CHECK(double(folded.model().get<1>().weight()(o)) == q_gamma[o]);
  }
  const tensor x = normal_tensor({64, 3}, 2, 1.0f);
  const tensor a = live.forward(x), b = folded.forward(x);
  const double step = folded.activation_quantizer("0").encodings()[0].scale;
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, double(std::fabs(a.data()[i] - b.data()[i])));
  CHECK(worst <= step * 1.0001);
}

TEST_CASE("fold_all_batch_norms_to_scale refuses a batch norm with no layer before it") {
  using bn_first = nn::sequential<nn::batch_norm, nn::linear>;
  const tensor calib = normal_tensor({8, 3}, 1, 1.0f);
  quantsim<bn_first, presets::w8a8> sim(bn_first{nn::batch_norm(3), nn::linear(3, 2)}, calib,
                                        presets::w8a8::default_config(), {}, {},
                                        {.batch_norms = batch_norm_mode::keep});
  calibrate_on(sim, calib);
  const tensor before = sim.forward(calib);
  CHECK_THROWS_WITH_AS(qat::fold_all_batch_norms_to_scale(sim), doctest::Contains("cannot fold"),
                       config_error);
  CHECK(sim.forward(calib) == before);
  CHECK(sim.has_quantizer("0"));
}
}  // namespace unit_qat
