// Tests of qkit/quant/qdq.hpp and qkit/quant/fp16.hpp: known answers computed by hand, SIMD
// kernels against their scalar references bit for bit, integer storage, per-channel layout,
// the straight-through mask and the preconditions.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <qkit/quant/fp16.hpp>
#include <qkit/quant/qdq.hpp>

namespace unit_qdq {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

using qkit::encoding;
using qkit::rounding;

constexpr std::size_t W = qkit::simd<float>::size;
const std::vector<std::size_t> kLengths = {0, 1, W - 1, W, W + 1, 3 * W + 5};
const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kInf = std::numeric_limits<float>::infinity();

/// Index of the first element whose bits differ, or -1.
template <class T>
long first_bit_difference(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return static_cast<long>(i);
  return -1;
}

#define CHECK_SAME_BITS(a, b)                                                        \
  do {                                                                               \
    const long at_ = first_bit_difference(a, b);                                     \
    INFO("first difference at index " << at_);                                       \
    CHECK(at_ == -1);                                                                \
  } while (false)

/// Values that exercise every path of a grid: ordinary values around the range, exact .5
/// ties of x / scale, values far outside, infinities, NaN, denormals and both zeros.
std::vector<float> test_values(const encoding& e, std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  const float s = static_cast<float>(e.scale);
  const double lo = e.min, hi = e.max;
  std::uniform_real_distribution<double> wide(lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo));
  std::uniform_int_distribution<int> grid(static_cast<int>(std::max<std::int64_t>(e.offset - 3, -1000000)),
                                          static_cast<int>(std::min<std::int64_t>(e.offset + e.qmax() + 3, 1000000)));
  const float specials[] = {0.0f, -0.0f, kNaN, kInf, -kInf, 1e30f, -1e30f, 1e-40f, -1e-40f,
                            std::numeric_limits<float>::denorm_min(), static_cast<float>(e.min),
                            static_cast<float>(e.max), -static_cast<float>(e.max), 0.5f * s, -0.5f * s};
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    switch (rng() % 4) {
      case 0: v[i] = specials[rng() % std::size(specials)]; break;
      case 1: v[i] = (static_cast<float>(grid(rng)) + 0.5f) * s; break;  // a tie when exact
      default: v[i] = static_cast<float>(wide(rng)); break;
    }
  }
  return v;
}

/// Encodings with power-of-two scales (so that ties are exact) and ordinary ones.
std::vector<encoding> test_encodings() {
  std::vector<encoding> out;
  for (int bw : {2, 4, 8, 16}) {
    out.push_back(qkit::encoding_from_range(-1.0, 3.0, bw, qkit::scheme::asymmetric));
    out.push_back(qkit::encoding_from_range(-2.5, 1.0, bw, qkit::scheme::symmetric_signed));
    out.push_back(qkit::encoding_from_range(-2.5, 1.0, bw, qkit::scheme::strict_symmetric));
    out.push_back(qkit::encoding_from_range(0.0, 6.0, bw, qkit::scheme::unsigned_symm));
    const std::int64_t half = std::int64_t{1} << (bw - 1);
    out.push_back(qkit::encoding_from_scale_offset(0.25, -half, bw, true));
    out.push_back(qkit::encoding_from_scale_offset(0.125, -half / 2, bw, false));
    out.push_back(qkit::encoding_from_scale_offset(1.0, 0, bw, false));
  }
  return out;
}

}  // namespace

