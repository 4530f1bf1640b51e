// qkit/tensor/integer.hpp — the integer kernels of the target-exact simulation: uint8 × int8
// matrix products and depthwise convolutions accumulated in int32, and requantization of an
// int32 accumulator to a uint8 grid with a float multiplier.
//
// Integer products and sums are exact, so every kernel here gives the same accumulators as its
// scalar reference (and as any other correct implementation: ONNX Runtime's MLAS included)
// whatever the instruction set or the order of summation; the fast GEMM packs four k at a time
// for AVX-512 VNNI's vpdpbusd (u8·s8 quads summed into int32 without intermediate saturation)
// where the CPU has it, chosen at run time so a baseline x86-64 build uses it too, and an xsimd
// int32 multiply-add otherwise. Requantization is float(acc) · scale in one float rounding,
// clamped to the grid, rounded half to even (MLAS's MlasRequantizeOutput): the SIMD and scalar
// versions perform the same IEEE operations and agree bit for bit.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../config.hpp"
#include "conv.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define QKIT_RUNTIME_VNNI 1
#include <immintrin.h>
#else
#define QKIT_RUNTIME_VNNI 0
#endif

namespace qkit::integer {

// ---------------------------------------------------------------------------------------------
// GEMM: c[M×N] = a[M×K] · b[K×N], a int8 (weights, row-major), b uint8 (activations, rows ldb
// apart), c int32 (rows ldc apart).

/// The scalar reference: k in increasing order (any order gives the same exact sum).
inline void gemm_s8u8_reference(std::size_t M, std::size_t N, std::size_t K,
                                const std::int8_t* a, const std::uint8_t* b, std::size_t ldb,
                                std::int32_t* c, std::size_t ldc) {
  for (std::size_t m = 0; m < M; ++m)
    for (std::size_t n = 0; n < N; ++n) {
      std::int32_t acc = 0;
      for (std::size_t k = 0; k < K; ++k)
        acc += std::int32_t(a[m * K + k]) * std::int32_t(b[k * ldb + n]);
      c[m * ldc + n] = acc;
    }
}

/// Weights prepared once for gemm_s8u8: the rows as given, and as quads of four k packed in
/// an int32 (k padded with zeros to a multiple of 4) for the VNNI kernel.
struct packed_weights {
  std::size_t M = 0, K = 0, K4 = 0;
  std::vector<std::int8_t> rows;     ///< M × K
  std::vector<std::int32_t> quads;   ///< M × K4, bytes k..k+3 of a row in one int32
  std::vector<std::int32_t> row_sums;  ///< Σ_k a[m][k], for the input zero point

