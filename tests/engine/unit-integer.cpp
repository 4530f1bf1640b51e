// Tests for qkit/tensor/integer.hpp: the integer kernels of the target-exact simulation. Each
// fast kernel (the AVX-512 VNNI GEMM where the CPU has it, the xsimd int32 GEMM always, the
// depthwise convolution, SIMD requantization) against its scalar reference on shapes with odd
// tails, and the references themselves against closed forms worked out here.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <qkit/tensor/integer.hpp>

namespace unit_integer {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

using namespace qkit::integer;

struct gemm_case {
  std::size_t M, N, K, ldb_pad;
};

// Extreme values included: int8 −128 and uint8 255 maximise every product (VNNI's quads do
// not saturate, vpmaddubsw's int16 pairs would).
std::vector<std::int8_t> random_s8(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(-128, 127);
  std::vector<std::int8_t> v(n);
  for (auto& x : v) x = static_cast<std::int8_t>(d(rng));
  if (!v.empty()) v[0] = -128;
  return v;
}
std::vector<std::uint8_t> random_u8(std::size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(0, 255);
  std::vector<std::uint8_t> v(n);
  for (auto& x : v) x = static_cast<std::uint8_t>(d(rng));
  if (!v.empty()) v[0] = 255;
  return v;
}

const gemm_case gemm_cases[] = {
    {1, 1, 1, 0},    {3, 5, 7, 1},   {4, 16, 4, 0},  {5, 17, 9, 3},   {16, 784, 9, 0},
    {64, 196, 288, 0}, {7, 33, 130, 5}, {10, 1, 64, 0}, {13, 49, 3, 2},
};

}  // namespace

TEST_CASE("integer GEMM reference: closed forms") {
  // [1 2; −3 4] · [5 6; 7 8] = [19 22; 13 14].
  const std::int8_t a[] = {1, 2, -3, 4};
  const std::uint8_t b[] = {5, 6, 7, 8};
  std::int32_t c[4];
  gemm_s8u8_reference(2, 2, 2, a, b, 2, c, 2);
  CHECK(c[0] == 19);
  CHECK(c[1] == 22);
  CHECK(c[2] == 13);
  CHECK(c[3] == 14);
  // The largest magnitude: K = 1024 products of −128 · 255 = −33,423,360, inside int32.
  std::vector<std::int8_t> wa(1024, -128);
  std::vector<std::uint8_t> wb(1024, 255);
  std::int32_t big = 0;
  gemm_s8u8_reference(1, 1, 1024, wa.data(), wb.data(), 1, &big, 1);
  CHECK(big == -128 * 255 * 1024);
  packed_weights pw(1, 1024, wa.data());
  CHECK(pw.row_sums[0] == -128 * 1024);
  std::int32_t fast = 0;
  gemm_s8u8(pw, 1, wb.data(), 1, &fast, 1);
  CHECK(fast == big);
}

TEST_CASE("integer GEMM: every kernel equals the scalar reference, tails included") {
  std::mt19937 rng(7);
  for (const auto& t : gemm_cases) {
    const std::size_t ldb = t.N + t.ldb_pad, ldc = t.N + 2;
    const auto a = random_s8(t.M * t.K, rng);
    const auto b = random_u8(t.K * ldb, rng);
    std::vector<std::int32_t> ref(t.M * ldc, -7);
    gemm_s8u8_reference(t.M, t.N, t.K, a.data(), b.data(), ldb, ref.data(), ldc);
    const packed_weights w(t.M, t.K, a.data());
    const std::string what = std::to_string(t.M) + "x" + std::to_string(t.N) + "x" + std::to_string(t.K);
    auto check = [&](auto&& kernel, const char* name) {
      std::vector<std::int32_t> c(t.M * ldc, -7);  // the padding columns must stay untouched
      kernel(w, t.N, b.data(), ldb, c.data(), ldc);
      std::size_t bad = 0;
      for (std::size_t i = 0; i < c.size(); ++i) bad += c[i] != ref[i];
      INFO(name << " " << what);
      CHECK(bad == 0);
    };
    check(detail::simd_gemm, "simd-int32");
    check(gemm_s8u8, gemm_s8u8_kernel());
#if QKIT_RUNTIME_VNNI
    if (detail::cpu_has_avx512_vnni()) check(detail::vnni_gemm, "avx512-vnni");
    else MESSAGE("this CPU has no AVX-512 VNNI: the VNNI kernel is not exercised here");
#endif
  }
}