TEST_CASE("qdq: known answers, round half to even and AIMET's half away") {
  // 4 bits, scale 0.5, offset -8: grid integers -8..7, values -4.0..3.5.
  const encoding e = qkit::encoding_from_scale_offset(0.5, -8, 4, true);
  const std::vector<float> x = {0.25f, 0.75f, -0.25f, -0.75f, 1.1f, 100.0f, -100.0f, kNaN, -0.0f, 3.5f, 3.75f};
  // half_even: round(x/0.5) = 0, 2, -0, -2, 2, clamp 7, clamp -8, NaN -> -8, -0, 7, round(7.5)=8 -> 7.
  const std::vector<float> even = {0.0f, 1.0f, 0.0f, -1.0f, 1.0f, 3.5f, -4.0f, -4.0f, 0.0f, 3.5f, 3.5f};
  // half_away (AIMET): round(x/0.5 + 8) - 8: 8.5->9, 9.5->10, 7.5->8, 6.5->7, 10.2->10, ...
  const std::vector<float> away = {0.5f, 1.0f, 0.0f, -0.5f, 1.0f, 3.5f, -4.0f, -4.0f, 0.0f, 3.5f, 3.5f};
  for (auto r : {rounding::half_even, rounding::half_away}) {
    const auto& want = r == rounding::half_even ? even : away;
    std::vector<float> got(x.size()), ref(x.size());
    qkit::qdq(x.data(), got.data(), x.size(), e, r);
    qkit::qdq_reference(x.data(), ref.data(), x.size(), e, r);
    CHECK_SAME_BITS(got, want);
    CHECK_SAME_BITS(ref, want);
  }
  // ONNX's own QuantizeLinear example: scale 2, zero point 128 (uint8) -> offset -128.
  const encoding u8 = qkit::encoding_from_scale_offset(2.0, -128, 8, false);
  const std::vector<float> ox = {0.0f, 2.0f, 3.0f, 1000.0f, -254.0f, -1000.0f};
  std::vector<std::uint8_t> q(ox.size());
  qkit::quantize(ox.data(), q.data(), ox.size(), u8);
  CHECK(q == std::vector<std::uint8_t>{128, 129, 130, 255, 1, 0});
  std::vector<std::int8_t> qs(ox.size());
  qkit::quantize(ox.data(), qs.data(), ox.size(), u8);
  CHECK(qs == std::vector<std::int8_t>{0, 1, 2, 127, -127, -128});
}

TEST_CASE("qdq: SIMD equals the scalar reference bit for bit") {
  unsigned seed = 1;
  for (const encoding& e : test_encodings()) {
    for (auto r : {rounding::half_even, rounding::half_away}) {
      for (std::size_t n : kLengths) {
        CAPTURE(e.bitwidth);
        CAPTURE(e.scale);
        CAPTURE(e.offset);
        CAPTURE(n);
        const auto x = test_values(e, n + 2000 * (n == 3 * W + 5), seed++);
        std::vector<float> got(x.size()), ref(x.size());
        qkit::qdq(x.data(), got.data(), x.size(), e, r);
        qkit::qdq_reference(x.data(), ref.data(), x.size(), e, r);
        CHECK_SAME_BITS(got, ref);
        // In place gives the same.
        std::vector<float> inplace = x;
        qkit::qdq(inplace.data(), inplace.data(), inplace.size(), e, r);
        CHECK_SAME_BITS(inplace, ref);
        // Every output is a grid point scale * k, k in [offset, offset + qmax].
        const float s = static_cast<float>(e.scale);
        for (float y : got) {
          const double k = std::nearbyint(static_cast<double>(y) / static_cast<double>(s));
          REQUIRE(y == static_cast<float>(k) * s);
          REQUIRE(k >= static_cast<double>(e.offset));
          REQUIRE(k <= static_cast<double>(e.offset + e.qmax()));
        }
      }
    }
  }
}

