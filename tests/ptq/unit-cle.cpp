// Cross-layer equalization against independent truths: scaling commutes with ReLU (the
// equalized model computes the same function), the per-channel ranges after scaling equal
// the closed form worked by hand, high-bias absorption moves exactly c = max(0, β − 3|γ|),
// zero-range channels stay put, skip connections break chains, and bad models are refused.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

#include <qkit/nn/nn.hpp>
#include <qkit/ptq/cross_layer_equalization.hpp>

namespace unit_cle {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using namespace qkit::nn;

namespace {

tensor random_tensor(shape_type shape, std::uint32_t seed, float mean = 0.0f, float sd = 1.0f) {
  tensor x = tensor::from_shape(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(mean, sd);
  for (auto& v : x) v = d(rng);
  return x;
}

// Random weights with per-channel scales spread over two orders of magnitude (what makes
// per-tensor quantization fail) and non-trivial batch-norm statistics.
template <class Model>
void randomize(Model& m, std::uint32_t seed) {
  init_parameters(m, seed);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> u(0.5f, 1.5f), c(-0.3f, 0.3f), g(0.2f, 3.0f),
      spread(-2.0f, 2.0f);
  visit_layers(m, [&](const std::string&, auto& l) {
    using L = std::remove_cvref_t<decltype(l)>;
    if constexpr (std::is_same_v<L, batch_norm>) {
      for (auto& x : l.running_var()) x = u(rng);
      for (auto& x : l.running_mean()) x = c(rng);
      for (auto& x : l.weight()) x = g(rng);
      for (auto& x : l.bias()) x = c(rng);
    }
    if constexpr (weighted<L>) {
      std::vector<float> s(l.output_channels());
      for (auto& x : s) x = std::pow(10.0f, spread(rng));
      l.scale_output_channels(s);
    }
  });
}

auto relu_model() {
  auto m = sequential(
      conv2d(3, 8, 3, {.padding = 1, .bias = false}), named("bn0", batch_norm(8)), relu(),
      conv2d(8, 8, 3, {.padding = 1, .groups = 8, .bias = false}), named("bn1", batch_norm(8)),
      relu(), conv2d(8, 6, 1), relu(),
      residual(sequential(conv2d(6, 12, 1), relu(), conv2d(12, 6, 1))), global_avg_pool(),
      flatten(), linear(6, 4));
  randomize(m, 11);
  return m;
}

double max_rel_diff(const tensor& a, const tensor& b) {
  double scale = 0.0, diff = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::fabs(double(a.data()[i])));
    diff = std::max(diff, std::fabs(double(a.data()[i]) - double(b.data()[i])));
  }
  return diff / std::max(scale, 1e-30);
}

}  // namespace

TEST_CASE("equalize: an all-ReLU model computes the same function (scaling commutes with ReLU)") {
  auto m = relu_model();
  const tensor x = random_tensor({4, 3, 9, 9}, 5);
  set_training(m, false);
  const tensor before = forward(m, x);
  const auto report = ptq::equalize(m, x, {.high_bias_absorption = false});
  const tensor after = forward(m, x);
  CHECK(max_rel_diff(before, after) < 1e-4);

  // The conv → depthwise → conv triplet and the pair inside the residual body, found across
  // the sequential/residual boundary; the body's last conv feeds the add (no pair past it).
  REQUIRE(report.scaled.size() == 2);
  CHECK(report.scaled[0].layers == std::vector<std::string>{"0", "3", "6"});
  CHECK(report.scaled[1].layers == std::vector<std::string>{"8.0", "8.2"});
  CHECK(report.folded.size() == 2);
  CHECK(report.summary().find("2 group(s) scaled") != std::string::npos);

  // Every conv now has equal per-channel ranges across each link.
  const auto flow = describe_dataflow(m);
  const auto* a = flow.find("0");
  const auto* dw = flow.find("3");
  const auto* c = flow.find("6");
  const auto r1 = a->weighted->output_channel_absmax();
  const auto r2 = dw->weighted->output_channel_absmax();
  const auto r3 = c->weighted->input_channel_absmax();
  for (std::size_t i = 0; i < r1.size(); ++i) {
    CHECK(r1[i] == doctest::Approx(r2[i]).epsilon(1e-4));
    CHECK(r2[i] == doctest::Approx(r3[i]).epsilon(1e-4));
  }
}

