// Tests for qkit/tensor/elementwise.hpp and qkit/tensor/pool.hpp: every SIMD kernel equals its
// scalar reference bit for bit at the lengths around the SIMD width; pooling against hand
// computed values and its output-size rules.
#include <doctest/doctest.h>

#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <qkit/tensor/elementwise.hpp>
#include <qkit/tensor/pool.hpp>

namespace unit_kernels {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

std::vector<float> random_vec(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-8.0f, 8.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  // Exact boundary values exercise the clamp's strict comparisons.
  if (n > 2) { v[0] = 0.0f; v[1] = 6.0f; v[2] = -0.0f; }
  return v;
}

// (memcmp of an empty vector's null data() is undefined behaviour, which UBSan reports.)
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

}  // namespace

TEST_CASE("elementwise SIMD kernels equal their scalar references bit for bit") {
  constexpr std::size_t W = qkit::simd<float>::size;
  std::mt19937 rng(3);
  for (std::size_t n : {std::size_t(0), std::size_t(1), W - 1, W, W + 1, 3 * W + 5, std::size_t(100000)}) {
    CAPTURE(n);
    const auto a = random_vec(n, rng), b = random_vec(n, rng);
    std::vector<float> r(n), s(n);

    qkit::add_reference(a.data(), b.data(), r.data(), n);
    qkit::add(a.data(), b.data(), s.data(), n);
    CHECK(same_bits(r, s));

    for (auto [lo, hi] : {std::pair{0.0f, 6.0f}, std::pair{0.0f, std::numeric_limits<float>::infinity()},
                          std::pair{-1.5f, 2.25f}}) {
      qkit::clamp_reference(a.data(), r.data(), n, lo, hi);
      qkit::clamp(a.data(), s.data(), n, lo, hi);
      CHECK(same_bits(r, s));
      qkit::clamp_grad_reference(a.data(), b.data(), r.data(), n, lo, hi);
      qkit::clamp_grad(a.data(), b.data(), s.data(), n, lo, hi);
      CHECK(same_bits(r, s));
    }

    qkit::scale_shift_reference(a.data(), r.data(), n, 0.37f, -1.25f);
    qkit::scale_shift(a.data(), s.data(), n, 0.37f, -1.25f);
    CHECK(same_bits(r, s));
    qkit::scale_shift_row(a.data(), s.data(), n, 0.37f, -1.25f);
    CHECK(same_bits(r, s));

    qkit::axpby_shift_reference(a.data(), b.data(), r.data(), n, 1.1f, -0.3f, 0.7f);
    qkit::axpby_shift_row(a.data(), b.data(), s.data(), n, 1.1f, -0.3f, 0.7f);
    CHECK(same_bits(r, s));

    std::vector<float> r2(n), s2(n);
    qkit::normalize_affine_reference(a.data(), r.data(), r2.data(), n, 0.37f, -1.25f, 1.5f, 0.25f);
    qkit::normalize_affine_row(a.data(), s.data(), s2.data(), n, 0.37f, -1.25f, 1.5f, 0.25f);
    CHECK(same_bits(r, s));
    CHECK(same_bits(r2, s2));
    const auto [rs, rd] = qkit::sum_and_dot_reference(a.data(), b.data(), n);
    const auto [ss, sd] = qkit::sum_and_dot(a.data(), b.data(), n);
    CHECK(same_bits(rs, ss));
    CHECK(same_bits(rd, sd));

    CHECK(same_bits(qkit::sum_reference(a.data(), n), qkit::sum(a.data(), n)));
    CHECK(same_bits(qkit::dot_reference(a.data(), b.data(), n), qkit::dot(a.data(), b.data(), n)));
    CHECK(same_bits(qkit::sum_squared_deviation_reference(a.data(), n, 0.5f),
                    qkit::sum_squared_deviation(a.data(), n, 0.5f)));
  }
}

