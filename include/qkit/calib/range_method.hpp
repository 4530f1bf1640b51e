// qkit/calib/range_method.hpp — the calibration methods as a runtime value, for the flows that
// try several of them (AutoQuant's range-setting selection, the debugging workflow's step 4):
// range setters are compile-time policies of a quantizer, so a flow that picks one at run time
// names it with a range_method and with_range_method() calls a generic function with the
// matching prototype (its options set), instantiating one branch per method.
#pragma once

#include <string>

#include "entropy.hpp"
#include "minmax.hpp"
#include "mse.hpp"
#include "percentile.hpp"
#include "tf_enhanced.hpp"

namespace qkit {

/// AIMET's quant schemes (tf = min-max); percentile at the two values AutoQuant tries.
enum class range_method { minmax, tf_enhanced, percentile_99_9, percentile_99_99, mse, entropy };

inline std::string to_string(range_method r) {
  switch (r) {
    case range_method::minmax: return "min-max";
    case range_method::tf_enhanced: return "TF-Enhanced";
    case range_method::percentile_99_9: return "percentile 99.9";
    case range_method::percentile_99_99: return "percentile 99.99";
    case range_method::mse: return "MSE";
    case range_method::entropy: return "entropy";
  }
  return "?";
}

/// Calls f(prototype) with the range setter `r` names (its options set), returning f's result.
template <class F>
decltype(auto) with_range_method(range_method r, F&& f) {
  switch (r) {
    case range_method::tf_enhanced: return f(tf_enhanced_range{});
    case range_method::percentile_99_9: return f(percentile_range{99.9});
    case range_method::percentile_99_99: return f(percentile_range{99.99});
    case range_method::mse: return f(mse_range{});
    case range_method::entropy: return f(entropy_range{});
    case range_method::minmax: break;
  }
  return f(minmax_range{});
}

}  // namespace qkit