TEST_CASE("equalize: pair ranges follow s = sqrt(r1 / r2), worked by hand on two channels") {
  // A: 1 -> 2 channels (1x1), output ranges r1 = (4, 0.25); B: 2 -> 1, input ranges r2 = (1, 8).
  auto m = sequential(conv2d(1, 2, 1), relu(), conv2d(2, 1, 1));
  auto& A = m.get<0>();
  auto& B = m.get<2>();
  A.weight()(0, 0, 0, 0) = -4.0f;  // the range is |W|
  A.weight()(1, 0, 0, 0) = 0.25f;
  A.bias()(0) = 1.0f;
  A.bias()(1) = 2.0f;
  B.weight()(0, 0, 0, 0) = 1.0f;
  B.weight()(0, 1, 0, 0) = -8.0f;
  const auto r = ptq::equalize(m, random_tensor({1, 1, 2, 2}, 1));
  // s = (sqrt(4/1), sqrt(0.25/8)) = (2, 0.1767767); r1/s = r2·s = (2, 1.4142136).
  CHECK(A.weight()(0, 0, 0, 0) == doctest::Approx(-2.0f));
  CHECK(A.weight()(1, 0, 0, 0) == doctest::Approx(1.4142136f));
  CHECK(B.weight()(0, 0, 0, 0) == doctest::Approx(2.0f));
  CHECK(B.weight()(0, 1, 0, 0) == doctest::Approx(-1.4142136f));
  CHECK(A.bias()(0) == doctest::Approx(0.5f));        // b1 / s
  CHECK(A.bias()(1) == doctest::Approx(11.3137085f)); // 2 / 0.1767767
  REQUIRE(r.scaled.size() == 1);
  CHECK(r.scaled[0].scale_range[0].first == doctest::Approx(0.1767767f));
  CHECK(r.scaled[0].scale_range[0].second == doctest::Approx(2.0f));
  CHECK(r.absorbed.empty());  // no batch norm: nothing to absorb
}

TEST_CASE("equalize: triplet scales S12 = r1/cbrt(r1 r2 r3), S23 = cbrt(r1 r2 r3)/r3") {
  // A real depthwise conv over two channels between two 1x1 convs. Channel 0: r = (8, 1, 1),
  // cbrt(8) = 2, so S12 = 4, S23 = 2 and every range becomes 2; channel 1: r = (1, 27, 1),
  // every range becomes cbrt(27) = 3.
  auto m2 = sequential(conv2d(1, 2, 1), relu(), conv2d(2, 2, 3, {.padding = 1, .groups = 2}),
                       relu(), conv2d(2, 1, 1));
  auto& A = m2.get<0>();
  auto& D = m2.get<2>();
  auto& C = m2.get<4>();
  A.weight().fill(0.0f);
  D.weight().fill(0.0f);
  C.weight().fill(0.0f);
  A.weight()(0, 0, 0, 0) = 8.0f;   // r1 = (8, 1)
  A.weight()(1, 0, 0, 0) = 1.0f;
  D.weight()(0, 0, 1, 1) = 1.0f;   // r2 = (1, 27)
  D.weight()(1, 0, 0, 2) = -27.0f;
  C.weight()(0, 0, 0, 0) = 1.0f;   // r3 = (1, 1)
  C.weight()(0, 1, 0, 0) = 1.0f;
  const auto r = ptq::equalize(m2, random_tensor({1, 1, 4, 4}, 2));
  REQUIRE(r.scaled.size() == 1);
  CHECK(r.scaled[0].layers.size() == 3);
  // channel 0: cbrt(8) = 2 -> all 2; channel 1: cbrt(27) = 3 -> all 3.
  CHECK(A.weight()(0, 0, 0, 0) == doctest::Approx(2.0f));
  CHECK(A.weight()(1, 0, 0, 0) == doctest::Approx(3.0f));
  CHECK(D.weight()(0, 0, 1, 1) == doctest::Approx(2.0f));
  CHECK(D.weight()(1, 0, 0, 2) == doctest::Approx(-3.0f));
  CHECK(C.weight()(0, 0, 0, 0) == doctest::Approx(2.0f));
  CHECK(C.weight()(0, 1, 0, 0) == doctest::Approx(3.0f));
}

