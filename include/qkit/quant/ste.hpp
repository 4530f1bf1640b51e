// qkit/quant/ste.hpp — the backward of quantize-dequantize for QAT: the straight-through
// estimator (the gradient passes where qdq does not clamp, zero where it does) and the
// gradients of the loss with respect to the encoding's min and max (range learning, AIMET's
// formulas; docs/qat.md derives them).
//
// With T = clamp(round(x/Δ), o, o + N) the grid integer qdq lands on (x̂ = Δ·T, o the offset,
// N the steps) and round() passed straight through:
//   ∂x̂/∂x = mask                       (1 inside the grid, 0 where the clamp acts)
//   ∂x̂/∂Δ = T − mask·x/Δ
//   ∂x̂/∂o = Δ·(1 − mask)               (only where clamped: the ends move with the offset)
// so one pass over (x, g) gives the two sums every range gradient is made of,
//   A = Σ g·(T − mask·x/Δ)     and     B = Σ g·(1 − mask),
// and range_gradient_of turns them into ∂L/∂min and ∂L/∂max for the encoding's scheme.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../tensor/thread_pool.hpp"
#include "encoding.hpp"
#include "qdq.hpp"

namespace qkit {

/// The two sums of one grid's backward (see the header comment).
struct ste_sums {
  double a = 0.0;  ///< Σ g·(T − mask·x/Δ)
  double b = 0.0;  ///< Σ g·(1 − mask)
};

/// ∂L/∂min and ∂L/∂max of one encoding.
struct range_gradient {
  double dmin = 0.0;
  double dmax = 0.0;
};

namespace detail {

// One block (at most ste_block_size values) of the grid backward: g *= mask, and the block's A
// and B when a_out is given. The mask and T are computed as the forward's kernels compute them
// (qdq.hpp: the same division, rounding and clamps, SIMD and scalar alike), so the mask is the
// forward's bit for bit. A and B are summed in double: the SIMD part in per-lane accumulators
// added lane by lane at the end, the tail after — a fixed order, whatever the thread count.
inline constexpr std::size_t ste_block_size = 4096;

inline void ste_block(const float* x, float* g, std::size_t n, const qdq_params& p, rounding r,
                      double* a_out, double* b_out) {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  const B s(p.scale), lo(p.lo), hi(p.hi), fmin(p.fmin), fmax(p.fmax), off(p.off), one(1.0f),
      zero(0.0f);
  const bool even = r == rounding::half_even;
  // T, the mask (1 inside) and x inside the grid (0 outside, so an infinite x that was clamped
  // adds nothing, as in the scalar formula) of each value, kept for the sums.
  alignas(64) float tcs[ste_block_size];
  alignas(64) float ins[ste_block_size];
  alignas(64) float xin[ste_block_size];
  const bool sums = a_out != nullptr;
  const std::size_t nv = n - n % W;
  for (std::size_t i = 0; i < nv; i += W) {
    const B v = B::load_unaligned(x + i);
    typename B::batch_bool_type in;
    B tc;
    if (even) {
      const B t = xsimd::nearbyint(v / s);
      in = (t >= lo) & (t <= hi);
      tc = min_or_second(max_or_second(t, lo), hi);
    } else {
      in = (v >= fmin) & (v <= fmax);
      tc = qdq_away_qv(v, s, off, fmin, fmax) + off;
    }
    const B m = xsimd::select(in, one, zero);
    if (sums) {
      tc.store_aligned(tcs + i);
      m.store_aligned(ins + i);
      xsimd::select(in, v, zero).store_aligned(xin + i);
    } else {
      xsimd::select(in, B::load_unaligned(g + i), zero).store_unaligned(g + i);
    }
  }
  for (std::size_t i = nv; i < n; ++i) {
    const float v = x[i];
    bool in;
    float tc;
    if (even) {
      const float t = std::nearbyint(v / p.scale);
      in = t >= p.lo && t <= p.hi;
      tc = t > p.lo ? (t < p.hi ? t : p.hi) : p.lo;
    } else {
      in = v >= p.fmin && v <= p.fmax;
      tc = qdq_away_q(v, p.scale, p.off, p.fmin, p.fmax) + p.off;
    }
    if (sums) {
      tcs[i] = tc;
      ins[i] = in ? 1.0f : 0.0f;
      xin[i] = in ? v : 0.0f;
    } else if (!in) {
      g[i] = 0.0f;
    }
  }
  if (!sums) return;
  // A = Σ g·(T − mask·x/Δ), B = Σ g·(1 − mask), in double (x/Δ divided in double, as the
  // scalar formula writes it), then g = mask ? g : 0.
  using D = simd<double>;
  constexpr std::size_t WD = D::size;
  const D scale_d(double(p.scale)), zero_d(0.0);
  D acc_a(0.0), acc_b(0.0);
  const std::size_t nd = n - n % WD;
  for (std::size_t i = 0; i < nd; i += WD) {
    const D gd = D::load_unaligned(g + i), xd = D::load_unaligned(xin + i);
    const auto inside = D::load_unaligned(ins + i) != zero_d;
    acc_a += gd * (D::load_unaligned(tcs + i) - xd / scale_d);
    acc_b += xsimd::select(inside, zero_d, gd);
  }
  alignas(64) double la[WD], lb[WD];
  acc_a.store_aligned(la);
  acc_b.store_aligned(lb);
  double a = 0.0, b = 0.0;
  for (std::size_t k = 0; k < WD; ++k) {
    a += la[k];
    b += lb[k];
  }
  for (std::size_t i = nd; i < n; ++i) {
    const double gi = g[i];
    a += gi * (double(tcs[i]) - double(xin[i]) / double(p.scale));
    b += ins[i] != 0.0f ? 0.0 : gi;
  }
  *a_out = a;
  *b_out = b;
  for (std::size_t i = 0; i < nv; i += W)
    xsimd::select(B::load_aligned(ins + i) != zero, B::load_unaligned(g + i), zero)
        .store_unaligned(g + i);
  for (std::size_t i = nv; i < n; ++i)
    if (ins[i] == 0.0f) g[i] = 0.0f;
}

/// g *= mask over n values of one integer grid; with `sums`, also accumulates A and B. The
/// mask and T are those of qdq with the same rounding: half-even rounds x/Δ and clamps the
/// integer to [offset, top]; half-away (AIMET's core) clamps x to [min, max] first. The work is
/// split in fixed blocks over the thread pool and the blocks' sums are added in block order, so
/// the result does not depend on the thread count.
inline void ste_backward_grid(const float* x, float* g, std::size_t n, const encoding& e,
                              rounding r, ste_sums* sums) {
  const qdq_params p = params_of(e);
  constexpr std::size_t block = ste_block_size;
  const std::size_t blocks = (n + block - 1) / block;
  std::vector<double> a(sums ? blocks : 0), b(sums ? blocks : 0);
  parallel_for(0, blocks, 4, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t k = lo; k < hi; ++k) {
      const std::size_t at = k * block, len = std::min(block, n - at);
      ste_block(x + at, g + at, len, p, r, sums ? &a[k] : nullptr, sums ? &b[k] : nullptr);
    }
  });
  if (sums)
    for (std::size_t k = 0; k < blocks; ++k) {
      sums->a += a[k];
      sums->b += b[k];
    }
}

