// qkit/quant/fp16.hpp — float16 simulation: float -> IEEE 754 binary16 -> float, rounding to
// nearest even, with subnormals, overflow to infinity and quiet NaNs exactly as the hardware
// converters (F16C, AVX-512) do, so that a simulated fp16 tensor equals what a half-precision
// target stores. The bit conversions are also what the ONNX exporter writes for float16 tensors.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "../config.hpp"

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace qkit {

/// IEEE binary16 bits of `f`, rounded to nearest even. Values of magnitude >= 65520 become
/// infinity; NaNs stay NaN, quieted, keeping the top 10 payload bits (as vcvtps2ph does).
inline std::uint16_t float_to_half_bits(float f) noexcept {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    // Normal half: drop 13 mantissa bits with ties to even; a carry into the exponent is the
    // correct rounding up to the next binade.
    a += 0x0fffu + ((a >> 13) & 1u);
    return static_cast<std::uint16_t>(sign | ((a - 0x38000000u) >> 13));
  }
  // Subnormal half (quantum 2^-24): adding 0.5f, whose ulp is 2^-24, makes the FPU round to
  // that quantum with ties to even; the low bits are then the half's mantissa (0x400 when the
  // value rounds up to the smallest normal, which is the right encoding too).
  const float r = std::bit_cast<float>(a) + 0.5f;
  return static_cast<std::uint16_t>(sign | (std::bit_cast<std::uint32_t>(r) - 0x3f000000u));
}

/// The float value of IEEE binary16 bits (exact: every half is a float).
inline float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  if (e == 0) {
    const float v = static_cast<float>(m) * 0x1p-24f;
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

/// `f` rounded to the nearest float16 value (ties to even), returned as a float.
inline float round_to_half(float f) noexcept { return half_bits_to_float(float_to_half_bits(f)); }

/// Scalar reference of fp16_qdq.
inline void fp16_qdq_reference(const float* in, float* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = round_to_half(in[i]);
}

/// Bulk conversions for writers of float16 tensors (ONNX export).
inline void float_to_half_bits(const float* in, std::uint16_t* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = float_to_half_bits(in[i]);
}
inline void half_bits_to_float(const std::uint16_t* in, float* out, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) out[i] = half_bits_to_float(in[i]);
}

namespace detail {

/// round_to_half on a whole batch with integer bit manipulation: the portable path for targets
/// without hardware half conversions. Same three cases as float_to_half_bits, kept in float
/// bits instead of half bits.
template <class A>
inline xsimd::batch<float, A> round_to_half_batch(const xsimd::batch<float, A>& x) noexcept {
  using F = xsimd::batch<float, A>;
  using I = xsimd::batch<std::int32_t, A>;
  const I u = xsimd::bitwise_cast<I>(x);
  const I sign = u & I(std::int32_t(0x80000000u));
  const I a = u & I(0x7fffffff);
  I normal = (a + I(0x0fff) + ((a >> 13) & I(1))) & I(std::int32_t(0xffffe000u));
  normal = xsimd::select(a >= I(0x477ff000), I(0x7f800000), normal);
  const F ax = xsimd::bitwise_cast<F>(a);
  const I sub = xsimd::bitwise_cast<I>((ax + F(0.5f)) - F(0.5f));
  I r = xsimd::select(a < I(0x38800000), sub, normal);
  const I nan = (a & I(std::int32_t(0xffffe000u))) | I(0x00400000);
  r = xsimd::select(a > I(0x7f800000), nan, r);
  return xsimd::bitwise_cast<F>(r | sign);
}

/// fp16_qdq with xsimd bit manipulation only (no half-conversion instructions).
inline void fp16_qdq_generic(const float* in, float* out, std::size_t n) noexcept {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  const std::size_t nv = n - n % W;
  std::size_t i = 0;
  for (; i < nv; i += W) round_to_half_batch(B::load_unaligned(in + i)).store_unaligned(out + i);
  for (; i < n; ++i) out[i] = round_to_half(in[i]);
}

}  // namespace detail

/// out[i] = round_to_half(in[i]); in == out is allowed. Uses the CPU's half conversions when
/// the translation unit is built for them (AVX-512F or F16C), else detail::fp16_qdq_generic;
/// every path equals fp16_qdq_reference bit for bit.
inline void fp16_qdq(const float* in, float* out, std::size_t n) noexcept {
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(h));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
#else
  detail::fp16_qdq_generic(in, out, n);
  return;
#endif
  for (; i < n; ++i) out[i] = round_to_half(in[i]);
}

}  // namespace qkit