TEST_CASE("qdq: SIMD equals the reference next to every rounding boundary") {
  // Values a few ulps around scale * (k + 1/2) and scale * k, where a quotient off by one ulp
  // would round differently; scales with awkward mantissas, tiny and huge.
  std::mt19937 rng(11);
  std::vector<double> scales = {0.1, 3.0 / 255.0, 0x1.fffffep-1, 0x1.000002p+0, 7.0 / 127.0, 1e-5,
                                123.456, 0x1p-90, 0x1.fffffep+89, 0x1p-100, 0x1p+100};
  for (int i = 0; i < 40; ++i)
    scales.push_back(std::ldexp(1.0 + static_cast<double>(rng() % 8388608) / 8388608.0,
                                static_cast<int>(rng() % 60) - 30));
  for (double sc : scales) {
    for (int bw : {8, 16}) {
      const std::int64_t offset = -(std::int64_t{1} << (bw - 1)) + 3;
      const encoding e = qkit::encoding_from_scale_offset(static_cast<float>(sc), offset, bw, false);
      const float s = static_cast<float>(e.scale);
      std::vector<float> x;
      for (int j = 0; j < 400; ++j) {
        const auto k = static_cast<double>(offset + static_cast<std::int64_t>(rng() % e.qmax()));
        for (double frac : {0.0, 0.5}) {
          float v = static_cast<float>((k + frac) * s);
          for (int step = 0; step < 3; ++step) v = std::nextafter(v, -kInf);
          for (int step = 0; step < 7; ++step) {
            x.push_back(v);
            v = std::nextafter(v, kInf);
          }
        }
      }
      for (auto r : {rounding::half_even, rounding::half_away}) {
        CAPTURE(sc);
        CAPTURE(bw);
        std::vector<float> got(x.size()), ref(x.size());
        qkit::qdq(x.data(), got.data(), x.size(), e, r);
        qkit::qdq_reference(x.data(), ref.data(), x.size(), e, r);
        CHECK_SAME_BITS(got, ref);
        std::vector<std::int16_t> q(x.size()), qref(x.size());
        qkit::quantize(x.data(), q.data(), x.size(), e, r);
        qkit::quantize_reference(x.data(), qref.data(), x.size(), e, r);
        CHECK(q == qref);
      }
    }
  }
  // AIMET's clamp uses min/max as given, even when they are far wider than the grid.
  encoding wide = qkit::encoding_from_scale_offset(0.5, -8, 4, true);
  wide.min = -1e30;
  wide.max = 1e30;
  const std::vector<float> x = {1e29f, -1e29f, 1.25f, kNaN};
  std::vector<float> got(x.size()), ref(x.size());
  qkit::qdq(x.data(), got.data(), x.size(), wide, rounding::half_away);
  qkit::qdq_reference(x.data(), ref.data(), x.size(), wide, rounding::half_away);
  CHECK_SAME_BITS(got, ref);
}

TEST_CASE("qdq: exact ties follow the rounding policy") {
  const encoding e = qkit::encoding_from_scale_offset(1.0, -128, 8, true);
  const std::vector<float> x = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -127.5f};
  std::vector<float> even(x.size()), away(x.size());
  qkit::qdq(x.data(), even.data(), x.size(), e, rounding::half_even);
  qkit::qdq(x.data(), away.data(), x.size(), e, rounding::half_away);
  CHECK(even == std::vector<float>{0, 2, 2, 0, -2, -2, 126, -128});
  // AIMET rounds x - offset = x + 128, which is positive here: halves go up.
  CHECK(away == std::vector<float>{1, 2, 3, 0, -1, -2, 127, -127});
  // Unsigned offset 0: halves away from zero on the positive side.
  const encoding u = qkit::encoding_from_scale_offset(1.0, 0, 8, false);
  std::vector<float> ua(x.size());
  qkit::qdq(x.data(), ua.data(), x.size(), u, rounding::half_away);
  CHECK(ua == std::vector<float>{1, 2, 3, 0, 0, 0, 127, 0});
}

TEST_CASE("qdq: zero is reproduced exactly and -0 becomes +0") {
  for (const encoding& e : test_encodings()) {
    for (auto r : {rounding::half_even, rounding::half_away}) {
      if (e.min > 0.0 || e.max < 0.0) continue;
      const std::vector<float> x = {0.0f, -0.0f};
      std::vector<float> y(2);
      qkit::qdq(x.data(), y.data(), 2, e, r);
      CHECK(std::bit_cast<std::uint32_t>(y[0]) == 0u);
      if (r == rounding::half_even) CHECK(std::bit_cast<std::uint32_t>(y[1]) == 0u);
      else CHECK(y[1] == 0.0f);
    }
  }
}

TEST_CASE("qdq: pass-through and float16 encodings") {
  encoding pt = qkit::encoding_from_range(-1.0, 1.0, 32);
  REQUIRE(pt.is_passthrough());
  const std::vector<float> x = {1.2345678f, -1e30f, kNaN, -0.0f, 1e-40f};
  std::vector<float> y(x.size());
  qkit::qdq(x.data(), y.data(), x.size(), pt);
  CHECK_SAME_BITS(y, x);
  qkit::qdq_reference(x.data(), y.data(), x.size(), pt);
  CHECK_SAME_BITS(y, x);

  const encoding h = encoding::fp16();
  qkit::qdq(x.data(), y.data(), x.size(), h);
  CHECK(y[0] == qkit::round_to_half(1.2345678f));
  CHECK(y[1] == -kInf);
  CHECK(std::isnan(y[2]));
  CHECK(std::bit_cast<std::uint32_t>(y[3]) == 0x80000000u);
  CHECK(y[4] == 0.0f);
}

