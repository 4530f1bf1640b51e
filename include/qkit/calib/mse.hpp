// qkit/calib/mse.hpp — MSE calibration: a grid search over (negative edge, positive edge)
// pairs of histogram bin edges for the range whose quantize-dequantize error, weighted by the
// observed PDF at bin centres, is smallest. Parity mode is AIMET's MseEncodingAnalyzer<float>.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <utility>
#include <vector>

#include "../quant/encoding.hpp"
#include "histogram.hpp"
#include "range_setter.hpp"
#include "tf_enhanced.hpp"

namespace qkit {

namespace detail {

inline std::vector<std::pair<float, float>> aimet_mse_pairs(const std::vector<float>& edges) {
  std::vector<float> mins, maxs;
  for (float c : edges) {
    if (c < 0)
      mins.push_back(c);
    else if (c > 0)
      maxs.push_back(c);
  }
  mins.push_back(0);
  maxs.push_back(0);
  std::vector<std::pair<float, float>> pairs;
  pairs.reserve(mins.size() * maxs.size());
  for (float a : mins)
    for (float b : maxs) pairs.emplace_back(a, b);
  pairs.pop_back();  // {0, 0}
  return pairs;
}

// AIMET's MseEncodingAnalyzer<float>::_minimizeMSE.
inline void aimet_mse_range(const aimet_histogram& h, int bw, scheme s, float& lo, float& hi) {
  constexpr int n = aimet_histogram::bins;
  const auto& xl = h.x_left();
  const float width = static_cast<float>(xl[1] - xl[0]);
  const float hist_min = static_cast<float>(xl[0]);
  const float hist_max = static_cast<float>(xl[n - 1]) + width;
  float min_val, max_val;
  aimet_original_range(h, min_val, max_val);
  max_val = max_val + width;
  std::vector<float> edges{min_val};
  for (float i = hist_min; i <= hist_max; i += width)
    if (i >= min_val && i <= max_val) edges.push_back(i);
  const auto pairs = aimet_mse_pairs(edges);
  const float pdf_start = static_cast<float>(xl[0]);
  const float pdf_step = static_cast<float>(xl[1] - xl[0]);
  const int centres = static_cast<int>(edges.size()) - 1;
  std::vector<std::pair<float, float>> cp(static_cast<std::size_t>(std::max(centres, 0)));
  for (int i = 0; i < centres; ++i) {
    cp[i].first = i == 0 ? min_val + width / 2 : cp[i - 1].first + width;
    int ind = static_cast<int>(std::floor((cp[i].first - pdf_start) / pdf_step));
    ind = std::min(std::max(0, ind), n - 1);
    cp[i].second = static_cast<float>(h.pdf()[ind]);
  }
  float best_mse = std::numeric_limits<float>::max();
  lo = min_val;
  hi = max_val;
  for (const auto& [a, b] : pairs) {
    const encoding e = aimet_computed_encoding(bw, a, b, s);
    const double off = static_cast<double>(e.offset);
    float err = 0;
    for (const auto& [v, p] : cp) {
      const float clamped = std::max(a, std::min(v, b));
      const int q = static_cast<int>(std::round(clamped / e.scale - off));
      // rounded(): products round before they are added, fused or not (config.hpp).
      const float deq = static_cast<float>(rounded(e.scale * (q + off)));
      const double d = static_cast<double>(v - deq);
      err = static_cast<float>(err + rounded(p * (d * d)));
    }
    if (err < best_mse) {
      best_mse = err;
      lo = a;
      hi = b;
    }
  }
}

inline double qdq_error(const std::vector<weighted_point>& pts, const encoding& e) {
  const double off = static_cast<double>(e.offset), qmax = e.steps();
  double err = 0.0;
  for (const auto& pt : pts) {
    const double q = std::clamp(std::round(pt.x / e.scale) - off, 0.0, qmax);
    const double d = pt.x - rounded(e.scale * (q + off));
    err += rounded(pt.p * d * d);
  }
  return err;
}

// The same search over qkit's exact histogram. Candidate edges are every stride-th bin edge
// (at most 129 of them) so the pair search stays cheap; the error is still measured at every
// bin centre.
inline void exact_mse_range(const exact_histogram& h, int bw, scheme s, double& lo, double& hi) {
  const std::size_t n = h.bins();
  const std::size_t stride = (n + 127) / 128;
  std::vector<double> edges;
  for (std::size_t j = 0; j < n; j += stride) edges.push_back(h.bin_left(j));
  edges.push_back(h.bin_left(n));
  const auto pts = bin_midpoints(h);
  std::vector<std::pair<double, double>> pairs;
  if (s.symmetric && !(s.unsigned_symmetric && h.min() >= 0.0f)) {
    // Only the absolute maximum matters to a symmetric grid.
    std::vector<double> t;
    for (double c : edges)
      if (c != 0.0) t.push_back(std::fabs(c));
    std::sort(t.begin(), t.end());
    t.erase(std::unique(t.begin(), t.end()), t.end());
    for (double v : t) pairs.emplace_back(-v, v);
  } else {
    std::vector<double> mins, maxs;
    for (double c : edges) {
      if (c < 0) mins.push_back(c);
      if (c > 0) maxs.push_back(c);
    }
    mins.push_back(0);
    maxs.push_back(0);
    for (double a : mins)
      for (double b : maxs)
        if (a != 0.0 || b != 0.0) pairs.emplace_back(a, b);
  }
  double best = std::numeric_limits<double>::infinity();
  lo = h.min();
  hi = h.max();
  for (const auto& [a, b] : pairs) {
    const double err = qdq_error(pts, encoding_from_range(a, b, bw, s));
    if (err < best) {
      best = err;
      lo = a;
      hi = b;
    }
  }
}

}  // namespace detail

/// MSE range setter (histogram_mode::exact by default, or AIMET parity).
class mse_range {
 public:
  explicit mse_range(histogram_mode mode = histogram_mode::exact,
                     std::size_t capacity = exact_histogram::default_capacity)
      : hist_(mode, capacity) {}

