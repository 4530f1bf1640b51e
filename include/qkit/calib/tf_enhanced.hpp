// qkit/calib/tf_enhanced.hpp — TF-Enhanced calibration: a grid search over (delta, offset)
// candidates for the one that minimises 3 x saturation error + quantization error, weighted
// by the observed PDF. It clips rare outliers that min-max would keep, which usually buys
// precision for the bulk of the distribution. Parity mode repeats AIMET's float arithmetic
// step by step (including its quirks) so that the same batches give AIMET's encoding.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../quant/encoding.hpp"
#include "histogram.hpp"
#include "range_setter.hpp"

namespace qkit {

namespace detail {

/// Saturation errors weigh this much more than rounding errors (AIMET's GAMMA).
inline constexpr double tfe_saturation_weight = 3.0;

// ---- AIMET parity: TfEnhancedEncodingAnalyzer<float>, operation for operation ----

inline float aimet_tfe_cost(const aimet_histogram& h, int bw, float delta, int offset) {
  const auto& xl = h.x_left();
  const auto& pdf = h.pdf();
  constexpr int n = aimet_histogram::bins;
  const float min_val = delta * static_cast<float>(offset);
  const float step_size = static_cast<float>(std::pow(2, bw) - 1);
  // rounded(): products round before they are added, fused or not (config.hpp).
  const float max_val = rounded(delta * step_size) + min_val;
  const float pdf_start = static_cast<float>(xl[0]);
  const float pdf_step = static_cast<float>(xl[1] - xl[0]);
  int min_ind = static_cast<int>(std::floor((min_val - pdf_start) / pdf_step));
  min_ind = std::min(std::max(0, min_ind), n - 1);
  int max_ind = static_cast<int>(std::floor((max_val - pdf_start) / pdf_step));
  max_ind = std::min(std::max(0, max_ind), n - 1);

  // Each float accumulator adds a double term and rounds back to float, as `float += double`.
  float sat_bottom = 0;
  const float min_mid = pdf_start + rounded(static_cast<float>(min_ind) * pdf_step) + pdf_step / 2;
  for (int i = 0; i < min_ind; ++i) {
    const float mid = pdf_start + rounded(static_cast<float>(i) * pdf_step) + pdf_step / 2;
    const double d = static_cast<double>(mid - min_mid);
    sat_bottom = static_cast<float>(sat_bottom + rounded(pdf[i] * (d * d)));
  }
  float sat_top = 0;
  const float max_mid = pdf_start + rounded(static_cast<float>(max_ind) * pdf_step) + pdf_step / 2;
  for (int i = max_ind; i < n; ++i) {
    const float mid = pdf_start + rounded(static_cast<float>(i) * pdf_step) + pdf_step / 2;
    const double d = static_cast<double>(mid - max_mid);
    sat_top = static_cast<float>(sat_top + rounded(pdf[i] * (d * d)));
  }
  float quant = 0;
  for (int i = min_ind; i < max_ind; ++i) {
    const float v = pdf_start + rounded(static_cast<float>(i) * pdf_step) + pdf_step / 2;
    const int q = static_cast<int>(std::round(v / delta - static_cast<float>(offset)));
    const float deq = rounded(delta * static_cast<float>(q + offset));
    const double d = static_cast<double>(v - deq);
    quant = static_cast<float>(quant + rounded(pdf[i] * (d * d)));
  }
  return rounded(3.0f * (sat_bottom + sat_top)) + quant;
}

inline bool aimet_tfe_clamp(float observed_min, float observed_max, float num_steps, float& delta,
                            int& offset) {
  float test_min = delta * static_cast<float>(offset);
  float test_max = test_min + rounded(delta * num_steps);
  if (test_min < observed_min && test_max > observed_max) return false;
  test_min = std::max(observed_min, test_min);
  test_max = std::min(observed_max, test_max);
  delta = (test_max - test_min) / num_steps;
  // An empty clamped range (every value on one point) has no grid: not a candidate. AIMET
  // divides by the zero delta here and casts the NaN to int, undefined behaviour in C++
  // (UBSan's float-cast-overflow found it; tests/calib "extreme magnitudes").
  const float o = test_min / delta;
  if (!(delta > 0.0f) || !(std::fabs(o) < 2147483520.0f)) return false;
  offset = static_cast<int>(std::round(o));
  return true;
}

inline encoding aimet_tfe_encoding(const aimet_histogram& h, int bw, scheme s) {
  if (!h.initialized()) return aimet_zero_data_encoding(bw, s);
  float min_val, max_val;
  aimet_original_range(h, min_val, max_val);
  float num_steps = static_cast<float>(std::pow(2, bw) - 1);
  std::vector<std::tuple<float, int>> candidates;
  if (s.symmetric) {
    if (s.strict) num_steps -= 1;
    float delta_max;
    int test_offset;
    if (min_val == 0.0f && s.unsigned_symmetric) {
      delta_max = max_val / num_steps;
      test_offset = 0;
    } else {
      const float absolute_max = std::max(std::fabs(max_val), std::fabs(min_val));
      delta_max = (2 * absolute_max) / num_steps;
      test_offset = static_cast<int>(std::floor(-num_steps / 2));
    }
    // AIMET steps f in float by 1/100; the accumulated rounding decides the last candidate.
    for (float f = static_cast<float>(1.0 / 100); f <= 1 + 1.0 / 100;
         f = static_cast<float>(f + 1.0 / 100))
      candidates.emplace_back(f * delta_max, test_offset);
  } else {
    const float observed_delta = (max_val - min_val) / num_steps;
    const int observed_offset = static_cast<int>(std::round(min_val / observed_delta));
    const float observed_min = observed_delta * static_cast<float>(observed_offset);
    const float observed_max = observed_min + rounded(observed_delta * num_steps);
    const float delta_max = observed_delta;
    for (float f = static_cast<float>(1.0 / 16); f <= 1 + 1.0 / 16;
         f = static_cast<float>(f + 1.0 / 16)) {
      for (int i = 0; i <= 20; ++i) {
        // Each (delta, offset) pair is clamped afresh. (One AIMET source version clamps the
        // delta in place, carrying it to later offsets; that version could never produce the
        // clipped encodings AIMET's core was measured to give, see docs/calibration.md.)
        float test_delta = f * delta_max;
        int test_offset = static_cast<int>(-num_steps + rounded(num_steps / 20.0 * i));
        if (!aimet_tfe_clamp(observed_min, observed_max, num_steps, test_delta, test_offset))
          continue;
        candidates.emplace_back(test_delta, test_offset);
      }
    }
    candidates.emplace_back(observed_delta, observed_offset);
  }
  float best_delta = -1;
  int best_offset = -1;
  float best_cost = std::numeric_limits<float>::max();
  for (const auto& [d, o] : candidates) {
    const float cost = aimet_tfe_cost(h, bw, d, o);
    if (cost < best_cost) {
      best_cost = cost;
      best_delta = d;
      best_offset = o;
    }
  }
  QKIT_PRECONDITION(best_delta > 0.0f, calibration_error,
                    "tf_enhanced range: no TF-Enhanced candidate has a finite cost over the "
                    "AIMET-parity histogram; use histogram_mode::exact");
  encoding e;
  e.bitwidth = bw;
  e.symmetric = s.symmetric;
  e.scale = best_delta;
  e.offset = best_offset;
  e.min = best_delta * static_cast<float>(best_offset);
  e.max = static_cast<double>(rounded(best_delta * num_steps)) + e.min;
  return e;
}

// ---- qkit's default: the same search in double over the exact histogram ----

struct weighted_point {
  double x, p;
};

inline std::vector<weighted_point> bin_midpoints(const exact_histogram& h) {
  std::vector<weighted_point> pts;
  const double w = h.bin_width(), total = static_cast<double>(h.total());
  for (std::size_t j = 0; j < h.bins(); ++j)
    if (h.counts()[j] != 0)
      pts.push_back({h.bin_left(j) + w / 2, static_cast<double>(h.counts()[j]) / total});
  return pts;
}

inline double tfe_cost(const std::vector<weighted_point>& pts, double delta, double offset,
                       double steps) {
  const double lo = delta * offset, hi = delta * (offset + steps);
  double sat = 0.0, quant = 0.0;
  for (const auto& pt : pts) {
    if (pt.x < lo) {
      sat += rounded(pt.p * (pt.x - lo) * (pt.x - lo));
    } else if (pt.x > hi) {
      sat += rounded(pt.p * (pt.x - hi) * (pt.x - hi));
    } else {
      const double q = std::clamp(std::round(pt.x / delta - offset), 0.0, steps);
      const double e = pt.x - rounded(delta * (q + offset));
      quant += rounded(pt.p * e * e);
    }
  }
  return rounded(tfe_saturation_weight * sat) + quant;
}

inline encoding exact_tfe_encoding(const exact_histogram& h, int bw, scheme s) {
  // The observed range is the data's exact [min, max] (the limit of "lowest and highest
  // non-empty bin" at full resolution), widened to include 0.
  double min_val = h.min(), max_val = h.max();
  widen_to_include_zero(min_val, max_val);
  double steps = std::ldexp(1.0, bw) - 1;
  std::vector<std::pair<double, double>> candidates;
  if (s.symmetric) {
    if (s.strict) steps -= 1;
    double delta_max, offset;
    if (min_val == 0.0 && s.unsigned_symmetric) {
      delta_max = max_val / steps;
      offset = 0;
    } else {
      delta_max = 2 * std::max(std::fabs(max_val), std::fabs(min_val)) / steps;
      offset = std::floor(-steps / 2);
    }
    for (int k = 1; k <= 101; ++k) candidates.emplace_back(k / 100.0 * delta_max, offset);
  } else {
    const double observed_delta = (max_val - min_val) / steps;
    const double observed_offset = std::round(min_val / observed_delta);
    const double observed_min = observed_delta * observed_offset;
    const double observed_max = observed_min + rounded(observed_delta * steps);
    for (int k = 1; k <= 17; ++k) {
      for (int i = 0; i <= 20; ++i) {
        double d = k / 16.0 * observed_delta;
        const double o = std::trunc(-steps + rounded(steps / 20.0 * i));
        double tmin = d * o, tmax = tmin + rounded(d * steps);
        if (tmin < observed_min && tmax > observed_max) continue;
        tmin = std::max(observed_min, tmin);
        tmax = std::min(observed_max, tmax);
        d = (tmax - tmin) / steps;
        if (!(d > 0.0)) continue;
        candidates.emplace_back(d, std::round(tmin / d));
      }
    }
    candidates.emplace_back(observed_delta, observed_offset);
  }
  const auto pts = bin_midpoints(h);
  double best_cost = std::numeric_limits<double>::infinity();
  std::pair<double, double> best = candidates.back();
  for (const auto& c : candidates) {
    const double cost = tfe_cost(pts, c.first, c.second, steps);
    if (cost < best_cost) {
      best_cost = cost;
      best = c;
    }
  }
  encoding e;
  e.bitwidth = bw;
  e.symmetric = s.symmetric;
  e.scale = best.first;
  e.offset = static_cast<std::int64_t>(best.second);
  e.min = best.first * best.second;
  e.max = best.first * (best.second + steps);
  return e;
}

}  // namespace detail

/// TF-Enhanced (SQNR) range setter. histogram_mode::exact (default) searches over qkit's exact
/// histogram in double; histogram_mode::aimet_parity reproduces AIMET's result for the same
/// batches. Only zeros observed gives AIMET's [-1, 1] encoding.
class tf_enhanced_range {
 public:
  explicit tf_enhanced_range(histogram_mode mode = histogram_mode::exact,
                             std::size_t capacity = exact_histogram::default_capacity)
      : hist_(mode, capacity) {}