TEST_CASE("qdq: preconditions are config errors") {
  float x = 1.0f, y = 0.0f;
  encoding e = qkit::encoding_from_scale_offset(0.1, -128, 8, true);
  e.bitwidth = 1;
  CHECK_THROWS_AS(qkit::qdq(&x, &y, 1, e), qkit::config_error);
  e.bitwidth = 33;
  CHECK_THROWS_AS(qkit::qdq(&x, &y, 1, e), qkit::config_error);
  e.bitwidth = 8;
  e.scale = 0.0;
  CHECK_THROWS_AS(qkit::qdq(&x, &y, 1, e), qkit::config_error);
  e.scale = std::nan("");
  CHECK_THROWS_AS(qkit::qdq_reference(&x, &y, 1, e), qkit::config_error);
  e.scale = 1e-300;  // positive in double, zero in float
  CHECK_THROWS_AS(qkit::qdq(&x, &y, 1, e), qkit::config_error);
  encoding h = encoding::fp16();
  h.bitwidth = 8;
  CHECK_THROWS_AS(qkit::qdq(&x, &y, 1, h), qkit::config_error);
  // A valid call with n == 0 still checks the encoding once.
  CHECK_THROWS_AS(qkit::qdq(nullptr, nullptr, 0, e), qkit::config_error);
}

TEST_CASE("qdq_per_channel: SIMD equals reference and per-tensor qdq of each channel") {
  const auto all = test_encodings();
  unsigned seed = 100;
  for (std::size_t inner : {std::size_t{1}, std::size_t{3}, W - 1, W, W + 3, 2 * W + 1}) {
    for (std::size_t channels : {std::size_t{1}, std::size_t{5}, std::size_t{17}}) {
      for (auto r : {rounding::half_even, rounding::half_away}) {
        const std::size_t outer = 3;
        CAPTURE(inner);
        CAPTURE(channels);
        std::vector<encoding> encs;
        for (std::size_t c = 0; c < channels; ++c) encs.push_back(all[(c * 7 + inner) % all.size()]);
        std::vector<float> x;
        for (std::size_t o = 0; o < outer; ++o)
          for (std::size_t c = 0; c < channels; ++c) {
            const auto v = test_values(encs[c], inner, seed++);
            x.insert(x.end(), v.begin(), v.end());
          }
        std::vector<float> got(x.size()), ref(x.size()), per_tensor(x.size());
        qkit::qdq_per_channel(x.data(), got.data(), outer, channels, inner, encs.data(), r);
        qkit::qdq_per_channel_reference(x.data(), ref.data(), outer, channels, inner, encs.data(), r);
        for (std::size_t o = 0; o < outer; ++o)
          for (std::size_t c = 0; c < channels; ++c) {
            const std::size_t at = (o * channels + c) * inner;
            qkit::qdq_reference(x.data() + at, per_tensor.data() + at, inner, encs[c], r);
          }
        CHECK_SAME_BITS(got, ref);
        CHECK_SAME_BITS(got, per_tensor);
        // Mixed pass-through / float16 channels take the per-block path.
        auto mixed = encs;
        mixed[0] = encoding::fp16();
        qkit::qdq_per_channel(x.data(), got.data(), outer, channels, inner, mixed.data(), r);
        qkit::qdq_per_channel_reference(x.data(), ref.data(), outer, channels, inner, mixed.data(), r);
        CHECK_SAME_BITS(got, ref);
      }
    }
  }
}

