// qkit/calib/histogram.hpp — the two histograms behind TF-Enhanced, percentile, MSE and
// entropy calibration. exact_histogram (the default) keeps every value and is a function of
// the data alone, not of how it was batched or sharded; aimet_histogram reproduces AIMET's
// 512-bin PDF (range fixed on the first batch, later outliers dropped) for parity with AIMET.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../quant/encoding.hpp"
#include "stats.hpp"

namespace qkit {

/// Which histogram a histogram-based range setter keeps.
enum class histogram_mode {
  /// qkit's default: power-of-two bins that re-bin (exactly) as the range grows; the result
  /// does not depend on batching and shards merge exactly.
  exact,
  /// AIMET's UpdatePdf: 512 bins over the first batch's range widened 3x, later values
  /// outside it dropped, PDF = running mean of per-batch normalised histograms.
  aimet_parity,
};

/// Histogram with bins aligned on multiples of a power-of-two width w = 2^shift. Its state is
/// canonical: w is the smallest power of two (no finer than the float spacing at the largest
/// |value|) for which the data's [min, max] spans at most `capacity` bins, and every count is
/// #{x : floor(x / w) = bin}. Growing the range doubles w by adding bin pairs, which is exact,
/// so any batching or sharding of the same values gives the same histogram.
class exact_histogram {
 public:
  static constexpr std::size_t default_capacity = 2048;

  explicit exact_histogram(std::size_t capacity = default_capacity) : capacity_(capacity) {
    QKIT_PRECONDITION(capacity >= 16 && capacity <= (std::size_t{1} << 20), config_error,
                      "histogram capacity ", capacity, " is outside 16..2^20 bins");
  }

  /// Adds one batch. NaN or Inf -> calibration_error naming `who`, the count and first index.
  void observe(const float* x, std::size_t n, const char* who = "histogram") {
    const scan_result r = scan_min_max(x, n);
    if (!r.all_finite()) throw_nonfinite(r, n, who);
    if (n == 0) return;
    const float nmin = empty() ? r.min : std::min(min_, r.min);
    const float nmax = empty() ? r.max : std::max(max_, r.max);
    regrid(nmin, nmax, empty() ? required_shift(nmin, nmax) : std::max(grid_.shift, required_shift(nmin, nmax)));
    const std::size_t counted = histogram_update(x, n, grid_, counts_.data());
    QKIT_PRECONDITION(counted == n, calibration_error, who, ": internal histogram grid missed ",
                      n - counted, " values");
    total_ += n;
  }

  /// Adds the counts of another shard: the result equals observing both shards' data.
  void merge(const exact_histogram& o) {
    QKIT_PRECONDITION(capacity_ == o.capacity_, config_error, "cannot merge histograms of ",
                      capacity_, " and ", o.capacity_, " bins");
    if (o.empty()) return;
    if (empty()) {
      *this = o;
      return;
    }
    const float nmin = std::min(min_, o.min_), nmax = std::max(max_, o.max_);
    const int s = std::max({grid_.shift, o.grid_.shift, required_shift(nmin, nmax)});
    regrid(nmin, nmax, s);
    const int d = s - o.grid_.shift;
    for (std::size_t j = 0; j < o.counts_.size(); ++j) {
      if (o.counts_[j] == 0) continue;
      const std::int64_t k = (o.grid_.base + static_cast<std::int64_t>(j)) >> d;
      counts_[static_cast<std::size_t>(k - grid_.base)] += o.counts_[j];
    }
    total_ += o.total_;
  }

  bool empty() const { return total_ == 0; }
  void reset() { *this = exact_histogram(capacity_); }

