// qkit/calib/stats.hpp — the statistics kernels calibration reads its data with: a fused
// min/max + NaN/Inf scan, abs-max, and two histogram updates (qkit's exact power-of-two bins
// and AIMET's rounded 512-bin PDF). Each SIMD kernel has its scalar reference beside it and
// gives the same result bit for bit, so that calibration never depends on the instruction set.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <mutex>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/thread_pool.hpp"

namespace qkit {

/// What one pass over calibration data learns. min/max are over every value that is not NaN
/// (±Inf included); a signed zero is reported as +0 so the result does not depend on the
/// order in which lanes met -0 and +0.
struct scan_result {
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  float min = std::numeric_limits<float>::infinity();
  float max = -std::numeric_limits<float>::infinity();
  std::size_t nonfinite = 0;           ///< how many values are NaN or ±Inf
  std::size_t first_nonfinite = npos;  ///< index of the first of them
  bool all_finite() const { return nonfinite == 0; }
  friend bool operator==(const scan_result&, const scan_result&) = default;
};

namespace detail {
// Chunks for the threaded wrappers: big enough that a thread's start-up is paid back.
inline constexpr std::size_t stats_grain = std::size_t{1} << 17;

inline void combine(scan_result& into, const scan_result& part, std::size_t part_begin) {
  if (part.min < into.min) into.min = part.min;
  if (part.max > into.max) into.max = part.max;
  if (part.nonfinite != 0) {
    const std::size_t first = part_begin + part.first_nonfinite;
    if (into.nonfinite == 0 || first < into.first_nonfinite) into.first_nonfinite = first;
    into.nonfinite += part.nonfinite;
  }
}

inline bool is_finite_scalar(float x) {
  return std::fabs(x) <= std::numeric_limits<float>::max();
}

inline scan_result scan_min_max_block(const float* x, std::size_t n) {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  scan_result r;
  const std::size_t nv = n - n % W;
  if (nv != 0) {
    B mn(std::numeric_limits<float>::infinity());
    B mx(-std::numeric_limits<float>::infinity());
    const B big(std::numeric_limits<float>::max());
    for (std::size_t i = 0; i < nv; i += W) {
      const B v = B::load_unaligned(x + i);
      // select with a strict comparison ignores NaN exactly like the scalar `if (x < m)`.
      mn = xsimd::select(v < mn, v, mn);
      mx = xsimd::select(v > mx, v, mx);
      if (!xsimd::all(xsimd::abs(v) <= big)) {
        // Rare (and an error for calibration): count this block's non-finite values.
        for (std::size_t k = i; k < i + W; ++k) {
          if (!is_finite_scalar(x[k])) {
            if (r.nonfinite == 0) r.first_nonfinite = k;
            ++r.nonfinite;
          }
        }
      }
    }
    alignas(64) float lo[W], hi[W];
    mn.store_aligned(lo);
    mx.store_aligned(hi);
    for (std::size_t k = 0; k < W; ++k) {
      if (lo[k] < r.min) r.min = lo[k];
      if (hi[k] > r.max) r.max = hi[k];
    }
  }
  for (std::size_t i = nv; i < n; ++i) {
    const float v = x[i];
    if (v < r.min) r.min = v;
    if (v > r.max) r.max = v;
    if (!is_finite_scalar(v)) {
      if (r.nonfinite == 0) r.first_nonfinite = i;
      ++r.nonfinite;
    }
  }
  return r;
}

inline float abs_max_block(const float* x, std::size_t n) {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  float m = 0.0f;
  const std::size_t nv = n - n % W;
  if (nv != 0) {
    B acc(0.0f);
    for (std::size_t i = 0; i < nv; i += W) {
      const B a = xsimd::abs(B::load_unaligned(x + i));
      acc = xsimd::select(a > acc, a, acc);
    }
    alignas(64) float lanes[W];
    acc.store_aligned(lanes);
    for (std::size_t k = 0; k < W; ++k)
      if (lanes[k] > m) m = lanes[k];
  }
  for (std::size_t i = nv; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > m) m = a;
  }
  return m;
}
}  // namespace detail