TEST_CASE("qdq_per_channel: shape and axis") {
  // Shape [2, 3, 4], axis 1: outer 2, channels 3, inner 4. Channel c has scale 2^-c.
  const std::vector<std::size_t> shape = {2, 3, 4};
  std::vector<encoding> encs;
  for (int c = 0; c < 3; ++c) encs.push_back(qkit::encoding_from_scale_offset(std::ldexp(1.0, -c), -128, 8, true));
  std::vector<float> x(24);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = 0.3f * static_cast<float>(i) - 3.0f;
  std::vector<float> got(24), want(24);
  qkit::qdq_per_channel(x.data(), got.data(), shape, 1, encs);
  qkit::qdq_per_channel_reference(x.data(), want.data(), 2, 3, 4, encs.data());
  CHECK_SAME_BITS(got, want);
  qkit::qdq_per_channel(x.data(), got.data(), shape, -2, encs);
  CHECK_SAME_BITS(got, want);
  // x[4] = -1.8 is channel 1 (scale 0.5): round(-3.6) = -4 -> -2.0.
  CHECK(got[4] == -2.0f);

  const auto l = qkit::channel_layout_of(std::vector<std::size_t>{5, 6, 7, 8}, 2, 7);
  CHECK(l.outer == 30);
  CHECK(l.channels == 7);
  CHECK(l.inner == 8);

  CHECK_THROWS_WITH_AS(qkit::qdq_per_channel(x.data(), got.data(), shape, 3, encs),
                       doctest::Contains("axis 3 is out of range for a tensor of rank 3"),
                       qkit::config_error);
  CHECK_THROWS_AS(qkit::qdq_per_channel(x.data(), got.data(), shape, -4, encs), qkit::config_error);
  // A bad encoding in any channel is reported before anything is written.
  auto bad = encs;
  bad[2].scale = 0.0;
  std::vector<float> untouched(24, 7.0f);
  CHECK_THROWS_AS(qkit::qdq_per_channel(x.data(), untouched.data(), shape, 1, bad), qkit::config_error);
  CHECK(untouched == std::vector<float>(24, 7.0f));
  bad[2] = encs[2];
  bad[1].bitwidth = 40;
  CHECK_THROWS_AS(qkit::qdq_per_channel(x.data(), untouched.data(), 2, 3, 4, bad.data()), qkit::config_error);
  CHECK(untouched == std::vector<float>(24, 7.0f));
  encs.pop_back();
  CHECK_THROWS_WITH_AS(qkit::qdq_per_channel(x.data(), got.data(), shape, 1, encs),
                       doctest::Contains("3 channels but 2 encodings"), qkit::shape_error);
}

namespace {

template <class Int>
void check_storage(const encoding& e, rounding r, unsigned seed) {
  CAPTURE(e.bitwidth);
  CAPTURE(e.offset);
  CAPTURE(static_cast<int>(r));
  const auto x = test_values(e, 3 * W + 5 + 1500, seed);
  std::vector<Int> q(x.size()), qref(x.size());
  qkit::quantize(x.data(), q.data(), x.size(), e, r);
  qkit::quantize_reference(x.data(), qref.data(), x.size(), e, r);
  CHECK(q == qref);
  const std::int64_t lo = std::is_signed_v<Int> ? -(std::int64_t{1} << (e.bitwidth - 1)) : 0;
  const std::int64_t hi = lo + e.qmax();
  for (Int v : q) {
    REQUIRE(static_cast<std::int64_t>(v) >= lo);
    REQUIRE(static_cast<std::int64_t>(v) <= hi);
  }
  std::vector<float> back(x.size()), backref(x.size()), sim(x.size());
  qkit::dequantize(q.data(), back.data(), q.size(), e);
  qkit::dequantize_reference(q.data(), backref.data(), q.size(), e);
  qkit::qdq(x.data(), sim.data(), x.size(), e, r);
  CHECK_SAME_BITS(back, backref);
  CHECK_SAME_BITS(back, sim);  // storage round trip == float simulation
  for (std::size_t n : kLengths) {
    std::vector<Int> a(n), b(n);
    qkit::quantize(x.data(), a.data(), n, e, r);
    qkit::quantize_reference(x.data(), b.data(), n, e, r);
    CHECK(a == b);
  }
}

template <class Int>
void check_storage_all() {
  unsigned seed = 7;
  for (const encoding& e : test_encodings()) {
    if (e.bitwidth > static_cast<int>(sizeof(Int) * 8)) continue;
    for (auto r : {rounding::half_even, rounding::half_away}) check_storage<Int>(e, r, seed++);
  }
}

}  // namespace

TEST_CASE("quantize/dequantize: every storage type, SIMD == reference, round trip == qdq") {
  check_storage_all<std::int8_t>();
  check_storage_all<std::uint8_t>();
  check_storage_all<std::int16_t>();
  check_storage_all<std::uint16_t>();
  check_storage_all<std::int32_t>();
}