  std::size_t capacity() const { return capacity_; }
  std::uint64_t total() const { return total_; }
  float min() const { return min_; }  ///< exact smallest value seen
  float max() const { return max_; }  ///< exact largest value seen
  const bin_grid& grid() const { return grid_; }
  std::size_t bins() const { return counts_.size(); }
  const std::vector<std::uint64_t>& counts() const { return counts_; }
  /// Memory this histogram holds: itself and its counts (at most capacity() of them, whatever
  /// the amount of data observed).
  std::size_t bytes() const { return sizeof(*this) + counts_.capacity() * sizeof(std::uint64_t); }
  double bin_width() const { return grid_.width(); }
  /// Left edge of bin j: (base + j) * w (exact in double).
  double bin_left(std::size_t j) const {
    // rounded(): callers add to it; a fused add would round differently (config.hpp).
    return detail::rounded(static_cast<double>(grid_.base + static_cast<std::int64_t>(j)) * grid_.width());
  }

  friend bool operator==(const exact_histogram&, const exact_histogram&) = default;

  /// The smallest shift allowed for data whose largest magnitude is m: no finer than float's
  /// spacing at m, so that x * 2^-shift is an exact float below 2^24 in magnitude.
  static int lowest_shift(float lo, float hi) {
    const float m = std::max(std::fabs(lo), std::fabs(hi));
    if (!(m >= std::numeric_limits<float>::min())) return -126;
    return std::max(-126, std::ilogb(m) - 23);
  }

 private:
  int required_shift(float lo, float hi) const {
    int s = lowest_shift(lo, hi);
    while (exact_bin_of(hi, s) - exact_bin_of(lo, s) + 1.0 > static_cast<double>(capacity_)) ++s;
    return s;
  }

  // Moves the counts onto the grid of shift s covering [lo, hi] exactly.
  void regrid(float lo, float hi, int s) {
    bin_grid g;
    g.shift = s;
    g.base = static_cast<std::int64_t>(exact_bin_of(lo, s));
    g.bins = static_cast<std::size_t>(static_cast<std::int64_t>(exact_bin_of(hi, s)) - g.base + 1);
    if (!empty() && g == grid_) {
      min_ = lo;
      max_ = hi;
      return;
    }
    std::vector<std::uint64_t> c(g.bins, 0);
    if (!empty()) {
      const int d = s - grid_.shift;
      for (std::size_t j = 0; j < counts_.size(); ++j) {
        if (counts_[j] == 0) continue;
        const std::int64_t k = (grid_.base + static_cast<std::int64_t>(j)) >> d;
        c[static_cast<std::size_t>(k - g.base)] += counts_[j];
      }
    }
    counts_ = std::move(c);
    grid_ = g;
    min_ = lo;
    max_ = hi;
  }

  std::size_t capacity_;
  std::uint64_t total_ = 0;
  float min_ = 0.0f, max_ = 0.0f;
  bin_grid grid_{};
  std::vector<std::uint64_t> counts_;
};

/// AIMET's PDF (its UpdatePdf with DTYPE float, signed values): 512 buckets whose "left
/// edges" xLeft[i] = min + i * bucket are really their centres, because a value goes to
/// bucket round_half_away(x / bucket - min / bucket). Reproduced operation for operation so
/// that the same batches give the same PDF, and hence the same encodings, as AIMET.
class aimet_histogram {
 public:
  static constexpr int bins = 512;

