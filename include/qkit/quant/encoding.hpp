// qkit/quant/encoding.hpp — what a quantizer's grid is, and how a range becomes one.
//
//   q = clamp(round(x / scale) - offset, 0, 2^bw - 1)        x̂ = scale * (q + offset)
//
// `offset` follows AIMET's sign convention (the negative of the zero point, usually <= 0), so
// that real 0 is the integer -offset and is represented exactly: zero padding, ReLU outputs
// and skipped connections must not pick up a bias from quantization. Ranges become encodings by
// AIMET's rules (its C++ core), so qkit's encodings agree with AIMET's for the same range.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../config.hpp"
#include "../error.hpp"

namespace qkit {

/// Storage kind of a quantized tensor.
enum class dtype { integer, floating };

/// How a range is mapped onto the integer grid (AIMET's is_symmetric, strict_symmetric and
/// unsigned_symmetric flags).
struct scheme {
  bool symmetric = false;
  /// Symmetric with one step fewer, so the grid is exactly symmetric: [-127, 127] at 8 bits.
  bool strict = false;
  /// Symmetric over data that never goes below zero uses the whole unsigned grid (offset 0).
  bool unsigned_symmetric = false;

  static const scheme asymmetric;
  static const scheme symmetric_signed;
  static const scheme strict_symmetric;
  static const scheme unsigned_symm;

  friend bool operator==(const scheme&, const scheme&) = default;
};
inline constexpr scheme scheme::asymmetric{false, false, false};
inline constexpr scheme scheme::symmetric_signed{true, false, false};
inline constexpr scheme scheme::strict_symmetric{true, true, false};
inline constexpr scheme scheme::unsigned_symm{true, false, true};

/// One quantization grid. Per-channel quantization holds one encoding per channel.
struct encoding {
  int bitwidth = 8;
  double scale = 1.0;        ///< delta: the real value of one integer step
  std::int64_t offset = 0;   ///< AIMET convention: real 0 is the integer -offset
  double min = 0.0;          ///< lowest representable value, scale * offset
  double max = 0.0;          ///< highest representable value, scale * (offset + steps)
  bool symmetric = false;
  qkit::dtype dtype = qkit::dtype::integer;

  /// Number of integer steps, 2^bw - 1 (the grid has steps + 1 points).
  double steps() const { return std::ldexp(1.0, bitwidth) - 1.0; }
  /// Highest integer q takes (2^bw - 1), as used by the kernels' clamp.
  std::int64_t qmax() const { return (std::int64_t{1} << bitwidth) - 1; }
  /// True for an int encoding at 32 bits: qkit treats it as pass-through, like AIMET.
  bool is_passthrough() const { return dtype == qkit::dtype::integer && bitwidth >= 32; }
  /// ONNX zero point for unsigned storage (uint8/uint16): -offset.
  std::int64_t zero_point_unsigned() const { return -offset; }
  /// ONNX zero point for signed storage (int8/int16): -offset - 2^(bw-1).
  std::int64_t zero_point_signed() const { return -offset - (std::int64_t{1} << (bitwidth - 1)); }

  /// A float16 "encoding": values are rounded through IEEE half precision.
  static encoding fp16() {
    encoding e;
    e.bitwidth = 16;
    e.dtype = qkit::dtype::floating;
    e.scale = 0.0;
    return e;
  }

  friend bool operator==(const encoding&, const encoding&) = default;
};

/// AIMET's smallest range for min-max calibration: max >= min + 0.01.
inline constexpr double minimum_encoding_range = 0.01;

/// Validates an integer bitwidth: 2..32 (32 is pass-through).
inline void check_int_bitwidth(int bitwidth, const char* what = "bitwidth") {
  QKIT_PRECONDITION(bitwidth >= 2 && bitwidth <= 32, config_error, what, " ", bitwidth,
                    " is outside 2..32");
}

/// Widens an observed range the way min-max ("tf") calibration does: include zero, and make
/// it at least minimum_encoding_range wide, so constant or all-zero tensors get a valid grid.
inline void widen_to_include_zero(double& min, double& max) {
  min = std::min(min, 0.0);
  max = std::max(max, 0.0);
  max = std::max(max, min + minimum_encoding_range);
}

/// Computes the encoding of [min, max] at `bitwidth` bits under `s`, exactly as AIMET's core
/// does (see docs/encodings.md). Bitwidth 32 gives a pass-through encoding that still records
/// the range. A degenerate range (max <= min, or zero absmax when symmetric) is widened to the
/// minimum range first, so the result always has a positive scale.
inline encoding encoding_from_range(double min, double max, int bitwidth, scheme s = {}) {
  check_int_bitwidth(bitwidth);
  QKIT_PRECONDITION(std::isfinite(min) && std::isfinite(max), calibration_error,
                    "range [", min, ", ", max, "] is not finite");
  QKIT_PRECONDITION(min <= max, calibration_error, "range [", min, ", ", max,
                    "] has min > max");
  encoding e;
  e.bitwidth = bitwidth;
  e.symmetric = s.symmetric;
  if (e.is_passthrough()) {
    e.min = min;
    e.max = max;
    e.scale = 0.0;
    return e;
  }
  double steps = std::ldexp(1.0, bitwidth) - 1.0;
  if (s.symmetric && s.unsigned_symmetric && min >= 0.0) {
    // Unsigned symmetric: the asymmetric grid anchored at zero.
    if (max <= 0.0) max = minimum_encoding_range;
    e.scale = max / steps;
    e.offset = 0;
    e.min = 0.0;
    e.max = e.scale * steps;
    return e;
  }
  if (s.symmetric) {
    if (s.strict) steps -= 1.0;
    double absmax = std::max(std::fabs(min), std::fabs(max));
    if (absmax <= 0.0) absmax = minimum_encoding_range;
    const double half_down = std::floor(steps / 2.0);
    e.scale = absmax / half_down;
    e.offset = static_cast<std::int64_t>(-std::ceil(steps / 2.0));
    e.min = static_cast<double>(e.offset) * e.scale;
    e.max = e.scale * half_down;
    return e;
  }
  if (max - min <= 0.0) max = min + minimum_encoding_range;
  e.scale = (max - min) / steps;
  if (min < 0.0 && max > 0.0) {
    // Slide the grid so that zero falls exactly on an integer.
    const double zero_q = std::clamp(std::round(-min / e.scale), 0.0, steps);
    e.offset = static_cast<std::int64_t>(-zero_q);
    e.min = static_cast<double>(e.offset) * e.scale;
    e.max = e.min + (max - min);
  } else {
    // Zero is outside (or at an end of) the range: the grid starts at the integer nearest to
    // min, and min/max describe that grid, as the kernels' clamps use them.
    e.offset = static_cast<std::int64_t>(std::round(min / e.scale));
    e.min = static_cast<double>(e.offset) * e.scale;
    e.max = e.min + (max - min);
  }
  return e;
}

/// Encoding from a scale and offset (e.g. read from a file), with min/max derived.
inline encoding encoding_from_scale_offset(double scale, std::int64_t offset, int bitwidth,
                                           bool symmetric) {
  check_int_bitwidth(bitwidth);
  QKIT_PRECONDITION(std::isfinite(scale) && scale > 0.0, config_error, "scale ", scale,
                    " must be finite and positive");
  encoding e;
  e.bitwidth = bitwidth;
  e.scale = scale;
  e.offset = offset;
  e.symmetric = symmetric;
  e.min = scale * static_cast<double>(offset);
  e.max = scale * (static_cast<double>(offset) + e.steps());
  return e;
}

}  // namespace qkit
