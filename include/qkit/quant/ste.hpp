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

#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "../error.hpp"
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

/// g *= mask over n values of one integer grid; with `sums`, also accumulates A and B. The
/// mask and T are those of qdq with the same rounding: half-even rounds x/Δ and clamps the
/// integer to [offset, top]; half-away (AIMET's core) clamps x to [min, max] first.
inline void ste_backward_grid(const float* x, float* g, std::size_t n, const encoding& e,
                              rounding r, ste_sums* sums) {
  const qdq_params p = params_of(e);
  double a = 0.0, b = 0.0;
  if (r == rounding::half_even) {
    for (std::size_t i = 0; i < n; ++i) {
      const float t = std::nearbyint(x[i] / p.scale);
      const bool in = t >= p.lo && t <= p.hi;
      if (sums) {
        const float tc = t > p.lo ? (t < p.hi ? t : p.hi) : p.lo;
        a += double(g[i]) * (in ? double(tc) - double(x[i]) / double(p.scale) : double(tc));
        if (!in) b += double(g[i]);
      }
      if (!in) g[i] = 0.0f;
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      const bool in = x[i] >= p.fmin && x[i] <= p.fmax;
      if (sums) {
        const float tc = qdq_away_q(x[i], p.scale, p.off, p.fmin, p.fmax) + p.off;
        a += double(g[i]) * (in ? double(tc) - double(x[i]) / double(p.scale) : double(tc));
        if (!in) b += double(g[i]);
      }
      if (!in) g[i] = 0.0f;
    }
  }
  if (sums) {
    sums->a += a;
    sums->b += b;
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