  void observe(const float* x, std::size_t n, const char* who = "aimet histogram") {
    const scan_result r = scan_min_max(x, n);
    if (!r.all_finite()) throw_nonfinite(r, n, who);
    if (n == 0) return;
    if (x_left_.empty()) {
      float min_val = r.min, max_val = r.max;
      // An all-zero batch cannot place the histogram; AIMET waits for a non-zero one.
      if (min_val == 0.0f && max_val == 0.0f) {
        updated_ = true;
        return;
      }
      if (min_val == max_val) max_val = std::max(max_val, min_val + 0.01f);
      const float center = (max_val + min_val) / 2;
      // (detail::rounded: the same roundings whether or not the compiler may fuse; config.hpp)
      min_val = center - detail::rounded(3 * (center - min_val));
      max_val = center + detail::rounded(3 * (max_val - center));
      const float bucket = (max_val - min_val) / bins;
      // AIMET would go on with infinite or zero-width buckets and return a meaningless
      // encoding; qkit stops here.
      QKIT_PRECONDITION(std::isfinite(min_val) && std::isfinite(max_val) && bucket > 0.0f &&
                            std::isfinite(bucket),
                        calibration_error, who, ": the AIMET-parity histogram cannot be placed over [",
                        r.min, ", ", r.max, "] (widened 3x it gives buckets of width ", bucket,
                        " in float); use histogram_mode::exact");
      x_left_.resize(bins);
      for (int i = 0; i < bins; ++i) x_left_[i] = min_val + detail::rounded(static_cast<float>(i) * bucket);
      pdf_.assign(bins, 0.0);
      iterations_ = 0;
    }
    updated_ = true;
    const float bucket = static_cast<float>(x_left_[1] - x_left_[0]);
    const float min_val = static_cast<float>(x_left_[0]);
    const float pdf_offset = min_val / bucket;
    std::vector<std::uint64_t> h(bins, 0);
    aimet_histogram_update(x, n, bucket, pdf_offset, bins, h.data());
    for (int i = 0; i < bins; ++i) {
      const double prob = static_cast<double>(h[i]) / static_cast<double>(n);
      pdf_[i] = (detail::rounded(pdf_[i] * iterations_) + prob) / (iterations_ + 1);
    }
    ++iterations_;
  }

  /// Merges a shard that used the same bucket grid: the PDF becomes the iteration-weighted
  /// mean. AIMET has no merge; this equals observing both shards' batches in sequence up to
  /// the rounding of the running mean. Shards whose first batches placed different grids
  /// cannot be merged (their dropped values are gone) and give a calibration_error.
  void merge(const aimet_histogram& o) {
    if (!o.updated_) return;
    if (o.x_left_.empty()) {
      updated_ = true;
      return;
    }
    if (x_left_.empty()) {
      *this = o;
      return;
    }
    QKIT_PRECONDITION(x_left_ == o.x_left_, calibration_error,
                      "cannot merge AIMET-parity histograms over different ranges [", x_left_[0],
                      ", ", x_left_[bins - 1], "] and [", o.x_left_[0], ", ", o.x_left_[bins - 1],
                      "]; use histogram_mode::exact to shard calibration");
    const double a = iterations_, b = o.iterations_;
    for (int i = 0; i < bins; ++i)
      pdf_[i] = (detail::rounded(pdf_[i] * a) + detail::rounded(o.pdf_[i] * b)) / (a + b);
    iterations_ += o.iterations_;
  }

  /// True until a non-empty batch was observed (all-zero batches count as observed).
  bool empty() const { return !updated_; }
  /// True once a non-zero batch placed the buckets.
  bool initialized() const { return !x_left_.empty(); }
  void reset() { *this = aimet_histogram(); }

  const std::vector<double>& x_left() const { return x_left_; }
  const std::vector<double>& pdf() const { return pdf_; }
  int iterations() const { return iterations_; }
  /// Memory this histogram holds: itself and its 512 bucket edges and PDF values.
  std::size_t bytes() const {
    return sizeof(*this) + (x_left_.capacity() + pdf_.capacity()) * sizeof(double);
  }

  friend bool operator==(const aimet_histogram&, const aimet_histogram&) = default;

 private:
  bool updated_ = false;
  std::vector<double> x_left_, pdf_;
  int iterations_ = 0;
};

/// The histogram a histogram-based range setter keeps, in either mode.
class histogram_stats {
 public:
  explicit histogram_stats(histogram_mode mode = histogram_mode::exact,
                           std::size_t capacity = exact_histogram::default_capacity)
      : mode_(mode), exact_(capacity) {}

  void observe(const float* x, std::size_t n, const char* who) {
    if (mode_ == histogram_mode::exact)
      exact_.observe(x, n, who);
    else
      aimet_.observe(x, n, who);
  }
  void merge(const histogram_stats& o) {
    QKIT_PRECONDITION(mode_ == o.mode_, config_error,
                      "cannot merge an exact histogram with an AIMET-parity one");
    if (mode_ == histogram_mode::exact)
      exact_.merge(o.exact_);
    else
      aimet_.merge(o.aimet_);
  }
  bool empty() const { return mode_ == histogram_mode::exact ? exact_.empty() : aimet_.empty(); }
  void reset() {
    exact_.reset();
    aimet_.reset();
  }
  histogram_mode mode() const { return mode_; }
  const exact_histogram& exact() const { return exact_; }
  const aimet_histogram& aimet() const { return aimet_; }
  /// Memory the statistics hold (both histograms, the unused one empty).
  std::size_t bytes() const {
    return sizeof(*this) + (exact_.bytes() - sizeof(exact_)) + (aimet_.bytes() - sizeof(aimet_));
  }
  friend bool operator==(const histogram_stats&, const histogram_stats&) = default;

