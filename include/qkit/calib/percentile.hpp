// qkit/calib/percentile.hpp — percentile calibration: clip the range to the p-th percentile
// of the observed distribution on each side (AIMET's AutoQuant tries 99.9 and 99.99), read off
// the histogram's CDF, so that a handful of outliers cannot stretch the grid.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../quant/encoding.hpp"
#include "histogram.hpp"
#include "range_setter.hpp"

namespace qkit {

namespace detail {

// AIMET's PercentileEncodingAnalyzer<float>::_computePercentileRange.
inline void aimet_percentile_range(const aimet_histogram& h, float percentile, float& lo,
                                   float& hi) {
  constexpr int n = aimet_histogram::bins;
  float min_val, max_val;
  aimet_original_range(h, min_val, max_val);
  if (percentile == 100.0f) {
    lo = min_val;
    hi = max_val;
    return;
  }
  const auto& xl = h.x_left();
  const float width = static_cast<float>(xl[1] - xl[0]);
  const float hist_min = static_cast<float>(xl[0]);
  const float hist_max = static_cast<float>(xl[n - 1]) + width;
  float pmin = hist_min, pmax = hist_max;
  std::vector<double> cdf(h.pdf());
  for (std::size_t i = 1; i < cdf.size(); ++i) cdf[i] += cdf[i - 1];
  const float left = 1 - percentile / 100;
  for (int i = 0; i < n; ++i)
    if (cdf[i] >= left) {
      pmin = static_cast<float>(xl[i]);
      break;
    }
  const float right = percentile / 100;
  for (int i = n - 1; i >= 0; --i)
    if (cdf[i] < right) {
      // AIMET reads xLeft[i + 1]; past the last bucket that is the histogram's right end.
      pmax = i + 1 < n ? static_cast<float>(xl[i + 1]) : hist_max;
      break;
    }
  if (pmin == pmax) pmax += width;
  lo = pmin;
  hi = pmax;
}

// The same rule over qkit's exact histogram, with exact integer cumulative counts.
inline void exact_percentile_range(const exact_histogram& h, double percentile, double& lo,
                                   double& hi) {
  if (percentile >= 100.0) {
    lo = h.min();
    hi = h.max();
    return;
  }
  const std::size_t n = h.bins();
  const double total = static_cast<double>(h.total());
  const double left = (1.0 - percentile / 100.0) * total;
  const double right = percentile / 100.0 * total;
  std::vector<std::uint64_t> cum(h.counts());
  for (std::size_t i = 1; i < n; ++i) cum[i] += cum[i - 1];
  lo = h.bin_left(0);
  hi = h.bin_left(n);
  for (std::size_t i = 0; i < n; ++i)
    if (static_cast<double>(cum[i]) >= left) {
      lo = h.bin_left(i);
      break;
    }
  for (std::size_t i = n; i-- > 0;)
    if (static_cast<double>(cum[i]) < right) {
      hi = h.bin_left(i + 1);
      break;
    }
  if (lo == hi) hi += h.bin_width();
}

}  // namespace detail

/// Percentile range setter: p in (0, 100], e.g. 99.9 or 99.99 (100 = the whole range).
class percentile_range {
 public:
  explicit percentile_range(double percentile = 99.99, histogram_mode mode = histogram_mode::exact,
                            std::size_t capacity = exact_histogram::default_capacity)
      : percentile_(percentile), hist_(mode, capacity) {
    QKIT_PRECONDITION(percentile > 0.0 && percentile <= 100.0, config_error, "percentile ",
                      percentile, " is outside (0, 100]");
  }

  void observe(const float* data, std::size_t n) { hist_.observe(data, n, "percentile range"); }
  void merge(const percentile_range& o) {
    QKIT_PRECONDITION(percentile_ == o.percentile_, config_error, "cannot merge percentile ",
                      percentile_, " with percentile ", o.percentile_);
    hist_.merge(o.hist_);
  }
  bool empty() const { return hist_.empty(); }
  void reset() { hist_.reset(); }

  encoding compute_encoding(int bitwidth, scheme s) const {
    detail::check_can_compute(empty(), bitwidth, "percentile range");
    if (hist_.mode() == histogram_mode::aimet_parity) {
      if (!hist_.aimet().initialized()) return detail::aimet_zero_data_encoding(bitwidth, s);
      float lo, hi;
      detail::aimet_percentile_range(hist_.aimet(), static_cast<float>(percentile_), lo, hi);
      lo = std::min(lo, 0.0f);
      hi = std::max(hi, 0.0f);
      if (bitwidth >= 32) return encoding_from_range(lo, hi, bitwidth, s);
      return detail::aimet_computed_encoding(bitwidth, lo, hi, s);
    }
    const exact_histogram& h = hist_.exact();
    if (h.min() == 0.0f && h.max() == 0.0f) return detail::aimet_zero_data_encoding(bitwidth, s);
    double lo, hi;
    detail::exact_percentile_range(h, percentile_, lo, hi);
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
    return encoding_from_range(lo, hi, bitwidth, s);
  }

  double percentile() const { return percentile_; }
  const histogram_stats& histogram() const { return hist_; }
  /// Memory the statistics hold; bounded by the histogram's capacity, not by the data.
  std::size_t bytes() const { return sizeof(*this) + (hist_.bytes() - sizeof(hist_)); }
  friend bool operator==(const percentile_range&, const percentile_range&) = default;

 private:
  double percentile_;
  histogram_stats hist_;
};

static_assert(range_setter<percentile_range>);

}  // namespace qkit