  packed_weights() = default;
  packed_weights(std::size_t m, std::size_t k, const std::int8_t* a)
      : M(m), K(k), K4((k + 3) / 4), rows(a, a + m * k), quads(m * ((k + 3) / 4), 0), row_sums(m, 0) {
    for (std::size_t i = 0; i < M; ++i) {
      for (std::size_t j = 0; j < K; ++j) row_sums[i] += a[i * K + j];
      auto* bytes = reinterpret_cast<std::int8_t*>(quads.data() + i * K4);
      std::memcpy(bytes, a + i * K, K);
    }
  }
};

namespace detail {

inline constexpr std::size_t vnni_lanes = 16;  // int32 lanes of a 512-bit register

inline bool cpu_has_avx512_vnni() {
#if QKIT_RUNTIME_VNNI
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vnni");
  return yes;
#else
  return false;
#endif
}

/// A grow-only scratch vector per thread (the packed activations of one product).
template <class T, int Slot>
inline T* integer_scratch(std::size_t n) {
  thread_local std::vector<T> v;
  if (v.size() < n) v.resize(n);
  return v.data();
}

#if QKIT_RUNTIME_VNNI
// Stores the first min(left, 16) lanes of v. A function, not a lambda inside vnni_gemm: GCC
// does not give a lambda its enclosing function's target attribute, so the intrinsics would not
// compile in a baseline x86-64 build.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void vnni_store(std::int32_t* dst, __m512i v,
                                                                             std::size_t left) {
  if (left >= vnni_lanes) _mm512_storeu_si512(dst, v);
  else _mm512_mask_storeu_epi32(dst, static_cast<__mmask16>((1u << left) - 1u), v);
}

// b [K×N] as [K4][Np][4]: the four k of column n side by side, the layout vpdpbusd reads (k and
// n padded with zeros; a zero weight quad makes padded k contribute nothing).
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void vnni_gemm(
    const packed_weights& w, std::size_t N, const std::uint8_t* b, std::size_t ldb,
    std::int32_t* c, std::size_t ldc) {
  const std::size_t K = w.K, K4 = w.K4;
  const std::size_t Np = (N + vnni_lanes - 1) / vnni_lanes * vnni_lanes;
  std::uint8_t* pb = integer_scratch<std::uint8_t, 0>(K4 * Np * 4);
  for (std::size_t q = 0; q < K4; ++q) {
    std::uint8_t* dst = pb + q * Np * 4;
    for (std::size_t j = 0; j < 4; ++j) {
      const std::size_t k = q * 4 + j;
      if (k < K) {
        const std::uint8_t* src = b + k * ldb;
        for (std::size_t n = 0; n < N; ++n) dst[n * 4 + j] = src[n];
      } else {
        for (std::size_t n = 0; n < N; ++n) dst[n * 4 + j] = 0;
      }
      for (std::size_t n = N; n < Np; ++n) dst[n * 4 + j] = 0;
    }
  }
  const std::size_t M = w.M;
  const std::int32_t* quads = w.quads.data();
  std::size_t m = 0;
  for (; m + 4 <= M; m += 4) {
    const std::int32_t* a0 = quads + m * K4;
    for (std::size_t n = 0; n < Np; n += vnni_lanes) {
      __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
      const std::uint8_t* bp = pb + n * 4;
      for (std::size_t q = 0; q < K4; ++q) {
        const __m512i bv = _mm512_loadu_si512(bp + q * Np * 4);
        c0 = _mm512_dpbusd_epi32(c0, bv, _mm512_set1_epi32(a0[q]));
        c1 = _mm512_dpbusd_epi32(c1, bv, _mm512_set1_epi32(a0[K4 + q]));
        c2 = _mm512_dpbusd_epi32(c2, bv, _mm512_set1_epi32(a0[2 * K4 + q]));
        c3 = _mm512_dpbusd_epi32(c3, bv, _mm512_set1_epi32(a0[3 * K4 + q]));
      }
      vnni_store(c + m * ldc + n, c0, N - n);
      vnni_store(c + (m + 1) * ldc + n, c1, N - n);
      vnni_store(c + (m + 2) * ldc + n, c2, N - n);
      vnni_store(c + (m + 3) * ldc + n, c3, N - n);
    }
  }
  for (; m < M; ++m) {
    const std::int32_t* a0 = quads + m * K4;
    for (std::size_t n = 0; n < Np; n += vnni_lanes) {
      __m512i c0 = _mm512_setzero_si512();
      const std::uint8_t* bp = pb + n * 4;
      for (std::size_t q = 0; q < K4; ++q)
        c0 = _mm512_dpbusd_epi32(c0, _mm512_loadu_si512(bp + q * Np * 4), _mm512_set1_epi32(a0[q]));
      vnni_store(c + m * ldc + n, c0, N - n);
    }
  }
}
#endif

// Portable path: b widened to int32 [K][Np], four rows of a at a time, xsimd int32 lanes.
inline void simd_gemm(const packed_weights& w, std::size_t N, const std::uint8_t* b,
                      std::size_t ldb, std::int32_t* c, std::size_t ldc) {
  using I = simd<std::int32_t>;
  constexpr std::size_t L = I::size;
  const std::size_t K = w.K, M = w.M;
  const std::size_t Np = (N + L - 1) / L * L;
  std::int32_t* wb = integer_scratch<std::int32_t, 1>(K * Np + L);
  std::int32_t* tmp = wb + K * Np;
  for (std::size_t k = 0; k < K; ++k) {
    std::int32_t* dst = wb + k * Np;
    for (std::size_t n = 0; n < N; ++n) dst[n] = b[k * ldb + n];
    for (std::size_t n = N; n < Np; ++n) dst[n] = 0;
  }
  auto store = [&](std::int32_t* dst, const I& v, std::size_t n) {
    if (N - n >= L) {
      v.store_unaligned(dst);
    } else {
      v.store_unaligned(tmp);
      std::copy(tmp, tmp + (N - n), dst);
    }
  };
  const std::int8_t* a = w.rows.data();
  std::size_t m = 0;
  for (; m + 4 <= M; m += 4)
    for (std::size_t n = 0; n < Np; n += L) {
      I c0(0), c1(0), c2(0), c3(0);
      for (std::size_t k = 0; k < K; ++k) {
        const I bv = I::load_unaligned(wb + k * Np + n);
        c0 += I(std::int32_t(a[m * K + k])) * bv;
        c1 += I(std::int32_t(a[(m + 1) * K + k])) * bv;
        c2 += I(std::int32_t(a[(m + 2) * K + k])) * bv;
        c3 += I(std::int32_t(a[(m + 3) * K + k])) * bv;
      }
      store(c + m * ldc + n, c0, n);
      store(c + (m + 1) * ldc + n, c1, n);
      store(c + (m + 2) * ldc + n, c2, n);
      store(c + (m + 3) * ldc + n, c3, n);
    }
  for (; m < M; ++m)
    for (std::size_t n = 0; n < Np; n += L) {
      I c0(0);
      for (std::size_t k = 0; k < K; ++k)
        c0 += I(std::int32_t(a[m * K + k])) * I::load_unaligned(wb + k * Np + n);
      store(c + m * ldc + n, c0, n);
    }
}

}  // namespace detail