TEST_CASE("quantize: zero points and 4-bit values held in bytes") {
  // Asymmetric 8-bit with offset -100: ONNX zero point 100 (uint8), -28 (int8).
  const encoding e = qkit::encoding_from_scale_offset(0.1, -100, 8, false);
  CHECK(e.zero_point_unsigned() == 100);
  CHECK(e.zero_point_signed() == -28);
  const float zero = 0.0f;
  std::uint8_t u = 0;
  std::int8_t s = 0;
  qkit::quantize(&zero, &u, 1, e);
  qkit::quantize(&zero, &s, 1, e);
  CHECK(u == 100);
  CHECK(s == -28);
  // 4-bit symmetric: offset -8, signed storage holds q - 8 in [-8, 7].
  const encoding e4 = qkit::encoding_from_scale_offset(0.5, -8, 4, true);
  const std::vector<float> x = {-10.0f, -4.0f, -0.25f, 0.25f, 0.75f, 3.5f, 10.0f};
  std::vector<std::int8_t> q4(x.size());
  std::vector<std::uint8_t> u4(x.size());
  qkit::quantize(x.data(), q4.data(), x.size(), e4);
  qkit::quantize(x.data(), u4.data(), x.size(), e4);
  CHECK(q4 == std::vector<std::int8_t>{-8, -8, 0, 0, 2, 7, 7});
  CHECK(u4 == std::vector<std::uint8_t>{0, 0, 8, 8, 10, 15, 15});
}

TEST_CASE("quantize: storage too narrow, pass-through and float16 are config errors") {
  const float x = 1.0f;
  std::int8_t q8;
  std::uint16_t q16;
  std::int32_t q32;
  const encoding e16 = qkit::encoding_from_scale_offset(0.1, 0, 16, false);
  CHECK_THROWS_WITH_AS(qkit::quantize(&x, &q8, 1, e16), doctest::Contains("does not fit int8"),
                       qkit::config_error);
  CHECK_THROWS_AS(qkit::dequantize(&q8, nullptr, 0, e16), qkit::config_error);
  CHECK_NOTHROW(qkit::quantize(&x, &q16, 1, e16));
  const encoding pt = qkit::encoding_from_range(-1.0, 1.0, 32);
  CHECK_THROWS_AS(qkit::quantize(&x, &q32, 1, pt), qkit::config_error);
  CHECK_THROWS_AS(qkit::quantize(&x, &q16, 1, encoding::fp16()), qkit::config_error);
  const encoding e24 = qkit::encoding_from_scale_offset(1e-3, -(1 << 23), 24, true);
  CHECK_NOTHROW(qkit::quantize(&x, &q32, 1, e24));
  CHECK(q32 == 1000);
}

TEST_CASE("quantize/dequantize per channel") {
  const auto all = test_encodings();
  std::vector<encoding> encs;
  for (const auto& e : all)
    if (e.bitwidth <= 8) encs.push_back(e);
  const std::size_t outer = 2, channels = encs.size(), inner = W + 3;
  std::vector<float> x;
  unsigned seed = 300;
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t c = 0; c < channels; ++c) {
      const auto v = test_values(encs[c], inner, seed++);
      x.insert(x.end(), v.begin(), v.end());
    }
  for (auto r : {rounding::half_even, rounding::half_away}) {
    std::vector<std::int8_t> q(x.size()), qref(x.size());
    qkit::quantize_per_channel(x.data(), q.data(), outer, channels, inner, encs.data(), r);
    qkit::quantize_per_channel_reference(x.data(), qref.data(), outer, channels, inner, encs.data(), r);
    CHECK(q == qref);
    std::vector<float> back(x.size()), backref(x.size()), sim(x.size());
    qkit::dequantize_per_channel(q.data(), back.data(), outer, channels, inner, encs.data());
    qkit::dequantize_per_channel_reference(q.data(), backref.data(), outer, channels, inner, encs.data());
    qkit::qdq_per_channel(x.data(), sim.data(), outer, channels, inner, encs.data(), r);
    CHECK_SAME_BITS(back, backref);
    CHECK_SAME_BITS(back, sim);
    const std::vector<std::size_t> shape = {outer, channels, inner};
    std::vector<std::int8_t> q2(x.size());
    qkit::quantize_per_channel(x.data(), q2.data(), shape, 1, encs, r);
    CHECK(q2 == q);
    std::vector<float> back2(x.size());
    qkit::dequantize_per_channel(q.data(), back2.data(), shape, 1, encs);
    CHECK_SAME_BITS(back2, back);
    CHECK_THROWS_AS(qkit::quantize_per_channel(x.data(), q2.data(), shape, 5, encs, r), qkit::config_error);
  }
}