  void observe(const float* data, std::size_t n) { hist_.observe(data, n, "mse range"); }
  void merge(const mse_range& o) { hist_.merge(o.hist_); }
  bool empty() const { return hist_.empty(); }
  void reset() { hist_.reset(); }

  encoding compute_encoding(int bitwidth, scheme s) const {
    detail::check_can_compute(empty(), bitwidth, "mse range");
    if (hist_.mode() == histogram_mode::aimet_parity) {
      if (!hist_.aimet().initialized()) return detail::aimet_zero_data_encoding(bitwidth, s);
      float lo, hi;
      if (bitwidth >= 32) {
        detail::aimet_original_range(hist_.aimet(), lo, hi);
        return encoding_from_range(lo, hi, bitwidth, s);
      }
      detail::aimet_mse_range(hist_.aimet(), bitwidth, s, lo, hi);
      lo = std::min(lo, 0.0f);
      hi = std::max(hi, 0.0f);
      return detail::aimet_computed_encoding(bitwidth, lo, hi, s);
    }
    const exact_histogram& h = hist_.exact();
    if (h.min() == 0.0f && h.max() == 0.0f) return detail::aimet_zero_data_encoding(bitwidth, s);
    double lo = h.min(), hi = h.max();
    if (bitwidth < 32) detail::exact_mse_range(h, bitwidth, s, lo, hi);
    lo = std::min(lo, 0.0);
    hi = std::max(hi, 0.0);
    return encoding_from_range(lo, hi, bitwidth, s);
  }

  const histogram_stats& histogram() const { return hist_; }
  /// Memory the statistics hold; bounded by the histogram's capacity, not by the data.
  std::size_t bytes() const { return sizeof(*this) + (hist_.bytes() - sizeof(hist_)); }
  friend bool operator==(const mse_range&, const mse_range&) = default;

 private:
  histogram_stats hist_;
};

static_assert(range_setter<mse_range>);

}  // namespace qkit