/// Float16: gradients pass where the value is representable (|x| < 65520), as ste_mask says.
inline void ste_backward_fp16(const float* x, float* g, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    if (!(std::fabs(x[i]) < 65520.0f)) g[i] = 0.0f;
}

}  // namespace detail

/// Straight-through backward of qdq(x) with one encoding: g (∂L/∂x̂ on entry) becomes ∂L/∂x in
/// place. With `sums` (integer grids only) A and B are added to it for range learning.
/// Pass-through encodings leave g alone.
inline void ste_backward(const float* x, float* g, std::size_t n, const encoding& e,
                         rounding r = rounding::half_even, ste_sums* sums = nullptr) {
  switch (detail::kind_of(e)) {
    case detail::qdq_kind::passthrough: return;
    case detail::qdq_kind::fp16: detail::ste_backward_fp16(x, g, n); return;
    case detail::qdq_kind::grid: detail::ste_backward_grid(x, g, n, e, r, sums); return;
  }
}

/// The same per channel, data laid out [outer, channels, inner] (channel_layout_of); `sums`,
/// when given, has one entry per channel.
inline void ste_backward_per_channel(const float* x, float* g, std::size_t outer,
                                     std::size_t channels, std::size_t inner,
                                     const encoding* encs, rounding r = rounding::half_even,
                                     ste_sums* sums = nullptr) {
  for (std::size_t ch = 0; ch < channels; ++ch) (void)detail::kind_of(encs[ch]);
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      ste_backward(x + at, g + at, inner, encs[ch], r, sums ? sums + ch : nullptr);
    }
}

/// ∂L/∂min and ∂L/∂max from one grid's sums, for an encoding made from the learned range
/// [learned_min, learned_max] under scheme `s` at `bitwidth` bits (AIMET's formulas):
///   asymmetric, Δ = (max − min)/N, o = round(min/Δ):
///     ∂L/∂max = A/N − B·min/(N·Δ)        ∂L/∂min = −A/N + B + B·min/(N·Δ)
///     (AIMET writes them t1 = A/N, t2 = N/(max − min)²·Σ Δ·g·(1 − mask): −t1 + max·t2 and
///      t1 − min·t2, the same numbers)
///   symmetric, Δ = max/⌊N/2⌋ (N one step fewer when strict), offset fixed:
///     ∂L/∂max = A/⌊N/2⌋, ∂L/∂min = −∂L/∂max (min is −max)
///   unsigned symmetric, Δ = max/N, offset 0: ∂L/∂max = A/N, ∂L/∂min = 0.
inline range_gradient range_gradient_of(const ste_sums& s, double learned_min, double learned_max,
                                        int bitwidth, const scheme& sc) {
  const double steps = std::ldexp(1.0, bitwidth) - 1.0;
  range_gradient r;
  if (sc.symmetric && sc.unsigned_symmetric && learned_min >= 0.0) {
    r.dmax = s.a / steps;
    return r;
  }
  if (sc.symmetric) {
    const double half = std::floor((sc.strict ? steps - 1.0 : steps) / 2.0);
    r.dmax = s.a / half;
    r.dmin = -r.dmax;
    return r;
  }
  const double delta = (learned_max - learned_min) / steps;
  QKIT_PRECONDITION(delta > 0.0 && std::isfinite(delta), config_error,
                    "range gradient: the learned range [", learned_min, ", ", learned_max,
                    "] is empty or not finite");
  const double t = s.b * learned_min / (steps * delta);
  r.dmax = s.a / steps - t;
  r.dmin = -s.a / steps + s.b + t;
  return r;
}

}  // namespace qkit