TEST_CASE("clamp gradient is zero at and beyond the kinks") {
  const std::vector<float> x{-1.0f, 0.0f, 0.5f, 6.0f, 7.0f};
  const std::vector<float> dy{1, 1, 1, 1, 1};
  std::vector<float> dx(5);
  qkit::clamp_grad(x.data(), dy.data(), dx.data(), 5, 0.0f, 6.0f);
  CHECK(dx == std::vector<float>{0, 0, 1, 0, 0});
}

TEST_CASE("max and average pooling against hand-computed values") {
  // One 4x4 plane 0..15.
  std::vector<float> x(16);
  for (int i = 0; i < 16; ++i) x[i] = float(i);
  qkit::pool2d_shape s;
  s.N = 1; s.C = 1; s.H = 4; s.W = 4;
  s.p.kernel_h = s.p.kernel_w = 2;
  s.p.stride_h = s.p.stride_w = 2;
  REQUIRE(s.OH() == 2);
  std::vector<float> y(4);
  std::vector<std::uint32_t> am(4);
  qkit::max_pool2d_forward(s, x.data(), y.data(), am.data());
  CHECK(y == std::vector<float>{5, 7, 13, 15});
  qkit::avg_pool2d_forward(s, x.data(), y.data());
  CHECK(y == std::vector<float>{2.5f, 4.5f, 10.5f, 12.5f});
  std::vector<float> dy{1, 2, 3, 4}, dx(16);
  qkit::max_pool2d_backward(s, dy.data(), am.data(), dx.data());
  CHECK(dx[5] == 1); CHECK(dx[7] == 2); CHECK(dx[13] == 3); CHECK(dx[15] == 4); CHECK(dx[0] == 0);

  SUBCASE("padding: count_include_pad decides the divisor") {
    qkit::pool2d_shape p = s;
    p.p.kernel_h = p.p.kernel_w = 3;
    p.p.stride_h = p.p.stride_w = 1;
    p.p.pad_top = p.p.pad_left = p.p.pad_bottom = p.p.pad_right = 1;
    REQUIRE(p.OH() == 4);
    std::vector<float> out(16);
    qkit::avg_pool2d_forward(p, x.data(), out.data());
    CHECK(out[0] == doctest::Approx((0 + 1 + 4 + 5) / 4.0));
    p.p.count_include_pad = true;
    qkit::avg_pool2d_forward(p, x.data(), out.data());
    CHECK(out[0] == doctest::Approx((0 + 1 + 4 + 5) / 9.0));
  }
  SUBCASE("ceil_mode keeps the last partial window") {
    qkit::pool2d_shape c;
    c.N = 1; c.C = 1; c.H = 5; c.W = 5;
    c.p.kernel_h = c.p.kernel_w = 2;
    c.p.stride_h = c.p.stride_w = 2;
    CHECK(c.OH() == 2);
    c.p.ceil_mode = true;
    CHECK(c.OH() == 3);
    std::vector<float> x5(25), out(9);
    for (int i = 0; i < 25; ++i) x5[i] = float(i);
    qkit::avg_pool2d_forward(c, x5.data(), out.data());
    CHECK(out[8] == 24.0f);  // the 1x1 corner window
    qkit::max_pool2d_forward(c, x5.data(), out.data(), nullptr);
    CHECK(out[2] == 9.0f);
  }
  SUBCASE("bad pads are shape errors") {
    qkit::pool2d_shape b = s;
    b.p.pad_top = 2;
    CHECK_THROWS_AS(b.validate(), qkit::shape_error);
  }
}

TEST_CASE("global average pooling") {
  std::vector<float> x{1, 2, 3, 4, 10, 20, 30, 40};
  std::vector<float> y(2);
  qkit::global_avg_pool_forward(2, 4, x.data(), y.data());
  CHECK(y == std::vector<float>{2.5f, 25.0f});
  std::vector<float> dy{4, 8}, dx(8);
  qkit::global_avg_pool_backward(2, 4, dy.data(), dx.data());
  CHECK(dx == std::vector<float>{1, 1, 1, 1, 2, 2, 2, 2});
}
}  // namespace unit_kernels