/// Scalar reference of scan_min_max: one plain loop.
inline scan_result scan_min_max_reference(const float* x, std::size_t n) {
  scan_result r;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (v < r.min) r.min = v;
    if (v > r.max) r.max = v;
    if (!detail::is_finite_scalar(v)) {
      if (r.nonfinite == 0) r.first_nonfinite = i;
      ++r.nonfinite;
    }
  }
  r.min += 0.0f;  // -0 -> +0
  r.max += 0.0f;
  return r;
}

/// Fused min, max and NaN/Inf scan in one read of the data (SIMD, threaded above 128 Ki
/// values; min/max and counts combine exactly, so the thread count never shows).
inline scan_result scan_min_max(const float* x, std::size_t n) {
  scan_result r;
  if (n >= 2 * detail::stats_grain && get_num_threads() > 1) {
    std::mutex m;
    parallel_for(0, n, detail::stats_grain, [&](std::size_t lo, std::size_t hi) {
      const scan_result part = detail::scan_min_max_block(x + lo, hi - lo);
      std::lock_guard g(m);
      detail::combine(r, part, lo);
    });
  } else {
    r = detail::scan_min_max_block(x, n);
  }
  r.min += 0.0f;
  r.max += 0.0f;
  return r;
}

/// Scalar reference of abs_max.
inline float abs_max_reference(const float* x, std::size_t n) {
  float m = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > m) m = a;
  }
  return m;
}

/// Largest |x| (NaN ignored, Inf counts; 0 for no data).
inline float abs_max(const float* x, std::size_t n) {
  if (n >= 2 * detail::stats_grain && get_num_threads() > 1) {
    std::mutex mu;
    float m = 0.0f;
    parallel_for(0, n, detail::stats_grain, [&](std::size_t lo, std::size_t hi) {
      const float part = detail::abs_max_block(x + lo, hi - lo);
      std::lock_guard g(mu);
      if (part > m) m = part;
    });
    return m;
  }
  return detail::abs_max_block(x, n);
}

/// qkit's exact histogram grid: bin j holds the values x with floor(x / w) == base + j, where
/// w = 2^shift. Because w is a power of two, x / w is exact in float (x * 2^-shift), so the
/// bin of every value is the mathematical floor, identical in SIMD and scalar code, and
/// merging bin pairs (2j, 2j+1) is exactly the bin of the doubled width.
/// Requires |base| + bins <= 2^24 so that bin numbers are exact floats.
struct bin_grid {
  int shift = 0;
  std::int64_t base = 0;
  std::size_t bins = 0;
  double width() const { return std::ldexp(1.0, shift); }
  friend bool operator==(const bin_grid&, const bin_grid&) = default;
};

/// The exact global bin floor(x / 2^shift) of one value (the scalar definition).
inline double exact_bin_of(float x, int shift) {
  const float v = x * std::ldexp(1.0f, -shift);
  float f = std::floor(v);
  // A negative value so small that x * 2^-shift underflowed to -0 still lies in bin -1.
  if (v == 0.0f && x < 0.0f) f = -1.0f;
  return f;
}

namespace detail {
inline void check_grid(const bin_grid& g) {
  QKIT_PRECONDITION(g.shift >= -126 && g.shift <= 127, calibration_error, "histogram bin width 2^",
                    g.shift, " is outside float's range");
  QKIT_PRECONDITION(g.base >= -16777216 && g.base <= 16777216 &&
                        g.base + static_cast<std::int64_t>(g.bins) <= 16777217,
                    calibration_error, "histogram base bin ", g.base, " with ", g.bins,
                    " bins leaves float's exact integers (|bin| <= 2^24)");
}

inline constexpr std::size_t index_chunk = 512;  // a multiple of every SIMD width

// Bin increments of many values in few bins form a chain of store-to-load dependencies on
// the same counter. Four interleaved copies of the counts (lane k -> copy k % 4) break the
// chain; they are added up at the end, so the counts are the same integers.
class scatter_counts {
 public:
  scatter_counts(std::size_t n, std::size_t bins, std::uint64_t* counts)
      : bins_(bins), counts_(counts), split_(n >= 4 * bins && n >= 1024) {
    if (split_) sub_.assign(4 * bins, 0);
  }
  ~scatter_counts() {
    if (!split_) return;
    for (std::size_t k = 0; k < 4; ++k)
      for (std::size_t b = 0; b < bins_; ++b) counts_[b] += sub_[k * bins_ + b];
  }
  scatter_counts(const scatter_counts&) = delete;
  scatter_counts& operator=(const scatter_counts&) = delete;

