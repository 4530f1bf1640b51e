// qkit/calib/minmax.hpp — min-max calibration (AIMET's "tf" scheme): the running minimum and
// maximum of everything observed, widened to include 0 and to at least 0.01, then mapped to a
// grid by encoding_from_range. Min and max merge exactly, so shards combine with no loss.
#pragma once

#include <algorithm>
#include <cstddef>

#include "../quant/encoding.hpp"
#include "histogram.hpp"
#include "range_setter.hpp"
#include "stats.hpp"

namespace qkit {

class minmax_range {
 public:
  void observe(const float* data, std::size_t n) {
    const scan_result r = scan_min_max(data, n);
    if (!r.all_finite()) throw_nonfinite(r, n, "minmax range");
    if (n == 0) return;
    min_ = empty_ ? r.min : std::min(min_, r.min);
    max_ = empty_ ? r.max : std::max(max_, r.max);
    empty_ = false;
  }

  void merge(const minmax_range& o) {
    if (o.empty_) return;
    min_ = empty_ ? o.min_ : std::min(min_, o.min_);
    max_ = empty_ ? o.max_ : std::max(max_, o.max_);
    empty_ = false;
  }

  bool empty() const { return empty_; }
  void reset() { *this = minmax_range(); }

  encoding compute_encoding(int bitwidth, scheme s) const {
    detail::check_can_compute(empty_, bitwidth, "minmax range");
    double lo = min_, hi = max_;
    widen_to_include_zero(lo, hi);
    return encoding_from_range(lo, hi, bitwidth, s);
  }

  float min() const { return min_; }
  float max() const { return max_; }
  /// Memory the statistics hold: two floats, whatever the data.
  std::size_t bytes() const { return sizeof(*this); }
  friend bool operator==(const minmax_range&, const minmax_range&) = default;

 private:
  bool empty_ = true;
  float min_ = 0.0f, max_ = 0.0f;
};

static_assert(range_setter<minmax_range>);

}  // namespace qkit
