// qkit/calib/range_setter.hpp — what every range setter (calibration method) provides, as a
// C++20 concept, so that quantizers take any of them as a compile-time policy.
//
// A range setter streams over calibration batches with bounded memory and turns what it saw
// into an encoding:
//   void observe(const float* data, std::size_t n);  // one batch; NaN/Inf -> calibration_error
//                                                     // with how many and the first index
//   void merge(const R& other);                       // statistics of the union of both shards
//   bool empty() const;                               // nothing observed yet
//   encoding compute_encoding(int bitwidth, scheme s) const;
//                                                     // empty -> calibration_error "no data
//                                                     // observed"; bitwidth outside 2..32 ->
//                                                     // config_error
//   void reset();                                     // back to the freshly constructed state
// Range setters are copyable values: a per-channel quantizer copies its prototype once per
// channel, and shards calibrated in other threads or processes are merged into one.
#pragma once

#include <concepts>
#include <cstddef>

#include "../quant/encoding.hpp"

namespace qkit {

template <class R>
concept range_setter = std::copy_constructible<R> &&
    requires(R r, const R& cr, const float* data, std::size_t n, int bitwidth, scheme s) {
      { r.observe(data, n) } -> std::same_as<void>;
      { r.merge(cr) } -> std::same_as<void>;
      { cr.empty() } -> std::convertible_to<bool>;
      { cr.compute_encoding(bitwidth, s) } -> std::same_as<encoding>;
      { r.reset() } -> std::same_as<void>;
    };

}  // namespace qkit