  // Adds m bin indices (those outside [0, bins) are skipped); returns how many.
  std::size_t add(const std::int32_t* idx, std::size_t m) {
    // Locals, not members: a count store could otherwise alias bins_ (both unsigned long).
    std::size_t counted = 0;
    const std::uint32_t bins = static_cast<std::uint32_t>(bins_);
    std::uint64_t* const sub = split_ ? sub_.data() : nullptr;
    std::uint64_t* const counts = counts_;
    const std::size_t stride = bins_;
    if (sub != nullptr) {
      for (std::size_t k = 0; k < m; ++k) {
        const std::uint32_t b = static_cast<std::uint32_t>(idx[k]);
        if (b < bins) {
          ++sub[(k & 3) * stride + b];
          ++counted;
        }
      }
    } else {
      for (std::size_t k = 0; k < m; ++k) {
        const std::uint32_t b = static_cast<std::uint32_t>(idx[k]);
        if (b < bins) {
          ++counts[b];
          ++counted;
        }
      }
    }
    return counted;
  }

 private:
  std::size_t bins_;
  std::uint64_t* counts_;
  bool split_;
  std::vector<std::uint64_t> sub_;
};

inline std::size_t histogram_update_block(const float* x, std::size_t n, const bin_grid& g,
                                          std::uint64_t* counts) {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  const float scale = std::ldexp(1.0f, -g.shift);
  const float basef = static_cast<float>(g.base);
  const std::uint32_t bins = static_cast<std::uint32_t>(g.bins);
  std::size_t counted = 0;
  const std::size_t nv = n - n % W;
  // Indices of a chunk are computed in SIMD first, then counted: fewer store/load turnarounds.
  alignas(64) std::int32_t idx[index_chunk];
  scatter_counts scatter(nv, g.bins, counts);
  const B vscale(scale), vbase(basef), zero(0.0f), minus_one(-1.0f), top(static_cast<float>(bins));
  for (std::size_t i0 = 0; i0 < nv; i0 += index_chunk) {
    const std::size_t m = std::min(index_chunk, nv - i0);
    for (std::size_t k = 0; k < m; k += W) {
      const B v = B::load_unaligned(x + i0 + k);
      const B s = v * vscale;
      B f = xsimd::floor(s);
      f = xsimd::select((s == zero) & (v < zero), minus_one, f);
      const B j = f - vbase;
      // Out of range, NaN and Inf all become -1, which the counting skips.
      const B jc = xsimd::select((j >= zero) & (j < top), j, minus_one);
      xsimd::batch_cast<std::int32_t>(jc).store_aligned(idx + k);
    }
    counted += scatter.add(idx, m);
  }
  for (std::size_t i = nv; i < n; ++i) {
    const double j = exact_bin_of(x[i], g.shift) - basef;
    if (j >= 0.0 && j < static_cast<double>(bins)) {
      ++counts[static_cast<std::size_t>(j)];
      ++counted;
    }
  }
  return counted;
}

// std::round on a batch (halves away from zero), exactly: t = trunc(v) and v - t are exact
// in float, and |v - t| >= 0.5 decides. (xsimd 8.1's generic round is much slower here.)
template <class B>
inline B round_half_away_batch(const B& v) {
  const B t = xsimd::trunc(v);
  const B frac = v - t;
  const B one(1.0f), zero(0.0f);
  const B step = xsimd::select(xsimd::abs(frac) >= B(0.5f), one, zero);
  return t + xsimd::copysign(step, v);
}

// AIMET's bucket rule: index = round_half_away(x / bucket - offset), in float.
inline std::size_t aimet_histogram_block(const float* x, std::size_t n, float bucket,
                                         float offset, std::size_t bins, std::uint64_t* counts) {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  std::size_t counted = 0;
  const std::size_t nv = n - n % W;
  alignas(64) std::int32_t idx[index_chunk];
  scatter_counts scatter(nv, bins, counts);
  const B vb(bucket), vo(offset), zero(0.0f), minus_one(-1.0f), top(static_cast<float>(bins));
  for (std::size_t i0 = 0; i0 < nv; i0 += index_chunk) {
    const std::size_t m = std::min(index_chunk, nv - i0);
    for (std::size_t k = 0; k < m; k += W) {
      const B t = round_half_away_batch(B::load_unaligned(x + i0 + k) / vb - vo);
      const B tc = xsimd::select((t >= zero) & (t < top), t, minus_one);
      xsimd::batch_cast<std::int32_t>(tc).store_aligned(idx + k);
    }
    counted += scatter.add(idx, m);
  }
  for (std::size_t i = nv; i < n; ++i) {
    const float t = std::round(x[i] / bucket - offset);
    if (t >= 0.0f && t < static_cast<float>(bins)) {
      ++counts[static_cast<std::size_t>(t)];
      ++counted;
    }
  }
  return counted;
}

template <class Block>
inline std::size_t threaded_histogram(std::size_t n, std::size_t bins, std::uint64_t* counts,
                                      Block&& block) {
  if (n < 2 * stats_grain || get_num_threads() <= 1) return block(std::size_t{0}, n, counts);
  std::mutex m;
  std::size_t counted = 0;
  parallel_for(0, n, stats_grain, [&](std::size_t lo, std::size_t hi) {
    std::vector<std::uint64_t> local(bins, 0);
    const std::size_t c = block(lo, hi, local.data());
    std::lock_guard g(m);
    for (std::size_t b = 0; b < bins; ++b) counts[b] += local[b];
    counted += c;
  });
  return counted;
}
}  // namespace detail

