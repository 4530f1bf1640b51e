// qkit/tensor/elementwise.hpp — the elementwise and per-row reduction kernels the layers use
// (ReLU/Clip, Add, the batch-norm affine maps and statistics). Each SIMD kernel has its scalar
// reference beside it; both round identically (no fused multiply-add, the same lane-wise
// accumulation order for sums), so they agree bit for bit.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>

#include "../config.hpp"
#include "thread_pool.hpp"

namespace qkit {

namespace detail {
/// Elements per parallel chunk of a streaming kernel: big enough that a chunk costs more than
/// waking a thread.
inline constexpr std::size_t elementwise_grain = std::size_t{1} << 15;
inline constexpr std::size_t simd_width = simd<float>::size;
/// Lanes of every sum: 16, AVX-512's width, on every target (a narrower target keeps 16 / W
/// accumulators), so that a sum's order — and its rounding — does not depend on the SIMD width
/// the code was compiled for.
inline constexpr std::size_t sum_lanes = 16;
static_assert(sum_lanes % simd_width == 0, "a SIMD width that does not divide 16");
inline constexpr std::size_t sum_accumulators = sum_lanes / simd_width;
}  // namespace detail

/// Grain for parallel_for over `items` work items of `work_per_item` elements each: enough
/// items per chunk that a chunk streams at least elementwise_grain / 2 elements, so small
/// tensors (batch 1) run on the calling thread instead of paying for a wake-up.
inline std::size_t grain_for(std::size_t work_per_item) {
  const std::size_t target = detail::elementwise_grain / 2;
  return work_per_item >= target ? 1 : (target + work_per_item - 1) / std::max<std::size_t>(work_per_item, 1);
}

// ---------------------------------------------------------------------------------------------
// Scalar references.

/// y = a + b.
inline void add_reference(const float* a, const float* b, float* y, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

/// y = min(max(x, lo), hi): ReLU is lo = 0, hi = +inf; ReLU6 is lo = 0, hi = 6. Written as
/// the x86 max/min instructions behave (the bound wins on equality and on NaN), so -0 becomes
/// +0 and NaN becomes lo, identically in both paths.
inline void clamp_reference(const float* x, float* y, std::size_t n, float lo, float hi) {
  for (std::size_t i = 0; i < n; ++i) {
    const float t = x[i] > lo ? x[i] : lo;
    y[i] = t < hi ? t : hi;
  }
}

/// dx = dy where lo < x < hi, else 0 (the derivative of clamp, 0 on the flat parts and at the
/// kinks, as in PyTorch's hardtanh and relu).
inline void clamp_grad_reference(const float* x, const float* dy, float* dx, std::size_t n,
                                 float lo, float hi) {
  for (std::size_t i = 0; i < n; ++i) dx[i] = (x[i] > lo && x[i] < hi) ? dy[i] : 0.0f;
}

/// y = x * s + t (a multiply then an add: two roundings).
inline void scale_shift_reference(const float* x, float* y, std::size_t n, float s, float t) {
  for (std::size_t i = 0; i < n; ++i) y[i] = x[i] * s + t;
}

/// y = (a * ka + b * kb) + c.
inline void axpby_shift_reference(const float* a, const float* b, float* y, std::size_t n,
                                  float ka, float kb, float c) {
  for (std::size_t i = 0; i < n; ++i) y[i] = (a[i] * ka + b[i] * kb) + c;
}

/// x̂ = x * s + t and y = x̂ * g + b in one pass (batch norm's normalize then scale).
inline void normalize_affine_reference(const float* x, float* xhat, float* y, std::size_t n,
                                       float s, float t, float g, float b) {
  for (std::size_t i = 0; i < n; ++i) {
    const float h = x[i] * s + t;
    xhat[i] = h;
    y[i] = h * g + b;
  }
}

/// Sum of x in SIMD order: lane j (of W = detail::sum_lanes = 16, whatever the target's SIMD
/// width) accumulates x[j], x[j + W], ... over the first n - n % W elements, the lanes are added
/// in order 0..W-1, then the tail in order. This order is what the SIMD kernel does; the
/// reference spells it out so the two agree bit for bit, in every build.
inline float sum_reference(const float* x, std::size_t n) {
  constexpr std::size_t W = detail::sum_lanes;
  std::array<float, W> lanes{};
  const std::size_t vn = n - n % W;
  for (std::size_t i = 0; i < vn; i += W)
    for (std::size_t j = 0; j < W; ++j) lanes[j] += x[i + j];
  float s = 0.0f;
  for (std::size_t j = 0; j < W; ++j) s += lanes[j];
  for (std::size_t i = vn; i < n; ++i) s += x[i];
  return s;
}

/// Sum of a[i] * b[i], in the same order as sum_reference.
inline float dot_reference(const float* a, const float* b, std::size_t n) {
  constexpr std::size_t W = detail::sum_lanes;
  std::array<float, W> lanes{};
  const std::size_t vn = n - n % W;
  for (std::size_t i = 0; i < vn; i += W)
    for (std::size_t j = 0; j < W; ++j) lanes[j] += a[i + j] * b[i + j];
  float s = 0.0f;
  for (std::size_t j = 0; j < W; ++j) s += lanes[j];
  for (std::size_t i = vn; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// (Σ a, Σ a·b) in one pass, each in the order of sum_reference.
inline std::pair<float, float> sum_and_dot_reference(const float* a, const float* b,
                                                     std::size_t n) {
  return {sum_reference(a, n), dot_reference(a, b, n)};
}

/// Sum of (x[i] - mean)^2, in the same order as sum_reference (the second pass of a two-pass
/// variance, which does not cancel catastrophically as E[x^2] - E[x]^2 does).
inline float sum_squared_deviation_reference(const float* x, std::size_t n, float mean) {
  constexpr std::size_t W = detail::sum_lanes;
  std::array<float, W> lanes{};
  const std::size_t vn = n - n % W;
  for (std::size_t i = 0; i < vn; i += W)
    for (std::size_t j = 0; j < W; ++j) {
      const float d = x[i + j] - mean;
      lanes[j] += d * d;
    }
  float s = 0.0f;
  for (std::size_t j = 0; j < W; ++j) s += lanes[j];
  for (std::size_t i = vn; i < n; ++i) {
    const float d = x[i] - mean;
    s += d * d;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// SIMD kernels, single-threaded: they work on one row (a channel plane, a chunk); callers
// split rows over threads.

namespace detail {

/// sum_lanes lanes held in sum_accumulators batches (accumulator k holds lanes k·W ..
/// k·W + W-1).
using lane_accumulators = std::array<simd<float>, sum_accumulators>;

inline lane_accumulators zero_lanes() {
  lane_accumulators a;
  a.fill(simd<float>(0.0f));
  return a;
}

/// Adds the lanes in order 0..sum_lanes-1 (never a tree), so the scalar reference can follow.
inline float finish_lanes(const lane_accumulators& acc) {
  alignas(64) std::array<float, sum_lanes> lanes;
  for (std::size_t k = 0; k < sum_accumulators; ++k) acc[k].store_aligned(lanes.data() + k * simd_width);
  float s = 0.0f;
  for (std::size_t j = 0; j < sum_lanes; ++j) s += lanes[j];
  return s;
}

inline void add_simd(const float* a, const float* b, float* y, std::size_t n) {
  constexpr std::size_t W = simd_width;
  const std::size_t vn = n - n % W;
  for (std::size_t i = 0; i < vn; i += W)
    (simd<float>::load_unaligned(a + i) + simd<float>::load_unaligned(b + i)).store_unaligned(y + i);
  add_reference(a + vn, b + vn, y + vn, n - vn);
}

inline void clamp_simd(const float* x, float* y, std::size_t n, float lo, float hi) {
  constexpr std::size_t W = simd_width;
  const std::size_t vn = n - n % W;
  const simd<float> vlo(lo), vhi(hi);
  for (std::size_t i = 0; i < vn; i += W)
    xsimd::min(xsimd::max(simd<float>::load_unaligned(x + i), vlo), vhi).store_unaligned(y + i);
  clamp_reference(x + vn, y + vn, n - vn, lo, hi);
}

inline void clamp_grad_simd(const float* x, const float* dy, float* dx, std::size_t n, float lo,
                            float hi) {
  constexpr std::size_t W = simd_width;
  const std::size_t vn = n - n % W;
  const simd<float> vlo(lo), vhi(hi), zero(0.0f);
  for (std::size_t i = 0; i < vn; i += W) {
    const auto v = simd<float>::load_unaligned(x + i);
    xsimd::select((v > vlo) & (v < vhi), simd<float>::load_unaligned(dy + i), zero)
        .store_unaligned(dx + i);
  }
  clamp_grad_reference(x + vn, dy + vn, dx + vn, n - vn, lo, hi);
}

inline void scale_shift_simd(const float* x, float* y, std::size_t n, float s, float t) {
  constexpr std::size_t W = simd_width;
  const std::size_t vn = n - n % W;
  const simd<float> vs(s), vt(t);
  for (std::size_t i = 0; i < vn; i += W)
    (simd<float>::load_unaligned(x + i) * vs + vt).store_unaligned(y + i);
  scale_shift_reference(x + vn, y + vn, n - vn, s, t);
}

inline void axpby_shift_simd(const float* a, const float* b, float* y, std::size_t n, float ka,
                             float kb, float c) {
  constexpr std::size_t W = simd_width;
  const std::size_t vn = n - n % W;
  const simd<float> vka(ka), vkb(kb), vc(c);
  for (std::size_t i = 0; i < vn; i += W)
    ((simd<float>::load_unaligned(a + i) * vka + simd<float>::load_unaligned(b + i) * vkb) + vc)
        .store_unaligned(y + i);
  axpby_shift_reference(a + vn, b + vn, y + vn, n - vn, ka, kb, c);
}

inline void normalize_affine_simd(const float* x, float* xhat, float* y, std::size_t n, float s,
                                  float t, float g, float b) {
  constexpr std::size_t W = simd_width;
  const std::size_t vn = n - n % W;
  const simd<float> vs(s), vt(t), vg(g), vb(b);
  for (std::size_t i = 0; i < vn; i += W) {
    const auto h = simd<float>::load_unaligned(x + i) * vs + vt;
    h.store_unaligned(xhat + i);
    (h * vg + vb).store_unaligned(y + i);
  }
  normalize_affine_reference(x + vn, xhat + vn, y + vn, n - vn, s, t, g, b);
}

}  // namespace detail

/// Sum of x, in the order sum_reference documents.
inline float sum(const float* x, std::size_t n) {
  constexpr std::size_t W = detail::simd_width, L = detail::sum_lanes;
  const std::size_t vn = n - n % L;
  auto acc = detail::zero_lanes();
  for (std::size_t i = 0; i < vn; i += L)
    for (std::size_t k = 0; k < L / W; ++k) acc[k] += simd<float>::load_unaligned(x + i + k * W);
  float s = detail::finish_lanes(acc);
  for (std::size_t i = vn; i < n; ++i) s += x[i];
  return s;
}

/// Sum of a[i] * b[i] (no FMA, so it matches dot_reference).
inline float dot(const float* a, const float* b, std::size_t n) {
  constexpr std::size_t W = detail::simd_width, L = detail::sum_lanes;
  const std::size_t vn = n - n % L;
  auto acc = detail::zero_lanes();
  for (std::size_t i = 0; i < vn; i += L)
    for (std::size_t k = 0; k < L / W; ++k)
      acc[k] += simd<float>::load_unaligned(a + i + k * W) * simd<float>::load_unaligned(b + i + k * W);
  float s = detail::finish_lanes(acc);
  for (std::size_t i = vn; i < n; ++i) s += a[i] * b[i];
  return s;
}

/// (Σ a, Σ a·b) in one pass over a and b (equal to sum_and_dot_reference bit for bit).
inline std::pair<float, float> sum_and_dot(const float* a, const float* b, std::size_t n) {
  constexpr std::size_t W = detail::simd_width, L = detail::sum_lanes;
  const std::size_t vn = n - n % L;
  auto as = detail::zero_lanes(), ab = detail::zero_lanes();
  for (std::size_t i = 0; i < vn; i += L)
    for (std::size_t k = 0; k < L / W; ++k) {
      const auto va = simd<float>::load_unaligned(a + i + k * W);
      as[k] += va;
      ab[k] += va * simd<float>::load_unaligned(b + i + k * W);
    }
  float s = detail::finish_lanes(as), d = detail::finish_lanes(ab);
  for (std::size_t i = vn; i < n; ++i) s += a[i];
  for (std::size_t i = vn; i < n; ++i) d += a[i] * b[i];
  return {s, d};
}

/// Sum of (x[i] - mean)^2.
inline float sum_squared_deviation(const float* x, std::size_t n, float mean) {
  constexpr std::size_t W = detail::simd_width, L = detail::sum_lanes;
  const std::size_t vn = n - n % L;
  const simd<float> vm(mean);
  auto acc = detail::zero_lanes();
  for (std::size_t i = 0; i < vn; i += L)
    for (std::size_t k = 0; k < L / W; ++k) {
      const auto d = simd<float>::load_unaligned(x + i + k * W) - vm;
      acc[k] += d * d;
    }
  float s = detail::finish_lanes(acc);
  for (std::size_t i = vn; i < n; ++i) {
    const float d = x[i] - mean;
    s += d * d;
  }
  return s;
}

// Row kernels (single-threaded, for callers that already split work by channel).
inline void scale_shift_row(const float* x, float* y, std::size_t n, float s, float t) {
  detail::scale_shift_simd(x, y, n, s, t);
}
inline void normalize_affine_row(const float* x, float* xhat, float* y, std::size_t n, float s,
                                 float t, float g, float b) {
  detail::normalize_affine_simd(x, xhat, y, n, s, t, g, b);
}
inline void axpby_shift_row(const float* a, const float* b, float* y, std::size_t n, float ka,
                            float kb, float c) {
  detail::axpby_shift_simd(a, b, y, n, ka, kb, c);
}

// ---------------------------------------------------------------------------------------------
// Whole-array kernels, split over the thread pool in chunks. Each element is computed alone,
// so the thread count cannot change a result.

/// y = a + b (y may alias a or b).
inline void add(const float* a, const float* b, float* y, std::size_t n) {
  parallel_for(0, n, detail::elementwise_grain, [&](std::size_t lo, std::size_t hi) {
    detail::add_simd(a + lo, b + lo, y + lo, hi - lo);
  });
}

/// y = min(max(x, lo), hi) (y may alias x).
inline void clamp(const float* x, float* y, std::size_t n, float lo, float hi) {
  parallel_for(0, n, detail::elementwise_grain, [&](std::size_t b, std::size_t e) {
    detail::clamp_simd(x + b, y + b, e - b, lo, hi);
  });
}

/// dx = dy where lo < x < hi, else 0 (dx may alias dy).
inline void clamp_grad(const float* x, const float* dy, float* dx, std::size_t n, float lo,
                       float hi) {
  parallel_for(0, n, detail::elementwise_grain, [&](std::size_t b, std::size_t e) {
    detail::clamp_grad_simd(x + b, dy + b, dx + b, e - b, lo, hi);
  });
}

/// y = x * s + t (y may alias x).
inline void scale_shift(const float* x, float* y, std::size_t n, float s, float t) {
  parallel_for(0, n, detail::elementwise_grain, [&](std::size_t b, std::size_t e) {
    detail::scale_shift_simd(x + b, y + b, e - b, s, t);
  });
}

}  // namespace qkit