TEST_CASE("ste_mask: 1 where qdq's clamp does not act") {
  const encoding e = qkit::encoding_from_scale_offset(0.5, -8, 4, true);  // grid -4.0 .. 3.5
  const std::vector<float> x = {-4.0f, -4.25f, -4.3f, 3.5f, 3.75f, 3.8f, 0.0f, kNaN, kInf};
  std::vector<float> m(x.size());
  qkit::ste_mask(x.data(), m.data(), x.size(), e);
  // round_half_even(x / 0.5): -8, -8 (tie -8.5 -> -8), -9, 7, 8 (7.5 -> 8), 8, 0, NaN, inf.
  CHECK(m == std::vector<float>{1, 1, 0, 1, 0, 0, 1, 0, 0});
  qkit::ste_mask(x.data(), m.data(), x.size(), e, rounding::half_away);
  // AIMET: min <= x <= max.
  CHECK(m == std::vector<float>{1, 0, 0, 1, 0, 0, 1, 0, 0});

  unsigned seed = 500;
  for (const encoding& enc : test_encodings()) {
    for (auto r : {rounding::half_even, rounding::half_away}) {
      for (std::size_t n : kLengths) {
        const auto v = test_values(enc, n + 700, seed++);
        std::vector<float> mf(v.size()), mfref(v.size());
        std::vector<std::uint8_t> mu(v.size()), muref(v.size());
        qkit::ste_mask(v.data(), mf.data(), v.size(), enc, r);
        qkit::ste_mask_reference(v.data(), mfref.data(), v.size(), enc, r);
        qkit::ste_mask(v.data(), mu.data(), v.size(), enc, r);
        qkit::ste_mask_reference(v.data(), muref.data(), v.size(), enc, r);
        CHECK_SAME_BITS(mf, mfref);
        CHECK(mu == muref);
        // Consistent with qdq: inside the mask, qdq equals the unclamped rounding.
        if (r == rounding::half_even) {
          std::vector<float> y(v.size());
          qkit::qdq(v.data(), y.data(), v.size(), enc, r);
          const float s = static_cast<float>(enc.scale);
          for (std::size_t i = 0; i < v.size(); ++i) {
            CHECK(mu[i] == static_cast<std::uint8_t>(mf[i]));
            if (mf[i] == 1.0f) REQUIRE(y[i] == (std::nearbyint(v[i] / s) + 0.0f) * s);
          }
        }
      }
    }
  }
  // Pass-through: everything passes; float16: everything that does not overflow.
  std::vector<std::uint8_t> mu(x.size());
  qkit::ste_mask(x.data(), mu.data(), x.size(), qkit::encoding_from_range(-1, 1, 32));
  CHECK(mu == std::vector<std::uint8_t>(x.size(), 1));
  const std::vector<float> hx = {65504.0f, 65519.0f, 65520.0f, -1e6f, 1.0f};
  std::vector<float> hm(hx.size());
  qkit::ste_mask(hx.data(), hm.data(), hx.size(), encoding::fp16());
  CHECK(hm == std::vector<float>{1, 1, 0, 0, 1});
  std::vector<float> pm(2 * 3 * 4);
  std::vector<float> px(pm.size(), 100.0f);
  std::vector<encoding> pencs = {e, qkit::encoding_from_range(-1, 1, 32), encoding::fp16()};
  qkit::ste_mask_per_channel(px.data(), pm.data(), 2, 3, 4, pencs.data());
  CHECK(pm == std::vector<float>{0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1});
}

// ---------------------------------------------------------------------------------------------
// float16