 private:
  histogram_mode mode_;
  exact_histogram exact_;
  aimet_histogram aimet_;
};

namespace detail {

/// AIMET's getComputedEncodings (quantization_utils.cpp), in double, as a qkit encoding.
inline encoding aimet_computed_encoding(int bw, double min, double max, scheme s) {
  encoding e;
  e.bitwidth = bw;
  e.symmetric = s.symmetric;
  double num_steps = std::pow(2.0, bw) - 1;
  if (s.symmetric && s.strict) num_steps -= 1;
  if (s.symmetric && (min < 0.0 || !s.unsigned_symmetric)) {
    max = std::max(std::fabs(max), std::fabs(min));
    const unsigned positive_steps = static_cast<unsigned>(std::floor(num_steps / 2));
    e.scale = max / positive_steps;
    e.offset = static_cast<std::int64_t>(-std::ceil(num_steps / 2));
    e.min = static_cast<double>(e.offset) * e.scale;
    e.max = e.scale * positive_steps;
  } else {
    e.scale = (max - min) / num_steps;
    double off;
    if (min < 0 && max > 0) {
      const double b_zero = std::min(num_steps, std::max(0.0, std::round(-min / e.scale)));
      off = -b_zero;
    } else {
      off = std::round(min / e.scale);
    }
    e.offset = static_cast<std::int64_t>(off);
    e.min = e.scale * off;
    e.max = max - min + e.min;
  }
  return e;
}

/// The encoding AIMET's histogram analyzers give when only zeros were seen: [-1, 1].
inline encoding aimet_zero_data_encoding(int bw, scheme s) {
  if (bw >= 32) return encoding_from_range(-1.0, 1.0, bw, s);
  double num_steps = std::pow(2.0, bw) - 1;
  if (s.symmetric && s.strict) num_steps -= 1;
  const int steps = static_cast<int>(num_steps);
  encoding e;
  e.bitwidth = bw;
  e.symmetric = s.symmetric;
  e.scale = 2.0 / steps;
  const double off = std::floor(-1.0 / e.scale);
  e.offset = static_cast<std::int64_t>(off);
  e.min = off * e.scale;
  e.max = e.min + detail::rounded(steps * e.scale);
  return e;
}

/// AIMET's findOriginalRange<float>: lowest and highest non-empty bucket, 0 included, at
/// least 0.01 wide.
inline void aimet_original_range(const aimet_histogram& h, float& min_val, float& max_val) {
  const auto& xl = h.x_left();
  const auto& pdf = h.pdf();
  const int n = aimet_histogram::bins;
  min_val = static_cast<float>(xl[0]);
  max_val = static_cast<float>(xl[n - 1]);
  for (int i = 0; i < n; ++i)
    if (pdf[i] > 0) {
      min_val = static_cast<float>(xl[i]);
      break;
    }
  for (int i = n - 1; i > 0; --i)
    if (pdf[i] > 0) {
      max_val = static_cast<float>(xl[i]);
      break;
    }
  min_val = std::min(min_val, 0.0f);
  max_val = std::max(max_val, 0.0f);
  max_val = std::max(max_val, min_val + static_cast<float>(0.01));
}

/// Shared preconditions of compute_encoding: a valid bitwidth and some data.
inline void check_can_compute(bool empty, int bitwidth, const char* who) {
  check_int_bitwidth(bitwidth);
  QKIT_PRECONDITION(!empty, calibration_error, who, ": no data observed");
}

}  // namespace detail
}  // namespace qkit