/// Scalar reference of histogram_update.
inline std::size_t histogram_update_reference(const float* x, std::size_t n, const bin_grid& g,
                                              std::uint64_t* counts) {
  detail::check_grid(g);
  std::size_t counted = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double j = exact_bin_of(x[i], g.shift) - static_cast<double>(static_cast<float>(g.base));
    if (j >= 0.0 && j < static_cast<double>(g.bins)) {
      ++counts[static_cast<std::size_t>(j)];
      ++counted;
    }
  }
  return counted;
}

/// Adds each value to counts[floor(x / 2^shift) - base]; values outside the grid (and NaN,
/// Inf) are not counted. Returns how many were counted.
inline std::size_t histogram_update(const float* x, std::size_t n, const bin_grid& g,
                                    std::uint64_t* counts) {
  detail::check_grid(g);
  return detail::threaded_histogram(n, g.bins, counts,
                                    [&](std::size_t lo, std::size_t hi, std::uint64_t* c) {
                                      return detail::histogram_update_block(x + lo, hi - lo, g, c);
                                    });
}

/// Scalar reference of aimet_histogram_update.
inline std::size_t aimet_histogram_update_reference(const float* x, std::size_t n, float bucket,
                                                    float offset, std::size_t bins,
                                                    std::uint64_t* counts) {
  std::size_t counted = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float t = std::round(x[i] / bucket - offset);
    if (t >= 0.0f && t < static_cast<float>(bins)) {
      ++counts[static_cast<std::size_t>(t)];
      ++counted;
    }
  }
  return counted;
}

/// AIMET's histogram rule (its UpdatePdf): bucket = round_half_away(x / bucket - offset),
/// computed in float, kept only when inside [0, bins). Returns how many were counted.
inline std::size_t aimet_histogram_update(const float* x, std::size_t n, float bucket,
                                          float offset, std::size_t bins,
                                          std::uint64_t* counts) {
  return detail::threaded_histogram(n, bins, counts,
                                    [&](std::size_t lo, std::size_t hi, std::uint64_t* c) {
                                      return detail::aimet_histogram_block(x + lo, hi - lo, bucket,
                                                                           offset, bins, c);
                                    });
}

/// The calibration_error every range setter raises for NaN/Inf in a batch.
inline void throw_nonfinite(const scan_result& r, std::size_t n, const char* who) {
  QKIT_THROW(calibration_error, who, ": ", r.nonfinite, " of ", n,
             " calibration values are NaN or Inf (first at index ", r.first_nonfinite, ")");
}

}  // namespace qkit