/// Which kernel gemm_s8u8 runs on this CPU ("avx512-vnni" or "simd-int32"), for benchmarks
/// and reports.
inline const char* gemm_s8u8_kernel() {
  return detail::cpu_has_avx512_vnni() ? "avx512-vnni" : "simd-int32";
}

/// c = a · b with the weights packed once (see packed_weights); single-threaded (callers split
/// the work, e.g. one image each).
inline void gemm_s8u8(const packed_weights& w, std::size_t N, const std::uint8_t* b,
                      std::size_t ldb, std::int32_t* c, std::size_t ldc) {
  if (w.M == 0 || N == 0) return;
  if (w.K == 0) {
    for (std::size_t m = 0; m < w.M; ++m) std::fill(c + m * ldc, c + m * ldc + N, 0);
    return;
  }
#if QKIT_RUNTIME_VNNI
  if (detail::cpu_has_avx512_vnni()) {
    detail::vnni_gemm(w, N, b, ldb, c, ldc);
    return;
  }
#endif
  detail::simd_gemm(w, N, b, ldb, c, ldc);
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution: one filter per channel (groups = C = O), one image; acc[c][oh][ow] =
// Σ (x - x_zero_point) · w over the taps inside the input (padding contributes zero). The
// weights are given as int32 with their zero point already taken off (w − z_w).

/// The scalar reference.
inline void depthwise_u8_reference(const conv2d_shape& s, const std::uint8_t* x,
                                     std::int32_t x_zero_point, const std::int32_t* w,
                                     std::int32_t* acc) {
  const std::size_t OH = s.OH(), OW = s.OW();
  const auto& p = s.p;
  for (std::size_t c = 0; c < s.C; ++c)
    for (std::size_t oh = 0; oh < OH; ++oh)
      for (std::size_t ow = 0; ow < OW; ++ow) {
        std::int32_t sum = 0;
        for (std::size_t kh = 0; kh < s.KH; ++kh)
          for (std::size_t kw = 0; kw < s.KW; ++kw) {
            const std::ptrdiff_t ih = std::ptrdiff_t(oh * p.stride_h + kh * p.dilation_h) -
                                      std::ptrdiff_t(p.pad_top);
            const std::ptrdiff_t iw = std::ptrdiff_t(ow * p.stride_w + kw * p.dilation_w) -
                                      std::ptrdiff_t(p.pad_left);
            if (ih < 0 || iw < 0 || ih >= std::ptrdiff_t(s.H) || iw >= std::ptrdiff_t(s.W)) continue;
            sum += (std::int32_t(x[(c * s.H + std::size_t(ih)) * s.W + std::size_t(iw)]) - x_zero_point) *
                   std::int32_t(w[(c * s.KH + kh) * s.KW + kw]);
          }
        acc[(c * OH + oh) * OW + ow] = sum;
      }
}

/// The fast version: each channel's plane is copied once into zero-bordered int32 planes of
/// x − x_zero_point, split by column phase (column c of the padded plane goes to phase c mod
/// stride_w, index c / stride_w), so that every tap of every output row reads contiguous
/// values whatever the stride; int32 SIMD multiply-adds over the row, exact like the reference.
inline void depthwise_u8(const conv2d_shape& s, const std::uint8_t* x, std::int32_t x_zero_point,
                           const std::int32_t* w, std::int32_t* acc) {
  using I = simd<std::int32_t>;
  constexpr std::size_t L = I::size;
  const std::size_t OH = s.OH(), OW = s.OW();
  const auto& p = s.p;
  const std::size_t sw = p.stride_w;
  const std::size_t PH = s.H + p.pad_top + p.pad_bottom, PW = s.W + p.pad_left + p.pad_right;
  const std::size_t OWp = (OW + L - 1) / L * L;
  // Row length of a phase plane: its own columns, or what the last (padded) output vector of
  // the last tap reads, whichever is more; the excess stays zero.
  const std::size_t RW = std::max((PW + sw - 1) / sw, OWp + (s.KW - 1) * p.dilation_w / sw);
  std::int32_t* planes = detail::integer_scratch<std::int32_t, 2>(sw * PH * RW + L);
  std::int32_t* tmp = planes + sw * PH * RW;
  const std::size_t taps = s.KH * s.KW;
  std::vector<const std::int32_t*> tap_base(taps);  // per tap, the phase plane and column offset
  std::vector<std::size_t> tap_row(taps);
  for (std::size_t kh = 0; kh < s.KH; ++kh)
    for (std::size_t kw = 0; kw < s.KW; ++kw) {
      const std::size_t off = kw * p.dilation_w;
      tap_base[kh * s.KW + kw] = planes + (off % sw) * PH * RW + off / sw;
      tap_row[kh * s.KW + kw] = kh * p.dilation_h;
    }
  for (std::size_t c = 0; c < s.C; ++c) {
    std::fill(planes, planes + sw * PH * RW, 0);
    for (std::size_t h = 0; h < s.H; ++h) {
      const std::uint8_t* src = x + (c * s.H + h) * s.W;
      for (std::size_t ph = 0; ph < sw; ++ph) {
        // The first padded column at or after pad_left in this phase; its index in the phase
        // plane then advances by one per step of sw columns (no division per element).
        const std::size_t col0 = p.pad_left + (ph + sw - p.pad_left % sw) % sw;
        std::int32_t* dst = planes + (ph * PH + h + p.pad_top) * RW + col0 / sw;
        for (std::size_t i = col0 - p.pad_left; i < s.W; i += sw) *dst++ = std::int32_t(src[i]) - x_zero_point;
      }
    }
    const std::int32_t* wc = w + c * taps;
    std::int32_t* out = acc + c * OH * OW;
    for (std::size_t oh = 0; oh < OH; ++oh) {
      const std::size_t row0 = oh * p.stride_h;
      for (std::size_t ob = 0; ob < OWp; ob += L) {
        I a(0);
        for (std::size_t t = 0; t < taps; ++t)
          a += I(wc[t]) * I::load_unaligned(tap_base[t] + (row0 + tap_row[t]) * RW + ob);
        if (ob + L <= OW) {
          a.store_unaligned(out + oh * OW + ob);
        } else {
          a.store_unaligned(tmp);
          std::copy(tmp, tmp + (OW - ob), out + oh * OW + ob);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Requantization (MLAS's MlasRequantizeOutput): y = clamp(round_half_even(float(acc) · scale),
// 0 - zp, 255 - zp) + zp, the clamp taken in float before rounding (the same integers either
// way for integer bounds).

inline std::uint8_t requantize_one(std::int32_t acc, float scale, std::int32_t zero_point) {
  float v = static_cast<float>(acc) * scale;
  v = std::min(std::max(v, float(0 - zero_point)), float(255 - zero_point));
  return static_cast<std::uint8_t>(static_cast<std::int32_t>(std::nearbyint(v)) + zero_point);
}

inline void requantize_reference(const std::int32_t* acc, std::size_t n, float scale,
                                 std::int32_t zero_point, std::uint8_t* y) {
  for (std::size_t i = 0; i < n; ++i) y[i] = requantize_one(acc[i], scale, zero_point);
}

inline void requantize(const std::int32_t* acc, std::size_t n, float scale, std::int32_t zero_point,
                       std::uint8_t* y) {
  using F = simd<float>;
  using I = simd<std::int32_t>;
  constexpr std::size_t L = F::size;
  const F s(scale), lo(float(0 - zero_point)), hi(float(255 - zero_point));
  const I zp(zero_point);
  alignas(64) std::int32_t buf[L];
  std::size_t i = 0;
  for (; i + L <= n; i += L) {
    F v = xsimd::batch_cast<float>(I::load_unaligned(acc + i)) * s;
    v = xsimd::min(xsimd::max(v, lo), hi);
    (xsimd::batch_cast<std::int32_t>(xsimd::nearbyint(v)) + zp).store_aligned(buf);
    for (std::size_t j = 0; j < L; ++j) y[i + j] = static_cast<std::uint8_t>(buf[j]);
  }
  for (; i < n; ++i) y[i] = requantize_one(acc[i], scale, zero_point);
}

}  // namespace qkit::integer
