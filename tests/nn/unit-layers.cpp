// Tests for the leaf layers of qkit/nn: the generic finite-difference gradient check for each
// (input and parameter gradients, both modes where they differ), forward values against
// direct computations, attributes, and shape errors that name the layer and both shapes.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>

#include <qkit/nn/nn.hpp>

#include "gradient_check.hpp"

namespace unit_layers {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit::nn;
using qkit::tensor;
using qkit_test::check_gradients;
using qkit_test::random_tensor;

namespace {

template <class L>
void randomize_parameters(L& layer, std::uint32_t seed) {
  std::mt19937 rng(seed);
  layer.for_each_parameter([&](std::string_view name, tensor& v, tensor* g) {
    if (!g) return;
    std::uniform_real_distribution<float> d(-0.8f, 0.8f);
    for (auto& e : v) e = d(rng);
    (void)name;
  });
}

/// Values kept at least `gap` away from zero (and from each other's sign change), so ReLU-like
/// kinks are not crossed by ±eps.
tensor away_from(const qkit::shape_type& shape, std::mt19937& rng, float gap, float scale = 1.0f) {
  tensor t = random_tensor(shape, rng);
  for (auto& v : t) v = (v >= 0 ? gap + v * scale : -gap + v * scale);
  return t;
}

template <class L>
void require_gradients_ok(L& layer, const tensor& x, qkit_test::gradient_check_options o = {}) {
  auto rep = check_gradients(layer, x, o);
  INFO(rep.failure_text);
  CHECK(rep.failures == 0);
  CHECK(rep.checked > 0);
  CHECK(rep.kinks_skipped <= rep.checked / 5);
}

/// A layer whose backward is off by 10%, to show the checker fails on it.
struct wrong_scale : layer_base {
  static constexpr std::string_view op_type = "Mul";
  template <class F> void for_each_parameter(F&&) {}
  template <class H> tensor forward(const tensor& x, H&) { return x * 2.0f; }
  template <class H> tensor backward(const tensor& dy, H&) { return dy * 2.2f; }
};

}  // namespace

TEST_CASE("conv2d: gradients for kernels, strides, asymmetric pads, dilation and groups") {
  std::mt19937 rng(1);
  struct config {
    std::size_t in, out, kh, kw;
    qkit::conv2d_params p;
    bool bias;
  };
  const config configs[] = {
      {3, 4, 3, 3, {1, 1, 1, 1, 1, 1, 1, 1, 1}, true},
      {2, 3, 3, 2, {2, 1, 0, 1, 2, 0, 1, 1, 1}, false},  // asymmetric pads, strides
      {4, 4, 3, 3, {1, 1, 2, 2, 2, 2, 2, 2, 4}, true},   // depthwise, dilated
      {4, 6, 1, 1, {1, 1, 0, 0, 0, 0, 1, 1, 2}, true},   // grouped pointwise
  };
  for (const auto& c : configs) {
    conv2d layer(c.in, c.out, c.kh, c.kw, c.p, c.bias);
    randomize_parameters(layer, 5);
    const tensor x = random_tensor({2, c.in, 6, 5}, rng);
    require_gradients_ok(layer, x);
  }
}

TEST_CASE("conv2d: forward equals the direct sum, attributes, shape errors") {
  conv2d c(2, 3, 3, {.stride = 2, .padding = 1, .bias = true});
  c.set_name("features.0");
  CHECK(c.kernel_shape() == std::array<std::size_t, 2>{3, 3});
  CHECK(c.strides() == std::array<std::size_t, 2>{2, 2});
  CHECK(c.pads() == std::array<std::size_t, 4>{1, 1, 1, 1});
  CHECK(c.groups() == 1);
  CHECK(c.has_bias());
  CHECK(c.weight().shape() == qkit::shape_type{3, 2, 3, 3});
  std::mt19937 rng(2);
  c.weight() = random_tensor({3, 2, 3, 3}, rng);
  c.bias() = random_tensor({3}, rng);
  const tensor x = random_tensor({1, 2, 5, 5}, rng);
  no_hooks h;
  const tensor y = c.forward(x, h);
  REQUIRE(y.shape() == qkit::shape_type{1, 3, 3, 3});
  // Output (o=1, oh=1, ow=2) covers input rows 1..3, cols 3..5 (col 5 is padding).
  double want = c.bias()(1);
  for (int ic = 0; ic < 2; ++ic)
    for (int kh = 0; kh < 3; ++kh)
      for (int kw = 0; kw < 3; ++kw) {
        const int ih = 1 * 2 + kh - 1, iw = 2 * 2 + kw - 1;
        if (iw < 5) want += double(x(0, ic, ih, iw)) * c.weight()(1, ic, kh, kw);
      }
  CHECK(y(0, 1, 1, 2) == doctest::Approx(want).epsilon(1e-5));

  const tensor bad = random_tensor({1, 3, 5, 5}, rng);
  try {
    (void)c.forward(bad, h);
    FAIL("expected a shape error");
  } catch (const qkit::shape_error& e) {
    const std::string what = e.what();
    CHECK(what.find("Conv 'features.0'") != std::string::npos);
    CHECK(what.find("[1, 3, 5, 5]") != std::string::npos);
    CHECK(what.find("[*, 2, *, *]") != std::string::npos);
  }
  conv2d no_bias(2, 2, 1, {.bias = false});
  CHECK_FALSE(no_bias.has_bias());
  no_bias.ensure_bias();
  CHECK(no_bias.bias().shape() == qkit::shape_type{2});
}

TEST_CASE("linear: gradients, forward, shape error") {
  std::mt19937 rng(3);
  linear l(5, 4);
  randomize_parameters(l, 6);
  require_gradients_ok(l, random_tensor({3, 5}, rng));
  linear nb(5, 2, false);
  randomize_parameters(nb, 7);
  require_gradients_ok(nb, random_tensor({2, 5}, rng));

  no_hooks h;
  const tensor x = random_tensor({2, 5}, rng);
  const tensor y = l.forward(x, h);
  double want = l.bias()(3);
  for (int i = 0; i < 5; ++i) want += double(x(1, i)) * l.weight()(3, i);
  CHECK(y(1, 3) == doctest::Approx(want).epsilon(1e-5));
  l.set_name("classifier");
  CHECK_THROWS_WITH_AS((void)l.forward(random_tensor({2, 6}, rng), h),
                       doctest::Contains("Gemm 'classifier': input has shape [2, 6], expected [*, 5]"),
                       qkit::shape_error);
}

TEST_CASE("batch_norm: gradients in training and inference mode; running statistics") {
  std::mt19937 rng(4);
  batch_norm bn(3);
  randomize_parameters(bn, 8);
  const tensor x = random_tensor({4, 3, 3, 2}, rng, -2.0f, 3.0f);
  bn.set_training(true);
  {
    qkit_test::gradient_check_options o;
    o.eps = 5e-3f;
    require_gradients_ok(bn, x, o);
  }
  bn.set_training(false);
  bn.running_mean() = random_tensor({3}, rng);
  bn.running_var() = random_tensor({3}, rng, 0.5f, 2.0f);
  require_gradients_ok(bn, x);
  // [N, C] inputs too (batch norm after a linear layer).
  batch_norm bn2(5);
  bn2.set_training(true);
  randomize_parameters(bn2, 9);
  require_gradients_ok(bn2, random_tensor({6, 5}, rng));

  SUBCASE("training normalizes with batch statistics and updates running ones") {
    batch_norm b(2, 1e-5f, 0.1f);
    b.set_training(true);
    tensor in = random_tensor({8, 2, 4, 4}, rng, 1.0f, 5.0f);
    no_hooks h;
    const tensor y = b.forward(in, h);
    for (std::size_t c = 0; c < 2; ++c) {
      double s = 0, ss = 0, xs = 0, xss = 0;
      const double M = 8 * 16;
      for (std::size_t n = 0; n < 8; ++n)
        for (std::size_t i = 0; i < 16; ++i) {
          const double v = y(n, c, i / 4, i % 4), xv = in(n, c, i / 4, i % 4);
          s += v; ss += v * v; xs += xv; xss += xv * xv;
        }
      CHECK(s / M == doctest::Approx(0.0).epsilon(1e-5).scale(1));
      CHECK(ss / M == doctest::Approx(1.0).epsilon(1e-3));
      const double mean = xs / M, var_unbiased = (xss - M * mean * mean) / (M - 1);
      CHECK(b.running_mean()(c) == doctest::Approx(0.1 * mean).epsilon(1e-4));
      CHECK(b.running_var()(c) == doctest::Approx(0.9 + 0.1 * var_unbiased).epsilon(1e-4));
    }
  }
  SUBCASE("a channel mismatch names the layer and both shapes") {
    batch_norm b(4);
    b.set_name("features.1");
    no_hooks h;
    CHECK_THROWS_WITH_AS((void)b.forward(random_tensor({2, 3, 2, 2}, rng), h),
                         doctest::Contains("BatchNormalization 'features.1': input has shape [2, 3, 2, 2], expected [*, 4, ...]"),
                         qkit::shape_error);
  }
}

TEST_CASE("relu, relu6 and clip: gradients away from the kinks, values at them") {
  std::mt19937 rng(5);
  relu r;
  require_gradients_ok(r, away_from({2, 3, 4, 4}, rng, 0.05f));
  clip c(-0.5f, 0.75f);
  tensor x = away_from({3, 20}, rng, 0.05f, 1.5f);
  for (auto& v : x) if (std::abs(v - 0.75f) < 0.03f) v += 0.1f;
  require_gradients_ok(c, x);
  relu6 r6;
  CHECK(r6.min_value() == 0.0f);
  CHECK(r6.max_value() == 6.0f);
  CHECK(relu6::op_type == "Clip");
  no_hooks h;
  tensor v = {-1.0f, 0.0f, 3.0f, 6.0f, 9.0f};
  CHECK(r6.forward(v, h) == tensor{0.0f, 0.0f, 3.0f, 6.0f, 6.0f});
  CHECK(r6.backward(tensor{1, 1, 1, 1, 1}, h) == tensor{0, 0, 1, 0, 0});
  CHECK(r.forward(v, h) == tensor{0.0f, 0.0f, 3.0f, 6.0f, 9.0f});
  CHECK_THROWS_AS(clip(1.0f, 0.0f), qkit::config_error);
}

TEST_CASE("pooling layers: gradients and attributes") {
  std::mt19937 rng(6);
  // Distinct values: no max-pool ties.
  tensor x = random_tensor({2, 2, 5, 5}, rng);
  {
    max_pool mp(2, 2, 0, true);
    CHECK(mp.ceil_mode());
    require_gradients_ok(mp, x);
    max_pool mp3(3, 1, 1);
    CHECK(mp3.pads() == std::array<std::size_t, 4>{1, 1, 1, 1});
    require_gradients_ok(mp3, x);
  }
  for (bool include_pad : {false, true}) {
    avg_pool ap(3, 2, 1, include_pad);
    CHECK(ap.count_include_pad() == include_pad);
    require_gradients_ok(ap, x);
  }
  qkit::pool2d_params asym;
  asym.kernel_h = 2; asym.kernel_w = 3; asym.stride_h = 1; asym.stride_w = 2;
  asym.pad_top = 1; asym.pad_right = 2;
  avg_pool ap(asym);
  require_gradients_ok(ap, x);
  global_avg_pool g;
  require_gradients_ok(g, x);
  no_hooks h;
  CHECK(g.forward(x, h).shape() == qkit::shape_type{2, 2, 1, 1});
}

TEST_CASE("flatten and add") {
  std::mt19937 rng(7);
  flatten f;
  const tensor x = random_tensor({2, 3, 2, 2}, rng);
  require_gradients_ok(f, x);
  no_hooks h;
  CHECK(f.forward(x, h).shape() == qkit::shape_type{2, 12});
  CHECK(f.backward(random_tensor({2, 12}, rng), h).shape() == x.shape());

  add a;
  a.set_name("features.3.add");
  const tensor y = a.forward(x, x, h);
  CHECK(y(1, 2, 1, 0) == 2.0f * x(1, 2, 1, 0));
  CHECK_THROWS_WITH_AS((void)a.forward(x, random_tensor({2, 3, 2, 1}, rng), h),
                       doctest::Contains("Add 'features.3.add': operands have shapes [2, 3, 2, 2] and [2, 3, 2, 1]"),
                       qkit::shape_error);
}

TEST_CASE("softmax cross-entropy: value and gradient") {
  tensor logits = {{1.0f, 2.0f, 3.0f}, {0.5f, 0.5f, -1.0f}};
  std::vector<int> labels{2, 0};
  auto r = softmax_cross_entropy(logits, labels);
  const double l0 = -std::log(std::exp(3.0) / (std::exp(1.0) + std::exp(2.0) + std::exp(3.0)));
  const double l1 = -std::log(std::exp(0.5) / (2 * std::exp(0.5) + std::exp(-1.0)));
  CHECK(r.loss == doctest::Approx((l0 + l1) / 2).epsilon(1e-6));
  CHECK(r.correct == 2);
  // Finite differences of the loss.
  for (std::size_t i = 0; i < 6; ++i) {
    tensor p = logits, m = logits;
    p.data()[i] += 1e-3f;
    m.data()[i] -= 1e-3f;
    const double num = (double(softmax_cross_entropy(p, labels).loss) -
                        double(softmax_cross_entropy(m, labels).loss)) / 2e-3;
    CHECK(r.grad.data()[i] == doctest::Approx(num).epsilon(1e-2).scale(1e-3));
  }
  std::vector<int> bad{3, 0};
  CHECK_THROWS_AS(softmax_cross_entropy(logits, bad), qkit::config_error);
}

TEST_CASE("the gradient checker catches a wrong backward") {
  // A layer whose backward is off by 10%: the checker must report failures.
  wrong_scale w;
  std::mt19937 rng(8);
  auto rep = check_gradients(w, random_tensor({4, 4}, rng));
  CHECK(rep.failures > 0);
}
}  // namespace unit_layers