TEST_CASE("integer depthwise convolution equals the reference and a hand-worked case") {
  // One channel, 3×3 input 1..9 with zero point 1 (values 0..8), 3×3 filter of ones, pad 1:
  // the centre sums all nine (36), a corner its four neighbours (0+1+3+4 = 8).
  {
    qkit::conv2d_shape s;
    s.N = 1;
    s.C = 1;
    s.O = 1;
    s.H = 3;
    s.W = 3;
    s.KH = 3;
    s.KW = 3;
    s.p.pad_top = s.p.pad_bottom = s.p.pad_left = s.p.pad_right = 1;
    const std::uint8_t x[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const std::vector<std::int32_t> w(9, 1);
    std::int32_t ref[9], fast[9];
    depthwise_u8_reference(s, x, 1, w.data(), ref);
    depthwise_u8(s, x, 1, w.data(), fast);
    CHECK(ref[4] == 36);
    CHECK(ref[0] == 8);
    CHECK(ref[8] == 4 + 5 + 7 + 8);
    for (int i = 0; i < 9; ++i) CHECK(fast[i] == ref[i]);
  }
  std::mt19937 rng(11);
  struct dw_case {
    std::size_t C, H, W, K, stride, pad, dilation;
  };
  // Strides 1, 2 and 3 (the phase planes), odd widths (vector tails), dilation 2.
  for (const dw_case& t : {dw_case{3, 7, 9, 3, 1, 1, 1}, dw_case{5, 14, 14, 3, 2, 1, 1},
                           dw_case{2, 5, 4, 5, 1, 2, 1}, dw_case{4, 8, 8, 3, 2, 0, 1},
                           dw_case{3, 11, 37, 3, 3, 1, 1}, dw_case{2, 9, 19, 3, 1, 2, 2},
                           dw_case{2, 28, 28, 3, 2, 1, 2}}) {
    qkit::conv2d_shape s;
    s.N = 1;
    s.C = t.C;
    s.O = t.C;
    s.H = t.H;
    s.W = t.W;
    s.KH = t.K;
    s.KW = t.K;
    s.p.stride_h = s.p.stride_w = t.stride;
    s.p.pad_top = s.p.pad_bottom = s.p.pad_left = s.p.pad_right = t.pad;
    s.p.groups = t.C;
    s.p.dilation_h = s.p.dilation_w = t.dilation;
    const auto x = random_u8(t.C * t.H * t.W, rng);
    std::vector<std::int32_t> w(t.C * t.K * t.K);
    std::uniform_int_distribution<int> d(-255, 255);  // w − z_w spans up to 255 either way
    for (auto& v : w) v = d(rng);
    const std::size_t n = t.C * s.OH() * s.OW();
    std::vector<std::int32_t> ref(n), fast(n);
    depthwise_u8_reference(s, x.data(), 131, w.data(), ref.data());
    depthwise_u8(s, x.data(), 131, w.data(), fast.data());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) bad += ref[i] != fast[i];
    CHECK(bad == 0);
  }
}

TEST_CASE("requantization: closed forms, ties to even, saturation, SIMD equals scalar") {
  // 10 · 0.25 = 2.5 → 2 (ties to even); 14 · 0.25 = 3.5 → 4; + zero point 100.
  CHECK(requantize_one(10, 0.25f, 100) == 102);
  CHECK(requantize_one(14, 0.25f, 100) == 104);
  CHECK(requantize_one(-10, 0.25f, 100) == 98);
  // Saturation at both ends of uint8, whatever the zero point.
  CHECK(requantize_one(1 << 30, 0.5f, 3) == 255);
  CHECK(requantize_one(-(1 << 30), 0.5f, 3) == 0);
  CHECK(requantize_one(std::numeric_limits<std::int32_t>::min(), 1.0f, 0) == 0);

  std::mt19937 rng(3);
  std::uniform_int_distribution<std::int32_t> d(-3'000'000, 3'000'000);
  for (const float scale : {1e-4f, 3.7e-5f, 0.0123f, 1.0f}) {
    for (const std::int32_t zp : {0, 1, 128, 255}) {
      std::vector<std::int32_t> acc(1031);
      for (auto& v : acc) v = d(rng);
      // Exact ties at this scale: acc·scale = k + 0.5 for scale 1 and odd halves below.
      acc[1] = 5;
      acc[2] = -5;
      std::vector<std::uint8_t> ref(acc.size()), fast(acc.size());
      requantize_reference(acc.data(), acc.size(), scale, zp, ref.data());
      requantize(acc.data(), acc.size(), scale, zp, fast.data());
      std::size_t bad = 0;
      for (std::size_t i = 0; i < acc.size(); ++i) bad += ref[i] != fast[i];
      CHECK(bad == 0);
    }
  }
}

}  // namespace unit_integer