TEST_CASE("equalize: high-bias absorption moves c = max(0, beta - 3|gamma|) into the next bias") {
  // Ranges already equal (s = 1), so only absorption changes the biases. BN: mean 0, var
  // chosen so that sqrt(var + eps) = 1, gamma = 1, beta = (5, 1) -> c = (2, 0).
  auto make = [](auto act) {
    auto m = sequential(conv2d(1, 2, 1, {.bias = false}), batch_norm(2), act, conv2d(2, 1, 1));
    auto& A = m.template get<0>();
    auto& bn = m.template get<1>();
    auto& B = m.template get<3>();
    A.weight().fill(1.0f);
    bn.running_var().fill(1.0f - bn.epsilon());
    bn.bias()(0) = 5.0f;
    bn.bias()(1) = 1.0f;
    B.weight()(0, 0, 0, 0) = 1.0f;
    B.weight()(0, 1, 0, 0) = -1.0f;
    B.bias()(0) = 0.5f;
    return m;
  };
  SUBCASE("after a ReLU, a 3x3 kernel, negative gamma") {
    // BN γ = (0.5, −1), β = (5, 4): c = (5 − 1.5, 4 − 3) = (3.5, 1) (|γ|, not γ). B is 3x3 with
    // per-input ranges (0.5, 1) = A's folded ranges, so s = 1; Σ_hw B[0,0] = 4.5,
    // Σ_hw B[0,1] = 0.75, so b2 gains 4.5·3.5 + 0.75·1 = 16.5.
    auto m = sequential(conv2d(1, 2, 1, {.bias = false}), batch_norm(2), relu{}, conv2d(2, 1, 3));
    auto& bn = m.get<1>();
    m.get<0>().weight().fill(1.0f);
    bn.running_var().fill(1.0f - bn.epsilon());
    bn.weight()(0) = 0.5f;
    bn.weight()(1) = -1.0f;
    bn.bias()(0) = 5.0f;
    bn.bias()(1) = 4.0f;
    auto& B = m.get<3>();
    const float k1[9] = {1.0f, -1.0f, 0.5f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.25f};
    for (std::size_t i = 0; i < 9; ++i) {
      B.weight()(0, 0, i / 3, i % 3) = 0.5f;
      B.weight()(0, 1, i / 3, i % 3) = k1[i];
    }
    B.bias()(0) = 0.5f;
    const tensor x = random_tensor({2, 1, 5, 5}, 3, 0.0f, 0.5f);  // the ReLU stays active
    set_training(m, false);
    const tensor before = forward(m, x);
    const auto r = ptq::equalize(m, x);
    REQUIRE(r.absorbed.size() == 1);
    CHECK(r.absorbed[0].channels == 2);
    CHECK(r.absorbed[0].max_absorbed == doctest::Approx(3.5f));
    CHECK(m.get<0>().bias()(0) == doctest::Approx(1.5f));  // 5 − 3.5
    CHECK(m.get<0>().bias()(1) == doctest::Approx(3.0f));  // 4 − 1
    CHECK(m.get<3>().bias()(0) == doctest::Approx(0.5f + 16.5f));
    CHECK(m.get<1>().bias()(0) == doctest::Approx(1.5f));  // the recorded output mean moved too
    CHECK(max_rel_diff(before, forward(m, x)) < 1e-5);
  }
  SUBCASE("with no activation between, the whole beta moves") {
    auto m = sequential(conv2d(1, 2, 1, {.bias = false}), batch_norm(2), conv2d(2, 1, 1));
    auto& bn = m.get<1>();
    m.get<0>().weight().fill(1.0f);
    bn.running_var().fill(1.0f - bn.epsilon());
    bn.bias()(0) = 5.0f;
    bn.bias()(1) = 1.0f;
    m.get<2>().weight()(0, 0, 0, 0) = 1.0f;
    m.get<2>().weight()(0, 1, 0, 0) = -1.0f;
    const tensor x = random_tensor({2, 1, 3, 3}, 4);
    set_training(m, false);
    const tensor before = forward(m, x);
    (void)ptq::equalize(m, x);
    CHECK(m.get<0>().bias()(0) == doctest::Approx(0.0f).epsilon(1e-6));
    CHECK(m.get<2>().bias()(0) == doctest::Approx(5.0f - 1.0f));
    CHECK(max_rel_diff(before, forward(m, x)) < 1e-5);
  }
}

TEST_CASE("equalize: zero-range channels keep s = 1 and produce no NaN") {
  auto m = sequential(conv2d(1, 3, 1), relu(), conv2d(3, 2, 1));
  auto& A = m.get<0>();
  auto& B = m.get<2>();
  A.weight().fill(0.0f);
  A.weight()(0, 0, 0, 0) = 2.0f;
  A.weight()(2, 0, 0, 0) = 0.5f;  // channel 1 is all zero
  B.weight().fill(1.0f);
  B.weight()(0, 2, 0, 0) = 0.0f;
  B.weight()(1, 2, 0, 0) = 0.0f;  // input channel 2 is all zero
  const auto r = ptq::equalize(m, random_tensor({1, 1, 2, 2}, 3));
  for (float v : A.weight()) CHECK(std::isfinite(v));
  for (float v : B.weight()) CHECK(std::isfinite(v));
  CHECK(A.weight()(0, 0, 0, 0) == doctest::Approx(std::sqrt(2.0f)));  // s = sqrt(2/1)
  CHECK(A.weight()(1, 0, 0, 0) == 0.0f);
  CHECK(A.weight()(2, 0, 0, 0) == 0.5f);  // r2 = 0: s = 1
  CHECK(B.weight()(0, 1, 0, 0) == 1.0f);  // r1 = 0: s = 1
  REQUIRE(r.scaled.size() == 1);
}