  void observe(const float* data, std::size_t n) { hist_.observe(data, n, "tf_enhanced range"); }
  void merge(const tf_enhanced_range& o) { hist_.merge(o.hist_); }
  bool empty() const { return hist_.empty(); }
  void reset() { hist_.reset(); }

  encoding compute_encoding(int bitwidth, scheme s) const {
    detail::check_can_compute(empty(), bitwidth, "tf_enhanced range");
    if (hist_.mode() == histogram_mode::aimet_parity) {
      if (bitwidth >= 32 && hist_.aimet().initialized()) {
        float lo, hi;
        detail::aimet_original_range(hist_.aimet(), lo, hi);
        return encoding_from_range(lo, hi, bitwidth, s);
      }
      return detail::aimet_tfe_encoding(hist_.aimet(), bitwidth, s);
    }
    const exact_histogram& h = hist_.exact();
    if (h.min() == 0.0f && h.max() == 0.0f) return detail::aimet_zero_data_encoding(bitwidth, s);
    if (bitwidth >= 32) {
      double lo = h.min(), hi = h.max();
      widen_to_include_zero(lo, hi);
      return encoding_from_range(lo, hi, bitwidth, s);
    }
    return detail::exact_tfe_encoding(h, bitwidth, s);
  }

  const histogram_stats& histogram() const { return hist_; }
  /// Memory the statistics hold; bounded by the histogram's capacity, not by the data.
  std::size_t bytes() const { return sizeof(*this) + (hist_.bytes() - sizeof(hist_)); }
  friend bool operator==(const tf_enhanced_range&, const tf_enhanced_range&) = default;

 private:
  histogram_stats hist_;
};

static_assert(range_setter<tf_enhanced_range>);

}  // namespace qkit
