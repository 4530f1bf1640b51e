// qkit/calib/entropy.hpp — entropy (KL-divergence) calibration, TensorRT's method as AIMET's
// EntropyEncodingAnalyzer runs it: shrink a clipping window over the histogram and keep the
// one whose clipped distribution P is closest (in KL divergence) to its quantized version Q.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <vector>

#include "../quant/encoding.hpp"
#include "histogram.hpp"
#include "range_setter.hpp"

namespace qkit {

namespace detail {

// Moves a little mass onto empty bins so that the divergence stays finite (AIMET's
// _conditionHistogram).
inline void condition_histogram(std::vector<double>& h) {
  constexpr double eps_zero = 0.0001;
  std::size_t zeros = 0;
  for (double v : h) zeros += v == 0.0;
  if (h.empty() || zeros == h.size()) return;
  const double eps_nonzero =
      eps_zero * static_cast<double>(zeros) / static_cast<double>(h.size() - zeros);
  if (eps_nonzero >= 1.0) return;
  for (double& v : h) v = v == 0.0 ? v + eps_zero : v - eps_nonzero;
}

inline double kl_divergence(std::vector<double>& p, std::vector<double>& q) {
  const double sp = std::accumulate(p.begin(), p.end(), 0.0);
  const double sq = std::accumulate(q.begin(), q.end(), 0.0);
  double d = 0.0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    p[i] /= sp;
    q[i] /= sq;
    // rounded(): products round before they are added, fused or not (config.hpp).
    if (p[i] > 0 && q[i] > 0) d += rounded(p[i] * std::log(p[i] / q[i]));
  }
  return d;
}

// AIMET's _optimizeKL over a histogram of `hist.size()` bins spanning [hmin, hmax], with
// 2^bw - 1 quantized bins (255 at 8 bits, as AIMET). Returns the clipping thresholds.
inline void optimize_kl(const std::vector<double>& hist, double hmin, double hmax, int bw,
                        bool symmetric, double& lo, double& hi) {
  lo = hmin;
  hi = hmax;
  const std::size_t num_bins = hist.size();
  const double qbins_d = std::ldexp(1.0, bw) - 1;
  if (num_bins == 0 || static_cast<double>(num_bins) < qbins_d) return;
  const std::size_t qbins = static_cast<std::size_t>(qbins_d);
  const double width = (hmax - hmin) / static_cast<double>(num_bins);
  double best = std::numeric_limits<double>::infinity();
  std::size_t start = 0, stop = num_bins - 1;
  while (stop - start + 1 >= qbins) {
    const std::size_t win = stop - start + 1;
    const double* w = hist.data() + start;
    std::vector<double> p(win, 0.0);
    for (std::size_t i = 0; i <= start; ++i) p.front() += hist[i];
    for (std::size_t i = start + 1; i < stop; ++i) p[i - start] = hist[i];
    for (std::size_t i = stop; i < num_bins; ++i) p.back() += hist[i];
    const double merged = static_cast<double>(win) / static_cast<double>(qbins);
    std::vector<double> q(win, 0.0);
    for (std::size_t k = 0; k < qbins; ++k) {
      const auto edge = [&](std::size_t qb) {
        return static_cast<std::size_t>(std::ceil(static_cast<double>(qb) * merged));
      };
      const std::size_t a = edge(k);
      const std::size_t b = k + 1 < qbins ? edge(k + 1) : win;
      double sum = 0, norm = 0;
      for (std::size_t i = a; i < b; ++i) {
        sum += w[i];
        norm += w[i] != 0;
      }
      if (norm != 0)
        for (std::size_t i = a; i < b; ++i)
          if (w[i] != 0) q[i] = sum / norm;
    }
    if (std::accumulate(p.begin(), p.end(), 0.0) == 0 ||
        std::accumulate(q.begin(), q.end(), 0.0) == 0)
      break;
    condition_histogram(p);
    condition_histogram(q);
    const double d = kl_divergence(p, q);
    if (d < best) {
      best = d;
      lo = hmin + rounded(static_cast<double>(start) * width);
      hi = hmin + rounded(static_cast<double>(stop + 1) * width);
    }
    if (symmetric) {
      ++start;
      --stop;
    } else {
      const double sym = hist[start] + hist[stop];
      const double left = hist[start] + hist[start + 1];
      const double right = hist[stop] + hist[stop - 1];
      int pick = sym <= left && sym <= right ? 0 : (left <= right ? 1 : 2);
      // Keep 0 inside the window: never clip past it.
      const auto at = [&](std::size_t j) { return hmin + rounded(static_cast<double>(j) * width); };
      if ((pick == 0 && at(start + 1) > 0) || (pick == 1 && at(start + 2) > 0))
        pick = 2;
      else if ((pick == 0 && at(stop) < 0) || (pick == 2 && at(stop - 1) < 0))
        pick = 1;
      if (pick == 0) {
        ++start;
        --stop;
      } else if (pick == 1) {
        start += 2;
      } else {
        stop -= 2;
      }
    }
    if (stop < start || stop >= num_bins) break;
  }
}

}  // namespace detail

/// Entropy (KL) range setter over qkit's exact histogram. For a symmetric scheme the
/// histogram is mirrored to [-absmax, absmax] exactly (its bins are aligned on multiples of
/// the width, so no re-binning approximation is needed).
class entropy_range {
 public:
  explicit entropy_range(std::size_t capacity = exact_histogram::default_capacity)
      : hist_(capacity) {}

  void observe(const float* data, std::size_t n) { hist_.observe(data, n, "entropy range"); }
  void merge(const entropy_range& o) { hist_.merge(o.hist_); }
  bool empty() const { return hist_.empty(); }
  void reset() { hist_.reset(); }

  encoding compute_encoding(int bitwidth, scheme s) const {
    detail::check_can_compute(empty(), bitwidth, "entropy range");
    const exact_histogram& h = hist_;
    if (h.min() == 0.0f && h.max() == 0.0f) return detail::aimet_zero_data_encoding(bitwidth, s);
    const std::int64_t base = h.grid().base;
    const std::int64_t top = base + static_cast<std::int64_t>(h.bins());
    std::vector<double> hist;
    std::int64_t first = base;
    const bool mirror = s.symmetric && (h.min() < 0.0f || !s.unsigned_symmetric);
    if (mirror) {
      const std::int64_t k = std::max(-base, top);
      first = -k;
      hist.assign(static_cast<std::size_t>(2 * k), 0.0);
    } else {
      hist.assign(h.bins(), 0.0);
    }
    for (std::size_t j = 0; j < h.bins(); ++j)
      hist[static_cast<std::size_t>(base + static_cast<std::int64_t>(j) - first)] =
          static_cast<double>(h.counts()[j]);
    const double w = h.bin_width();
    const double hmin = static_cast<double>(first) * w;
    const double hmax = hmin + detail::rounded(static_cast<double>(hist.size()) * w);
    double lo = hmin, hi = hmax;
    if (bitwidth < 32) detail::optimize_kl(hist, hmin, hmax, bitwidth, s.symmetric, lo, hi);
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
    return encoding_from_range(lo, hi, bitwidth, s);
  }

  const exact_histogram& histogram() const { return hist_; }
  /// Memory the statistics hold; bounded by the histogram's capacity, not by the data.
  std::size_t bytes() const { return sizeof(*this) + (hist_.bytes() - sizeof(hist_)); }
  friend bool operator==(const entropy_range&, const entropy_range&) = default;

 private:
  exact_histogram hist_;
};

static_assert(range_setter<entropy_range>);

}  // namespace qkit