TEST_CASE("equalize: a tensor with a second reader breaks the chain; no pairs is a report") {
  // conv0's output feeds the residual body and its add: conv0 -> conv(body) is not a pair.
  auto m = sequential(conv2d(2, 4, 1), relu(), residual(sequential(conv2d(4, 4, 1))),
                      global_avg_pool(), flatten(), linear(4, 2));
  randomize(m, 3);
  const auto r = ptq::equalize(m, random_tensor({1, 2, 3, 3}, 1));
  CHECK(r.scaled.empty());
  CHECK(r.summary().find("no equalizable conv pairs found") != std::string::npos);
}

TEST_CASE("equalize: ReLU6 becomes ReLU by default and is kept when asked") {
  auto make = [] {
    auto m = sequential(conv2d(1, 4, 3, {.padding = 1}), relu6(), conv2d(4, 2, 1));
    randomize(m, 9);
    return m;
  };
  const tensor x = random_tensor({1, 1, 5, 5}, 8);
  auto m = make();
  const auto r = ptq::equalize(m, x);
  CHECK(r.relu6_replaced == std::vector<std::string>{"1"});
  CHECK(m.get<1>().max_value() == std::numeric_limits<float>::infinity());
  CHECK(kind_of(m.get<1>()) == op_kind::relu);

  auto k = make();
  const auto rk = ptq::equalize(k, x, {.relu6 = ptq::relu6_policy::keep});
  CHECK(rk.relu6_replaced.empty());
  CHECK(k.get<1>().max_value() == 6.0f);
  CHECK(rk.scaled.size() == 1);  // still scaled across the ReLU6 when kept
}

TEST_CASE("equalize: a depthwise conv with a channel multiplier is an ordinary grouped conv") {
  // groups = 8 over 8 inputs and 16 outputs: output 2g and 2g+1 read input g. No triplet (its
  // channel counts differ); two pairs, and the function is kept.
  auto m = sequential(conv2d(3, 8, 1), relu(), conv2d(8, 16, 3, {.padding = 1, .groups = 8}),
                      relu(), conv2d(16, 4, 1));
  randomize(m, 21);
  CHECK(kind_of(m.get<2>()) == op_kind::conv);
  const tensor x = random_tensor({2, 3, 6, 6}, 22);
  set_training(m, false);
  const tensor before = forward(m, x);
  const auto r = ptq::equalize(m, x);
  REQUIRE(r.scaled.size() == 2);
  CHECK(r.scaled[0].layers == std::vector<std::string>{"0", "2"});
  CHECK(r.scaled[1].layers == std::vector<std::string>{"2", "4"});
  CHECK(max_rel_diff(before, forward(m, x)) < 1e-4);
  const auto r2 = m.get<2>().output_channel_absmax();
  const auto r3 = m.get<4>().input_channel_absmax();
  for (std::size_t i = 0; i < r2.size(); ++i) CHECK(r2[i] == doctest::Approx(r3[i]).epsilon(1e-4));
}

TEST_CASE("equalize: a batch norm it cannot fold is an error naming it, model unchanged") {
  auto m = sequential(batch_norm(1), conv2d(1, 2, 1), relu(), conv2d(2, 2, 1));
  randomize(m, 4);
  const tensor x = random_tensor({1, 1, 2, 2}, 5);
  set_training(m, false);
  const tensor before = forward(m, x);
  const tensor w_before = m.get<1>().weight();
  CHECK_THROWS_WITH_AS(ptq::equalize(m, x),
                       doctest::Contains("BatchNormalization '0' cannot be folded"),
                       config_error);
  CHECK(m.get<1>().weight() == w_before);
  CHECK(!m.get<0>().folded());
  CHECK(max_rel_diff(before, forward(m, x)) == 0.0);

  // The model's mode is the caller's too: validation ran on the pass's own copy.
  set_training(m, true);
  CHECK_THROWS_AS(ptq::equalize(m, x), config_error);
  CHECK(m.get<1>().training());
}
}  // namespace unit_cle