TEST_CASE("fp16: known answers") {
  CHECK(qkit::float_to_half_bits(1.0f) == 0x3c00);
  CHECK(qkit::float_to_half_bits(-2.0f) == 0xc000);
  CHECK(qkit::float_to_half_bits(65504.0f) == 0x7bff);
  CHECK(qkit::float_to_half_bits(65519.996f) == 0x7bff);
  CHECK(qkit::float_to_half_bits(65520.0f) == 0x7c00);  // the tie rounds to even: infinity
  CHECK(qkit::float_to_half_bits(-kInf) == 0xfc00);
  CHECK(qkit::float_to_half_bits(0x1p-24f) == 0x0001);
  CHECK(qkit::float_to_half_bits(0x1p-25f) == 0x0000);                 // tie to even: 0
  CHECK(qkit::float_to_half_bits(0x1.000002p-25f) == 0x0001);          // just above the tie
  CHECK(qkit::float_to_half_bits(0x3p-25f) == 0x0002);                 // 1.5 quanta -> 2
  CHECK(qkit::float_to_half_bits(0x1p-14f) == 0x0400);                 // smallest normal
  CHECK(qkit::float_to_half_bits(0x1.ff8p-15f) == 0x03ff);             // largest subnormal
  CHECK(qkit::float_to_half_bits(0x1.ffcp-15f) == 0x0400);             // tie -> even (normal)
  CHECK(qkit::float_to_half_bits(0x1.ffep-15f) == 0x0400);             // rounds up into normal
  CHECK(qkit::float_to_half_bits(-0.0f) == 0x8000);
  CHECK(qkit::float_to_half_bits(1e-40f) == 0x0000);
  CHECK(qkit::float_to_half_bits(1.0f + 0x1p-11f) == 0x3c00);          // tie -> even
  CHECK(qkit::float_to_half_bits(1.0f + 0x3p-11f) == 0x3c02);          // tie -> even (up)
  CHECK(qkit::float_to_half_bits(kNaN) == 0x7e00);
  CHECK(qkit::float_to_half_bits(std::bit_cast<float>(0x7f800001u)) == 0x7e00);  // sNaN quieted
  CHECK(qkit::float_to_half_bits(std::bit_cast<float>(0xffc02000u)) == 0xfe01);  // payload kept
  CHECK(qkit::half_bits_to_float(0x0001) == 0x1p-24f);
  CHECK(qkit::half_bits_to_float(0x7bff) == 65504.0f);
  CHECK(qkit::half_bits_to_float(0x3555) == 0x1.554p-2f);
  CHECK(std::bit_cast<std::uint32_t>(qkit::half_bits_to_float(0x8000)) == 0x80000000u);
  CHECK(std::bit_cast<std::uint32_t>(qkit::half_bits_to_float(0xfe01)) == 0xffc02000u);
  CHECK(qkit::round_to_half(0.1f) == 0x1.998p-4f);
  // Every half survives the round trip (NaNs come back quiet).
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto b = static_cast<std::uint16_t>(h);
    const bool nan = (b & 0x7c00) == 0x7c00 && (b & 0x3ff) != 0;
    REQUIRE(qkit::float_to_half_bits(qkit::half_bits_to_float(b)) == (nan ? (b | 0x200) : b));
  }
}

TEST_CASE("fp16: SIMD, hardware and generic paths equal the scalar reference bit for bit") {
  std::vector<float> x;
  // Every float whose top 19 bits vary, with the low 13 bits at the rounding boundaries.
  for (std::uint32_t hi = 0; hi < (1u << 19); ++hi)
    for (std::uint32_t lo : {0x0000u, 0x0fffu, 0x1000u, 0x1001u, 0x1fffu})
      x.push_back(std::bit_cast<float>((hi << 13) | lo));
  std::mt19937 rng(42);
  for (int i = 0; i < 200000; ++i) x.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
  std::vector<float> ref(x.size()), fast(x.size()), generic(x.size());
  qkit::fp16_qdq_reference(x.data(), ref.data(), x.size());
  qkit::fp16_qdq(x.data(), fast.data(), x.size());
  qkit::detail::fp16_qdq_generic(x.data(), generic.data(), x.size());
  CHECK_SAME_BITS(fast, ref);
  CHECK_SAME_BITS(generic, ref);
  for (std::size_t n : kLengths) {
    std::vector<float> a(x.begin() + 1000, x.begin() + 1000 + n), b(n), c(n);
    qkit::fp16_qdq(a.data(), b.data(), n);
    qkit::fp16_qdq_reference(a.data(), c.data(), n);
    CHECK_SAME_BITS(b, c);
    qkit::fp16_qdq(a.data(), a.data(), n);  // in place
    CHECK_SAME_BITS(a, c);
  }
}
}  // namespace unit_qdq
