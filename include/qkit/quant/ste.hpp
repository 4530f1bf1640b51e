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

// One block of the grid backward: g *= mask, and the block's A and B when a_out is given.
// grid(x) gives (in range, T) as the forward's kernel computes them — division and rounding as
// it does them, so the mask is the forward's bit for bit.
template <class Grid>
inline void ste_block(const float* x, float* g, std::size_t n, float scale, Grid grid,
                      double* a_out, double* b_out) {
  double a = 0.0, b = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto [in, tc] = grid(x[i]);
    const float gi = g[i];
    if (a_out) {
      a += double(gi) * (in ? double(tc) - double(x[i]) / double(scale) : double(tc));
      b += in ? 0.0 : double(gi);
    }
    g[i] = in ? gi : 0.0f;
  }
  if (a_out) {
    *a_out = a;
    *b_out = b;
  }
}

/// g *= mask over n values of one integer grid; with `sums`, also accumulates A and B. The
/// mask and T are those of qdq with the same rounding: half-even rounds x/Δ and clamps the
/// integer to [offset, top]; half-away (AIMET's core) clamps x to [min, max] first. The work is
/// split in fixed blocks over the thread pool and the blocks' sums are added in block order, so
/// the result does not depend on the thread count.
inline void ste_backward_grid(const float* x, float* g, std::size_t n, const encoding& e,
                              rounding r, ste_sums* sums) {
  const qdq_params p = params_of(e);
  constexpr std::size_t block = 4096;
  const std::size_t blocks = (n + block - 1) / block;
  std::vector<double> a(sums ? blocks : 0), b(sums ? blocks : 0);
  parallel_for(0, blocks, 4, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t k = lo; k < hi; ++k) {
      const std::size_t at = k * block, len = std::min(block, n - at);
      double* ak = sums ? &a[k] : nullptr;
      double* bk = sums ? &b[k] : nullptr;
      if (r == rounding::half_even)
        ste_block(x + at, g + at, len, p.scale, [&p](float v) {
          const float t = std::nearbyint(v / p.scale);
          return std::pair{t >= p.lo && t <= p.hi, t > p.lo ? (t < p.hi ? t : p.hi) : p.lo};
        }, ak, bk);
      else
        ste_block(x + at, g + at, len, p.scale, [&p](float v) {
          return std::pair{v >= p.fmin && v <= p.fmax,
                           qdq_away_q(v, p.scale, p.off, p.fmin, p.fmax) + p.off};
        }, ak, bk);
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
