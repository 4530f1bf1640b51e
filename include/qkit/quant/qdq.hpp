// qkit/quant/qdq.hpp — the quantize-dequantize kernels every quantizer runs: float QDQ
// simulation (per tensor and per channel), quantization to integer storage and back, and the
// straight-through-estimator mask for QAT. Each SIMD kernel has a scalar *_reference beside it
// that gives the same bits; docs/encodings.md states the formulas and the rounding policies.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "encoding.hpp"
#include "fp16.hpp"


namespace qkit {

/// How x / scale is rounded to the grid.
enum class rounding {
  /// Round half to even: ONNX QuantizeLinear, ONNX Runtime and PyTorch. The default, so that
  /// a simulated model agrees bit for bit with its exported QDQ graph.
  half_even,
  /// AIMET's C++ core: clamp x to [min, max], then round(x / scale - offset) with halves away
  /// from zero. For parity with encodings and accuracies AIMET reports.
  half_away,
};

namespace detail {

/// An int encoding's numbers as the kernels use them: float, checked once per call. No default
/// member initializers, so per-channel kernels can keep an array of them on the stack cheaply.
struct qdq_params {
  float scale;
  float lo;    ///< lowest grid integer, offset (round-half-even clamp)
  float hi;    ///< highest grid integer, offset + 2^bw - 1
  float off;   ///< offset
  float fmin;  ///< AIMET's clamp range [min, max] (round-half-away path)
  float fmax;
};

/// What a kernel does with one encoding.
enum class qdq_kind { grid, passthrough, fp16 };

inline qdq_kind kind_of(const encoding& e) {
  if (e.dtype == qkit::dtype::floating) {
    QKIT_PRECONDITION(e.bitwidth == 16, config_error, "float encoding bitwidth ", e.bitwidth,
                      " is not supported (float encodings are 16 bits: float16)");
    return qdq_kind::fp16;
  }
  check_int_bitwidth(e.bitwidth);
  return e.is_passthrough() ? qdq_kind::passthrough : qdq_kind::grid;
}

/// The highest integer (on the offset-shifted grid) the encoding represents. Usually
/// offset + 2^bw - 1; a grid whose recorded max stops short of that — strict symmetric,
/// [-127, 127]·scale at 8 bits — ends at its max, as AIMET's core clamps to [min, max].
inline std::int64_t top_step(const encoding& e) noexcept {
  const std::int64_t full = e.offset + e.qmax();
  if (!(e.max > e.min) || !(e.scale > 0.0)) return full;
  const double t = std::round(e.max / e.scale);
  if (t >= static_cast<double>(e.offset + 1) && t < static_cast<double>(full))
    return static_cast<std::int64_t>(t);
  return full;
}

/// The float parameters of an encoding already checked by params_of.
inline qdq_params params_unchecked(const encoding& e) noexcept {
  qdq_params p{};
  p.scale = static_cast<float>(e.scale);
  p.off = static_cast<float>(e.offset);
  p.lo = static_cast<float>(e.offset);
  p.hi = static_cast<float>(top_step(e));
  p.fmin = static_cast<float>(e.min);
  p.fmax = static_cast<float>(e.max);
  return p;
}

inline qdq_params params_of(const encoding& e) {
  const float s = static_cast<float>(e.scale);
  QKIT_PRECONDITION(std::isfinite(e.scale) && e.scale > 0.0 && std::isfinite(s) && s > 0.0f,
                    config_error, "encoding scale ", e.scale,
                    " must be finite and positive in float (bitwidth ", e.bitwidth, ")");
  QKIT_PRECONDITION(std::isfinite(e.min) && std::isfinite(e.max) && e.min <= e.max, config_error,
                    "encoding range [", e.min, ", ", e.max, "] must be finite with min <= max");
  return params_unchecked(e);
}

// One element of each kernel. The SIMD kernels below do the same operations in the same order;
// clamps are written a > b ? a : b, so a NaN lands on the lowest grid point in both.

inline float qdq_even_1(float x, float s, float lo, float hi) noexcept {
  float t = std::nearbyint(x / s);
  t = t > lo ? t : lo;
  t = t < hi ? t : hi;
  return (t + 0.0f) * s;  // + 0 turns -0 into +0, as (q - zero_point) * scale does in ONNX
}

inline float qdq_away_q(float x, float s, float off, float fmin, float fmax) noexcept {
  // AIMET clamps to [min, max] with NaN -> min; max-then-min in this order does both.
  float v = x > fmin ? x : fmin;
  v = v < fmax ? v : fmax;
  return std::round(v / s - off);
}

inline float qdq_away_1(float x, float s, float off, float fmin, float fmax) noexcept {
  return s * (qdq_away_q(x, s, off, fmin, fmax) + off);
}

inline float even_clamped_1(float x, float s, float lo, float hi) noexcept {
  float t = std::nearbyint(x / s);
  t = t > lo ? t : lo;
  return t < hi ? t : hi;
}

/// a > b ? a : b and a < b ? a : b, as the scalar kernels write them (a NaN `a` gives b). x86's
/// maxps/minps are exactly these, one instruction each; elsewhere compare and select.
template <class B>
inline B max_or_second(const B& a, const B& b) noexcept {
#if defined(__SSE2__)
  return xsimd::max(a, b);
#else
  return xsimd::select(a > b, a, b);
#endif
}
template <class B>
inline B min_or_second(const B& a, const B& b) noexcept {
#if defined(__SSE2__)
  return xsimd::min(a, b);
#else
  return xsimd::select(a < b, a, b);
#endif
}

template <class B>
inline B even_clamped(const B& x, const B& s, const B& lo, const B& hi) noexcept {
  return min_or_second(max_or_second(xsimd::nearbyint(x / s), lo), hi);
}

template <class B>
inline B qdq_even(const B& x, const B& s, const B& lo, const B& hi) noexcept {
  return (even_clamped(x, s, lo, hi) + B(0.0f)) * s;
}

/// std::round (halves away from zero) on a batch, exactly: x - trunc(x) is exact in float.
template <class B>
inline B round_half_away(const B& v) noexcept {
  const B t = xsimd::trunc(v);
  const B d = v - t;
  return xsimd::select(d >= B(0.5f), t + B(1.0f), xsimd::select(d <= B(-0.5f), t - B(1.0f), t));
}

template <class B>
inline B qdq_away_qv(const B& x, const B& s, const B& off, const B& fmin, const B& fmax) noexcept {
  const B v = min_or_second(max_or_second(x, fmin), fmax);
  return round_half_away(v / s - off);
}

template <class B>
inline B qdq_away(const B& x, const B& s, const B& off, const B& fmin, const B& fmax) noexcept {
  return s * (qdq_away_qv(x, s, off, fmin, fmax) + off);
}

inline void qdq_grid_simd(const float* in, float* out, std::size_t n, const qdq_params& p,
                          rounding r) noexcept {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  const std::size_t nv = n - n % W;
  std::size_t i = 0;
  const B s(p.scale);
  if (r == rounding::half_even) {
    const B lo(p.lo), hi(p.hi);
    for (; i < nv; i += W) qdq_even(B::load_unaligned(in + i), s, lo, hi).store_unaligned(out + i);
    for (; i < n; ++i) out[i] = qdq_even_1(in[i], p.scale, p.lo, p.hi);
  } else {
    const B off(p.off), fmin(p.fmin), fmax(p.fmax);
    for (; i < nv; i += W)
      qdq_away(B::load_unaligned(in + i), s, off, fmin, fmax).store_unaligned(out + i);
    for (; i < n; ++i) out[i] = qdq_away_1(in[i], p.scale, p.off, p.fmin, p.fmax);
  }
}

inline void qdq_grid_reference(const float* in, float* out, std::size_t n, const qdq_params& p,
                               rounding r) noexcept {
  if (r == rounding::half_even) {
    for (std::size_t i = 0; i < n; ++i) out[i] = qdq_even_1(in[i], p.scale, p.lo, p.hi);
  } else {
    for (std::size_t i = 0; i < n; ++i)
      out[i] = qdq_away_1(in[i], p.scale, p.off, p.fmin, p.fmax);
  }
}

inline void copy_floats(const float* in, float* out, std::size_t n) noexcept {
  if (in != out && n != 0) std::memmove(out, in, n * sizeof(float));
}

}  // namespace detail

/// Quantize-dequantize n floats with one encoding (in == out allowed):
///   half_even: x̂ = scale * clamp(round_half_even(x / scale), offset, offset + 2^bw - 1)
///   half_away: x̂ = scale * (round_half_away(clamp(x, min, max) / scale - offset) + offset)
/// computed in float with float(scale), dividing (as ONNX QuantizeLinear does). NaN maps to
/// the lowest grid point. A 32-bit int encoding copies; a float16 encoding rounds through half.
/// Throws config_error for a bitwidth outside 2..32 or a scale that is not finite and positive.
inline void qdq(const float* in, float* out, std::size_t n, const encoding& e,
                rounding r = rounding::half_even) {
  switch (detail::kind_of(e)) {
    case detail::qdq_kind::passthrough: detail::copy_floats(in, out, n); return;
    case detail::qdq_kind::fp16: fp16_qdq(in, out, n); return;
    case detail::qdq_kind::grid: detail::qdq_grid_simd(in, out, n, detail::params_of(e), r); return;
  }
}

/// Scalar reference of qdq: same results, bit for bit.
inline void qdq_reference(const float* in, float* out, std::size_t n, const encoding& e,
                          rounding r = rounding::half_even) {
  switch (detail::kind_of(e)) {
    case detail::qdq_kind::passthrough: detail::copy_floats(in, out, n); return;
    case detail::qdq_kind::fp16: fp16_qdq_reference(in, out, n); return;
    case detail::qdq_kind::grid:
      detail::qdq_grid_reference(in, out, n, detail::params_of(e), r);
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// Per-channel layout

/// A tensor seen as [outer, channels, inner] around its channel axis: axis k of any shape has
/// outer = prod(dims before k), inner = prod(dims after k).
struct channel_layout {
  std::size_t outer = 1;
  std::size_t channels = 1;
  std::size_t inner = 1;
};

/// The layout of `shape` around `axis` (negative counts from the back, as in ONNX), checked
/// against the number of per-channel encodings: axis out of range -> config_error; a channel
/// count different from num_encodings -> shape_error.
inline channel_layout channel_layout_of(std::span<const std::size_t> shape, std::ptrdiff_t axis,
                                        std::size_t num_encodings) {
  const auto rank = static_cast<std::ptrdiff_t>(shape.size());
  QKIT_PRECONDITION(axis >= -rank && axis < rank, config_error, "per-channel axis ", axis,
                    " is out of range for a tensor of rank ", rank, " (expected ", -rank, "..",
                    rank - 1, ")");
  const auto k = static_cast<std::size_t>(axis < 0 ? axis + rank : axis);
  channel_layout l;
  for (std::size_t d = 0; d < k; ++d) l.outer *= shape[d];
  l.channels = shape[k];
  for (std::size_t d = k + 1; d < shape.size(); ++d) l.inner *= shape[d];
  QKIT_PRECONDITION(l.channels == num_encodings, shape_error, "per-channel quantization along axis ",
                    axis, ": the tensor has ", l.channels, " channels but ", num_encodings,
                    " encodings were given");
  return l;
}

namespace detail {

/// Validates every channel's encoding before any output is written; returns whether all of
/// them are integer grids (as opposed to pass-through or float16).
inline bool validate_channels(const encoding* encs, std::size_t channels) {
  bool all_grid = true;
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const encoding& e = encs[ch];
    const float s = static_cast<float>(e.scale);
    // The common case, decided without building any error message.
    const bool plain_grid = e.dtype == qkit::dtype::integer && e.bitwidth >= 2 && e.bitwidth < 32 &&
                            std::isfinite(s) && s > 0.0f && std::isfinite(e.min) &&
                            std::isfinite(e.max) && e.min <= e.max;
    if (plain_grid) continue;
    if (kind_of(e) == qdq_kind::grid) (void)params_of(e);  // throws the precise error
    else all_grid = false;
  }
  return all_grid;
}

/// One channel's run of `inner` values (encoding already validated).
inline void qdq_block(const float* in, float* out, std::size_t inner, const encoding& e,
                      rounding r) noexcept {
  if (e.dtype == qkit::dtype::floating) fp16_qdq(in, out, inner);
  else if (e.is_passthrough()) copy_floats(in, out, inner);
  else qdq_grid_simd(in, out, inner, params_unchecked(e), r);
}

/// Per-element parameters of one [channels, inner] row, for layouts whose inner extent is too
/// short for a vector: the row then runs as one vector loop with loaded parameters.
struct row_params {
  std::vector<float> s, a, b, c;  // scale, then lo/hi (half_even) or off/fmin/fmax
};

inline row_params expand_row(const encoding* encs, std::size_t channels, std::size_t inner,
                             rounding r) {
  row_params rp;
  const std::size_t len = channels * inner;
  rp.s.resize(len);
  rp.a.resize(len);
  rp.b.resize(len);
  if (r == rounding::half_away) {
    rp.c.resize(len);
  }
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const qdq_params p = params_unchecked(encs[ch]);
    for (std::size_t j = 0; j < inner; ++j) {
      const std::size_t k = ch * inner + j;
      rp.s[k] = p.scale;
      if (r == rounding::half_even) {
        rp.a[k] = p.lo;
        rp.b[k] = p.hi;
      } else {
        rp.a[k] = p.off;
        rp.b[k] = p.fmin;
        rp.c[k] = p.fmax;
      }
    }
  }
  return rp;
}

inline void qdq_row_simd(const float* in, float* out, std::size_t len, const row_params& rp,
                         rounding r) noexcept {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  const std::size_t nv = len - len % W;
  std::size_t i = 0;
  const float *s = rp.s.data(), *a = rp.a.data(), *b = rp.b.data(), *c = rp.c.data();
  if (r == rounding::half_even) {
    for (; i < nv; i += W)
      qdq_even(B::load_unaligned(in + i), B::load_unaligned(s + i), B::load_unaligned(a + i),
               B::load_unaligned(b + i))
          .store_unaligned(out + i);
    for (; i < len; ++i) out[i] = qdq_even_1(in[i], s[i], a[i], b[i]);
  } else {
    for (; i < nv; i += W)
      qdq_away(B::load_unaligned(in + i), B::load_unaligned(s + i), B::load_unaligned(a + i),
               B::load_unaligned(b + i), B::load_unaligned(c + i))
          .store_unaligned(out + i);
    for (; i < len; ++i) out[i] = qdq_away_1(in[i], s[i], a[i], b[i], c[i]);
  }
}

}  // namespace detail

/// Per-channel quantize-dequantize of data laid out [outer, channels, inner] with encs[c] for
/// channel c (in == out allowed). Same formulas as qdq, per channel.
inline void qdq_per_channel(const float* in, float* out, std::size_t outer, std::size_t channels,
                            std::size_t inner, const encoding* encs,
                            rounding r = rounding::half_even) {
  const bool all_grid = detail::validate_channels(encs, channels);
  if (all_grid && inner < simd<float>::size && channels * inner >= simd<float>::size) {
    const detail::row_params rp = detail::expand_row(encs, channels, inner, r);
    const std::size_t len = channels * inner;
    for (std::size_t o = 0; o < outer; ++o) detail::qdq_row_simd(in + o * len, out + o * len, len, rp, r);
    return;
  }
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      detail::qdq_block(in + at, out + at, inner, encs[ch], r);
    }
}

/// Scalar reference of qdq_per_channel.
inline void qdq_per_channel_reference(const float* in, float* out, std::size_t outer,
                                      std::size_t channels, std::size_t inner,
                                      const encoding* encs, rounding r = rounding::half_even) {
  for (std::size_t o = 0; o < outer; ++o) {
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      qdq_reference(in + at, out + at, inner, encs[ch], r);
    }
  }
}

/// Per-channel quantize-dequantize of a tensor of `shape` along `axis` (negative from the
/// back), one encoding per channel; validates axis and channel count (see channel_layout_of).
inline void qdq_per_channel(const float* in, float* out, std::span<const std::size_t> shape,
                            std::ptrdiff_t axis, const std::vector<encoding>& encs,
                            rounding r = rounding::half_even) {
  const channel_layout l = channel_layout_of(shape, axis, encs.size());
  qdq_per_channel(in, out, l.outer, l.channels, l.inner, encs.data(), r);
}

// ---------------------------------------------------------------------------------------------
// Integer storage

namespace detail {

template <class Int>
inline constexpr bool is_storage_v =
    std::is_same_v<Int, std::int8_t> || std::is_same_v<Int, std::uint8_t> ||
    std::is_same_v<Int, std::int16_t> || std::is_same_v<Int, std::uint16_t> ||
    std::is_same_v<Int, std::int32_t>;

template <class Int>
inline const char* storage_name() {
  if constexpr (std::is_same_v<Int, std::int8_t>) return "int8";
  else if constexpr (std::is_same_v<Int, std::uint8_t>) return "uint8";
  else if constexpr (std::is_same_v<Int, std::int16_t>) return "int16";
  else if constexpr (std::is_same_v<Int, std::uint16_t>) return "uint16";
  else return "int32";
}

/// Storage facts of one encoding: signed storage holds q - 2^(bw-1).
struct storage_params {
  qdq_params p{};
  std::int64_t qmax = 0;
  std::int64_t shift = 0;   ///< 2^(bw-1) for signed storage, 0 for unsigned
  std::int64_t offset = 0;
};

template <class Int>
inline storage_params storage_params_of(const encoding& e) {
  static_assert(is_storage_v<Int>,
                "qkit integer storage must be int8_t, uint8_t, int16_t, uint16_t or int32_t");
  QKIT_PRECONDITION(e.dtype == qkit::dtype::integer, config_error,
                    "a float16 encoding cannot be stored as ", storage_name<Int>());
  check_int_bitwidth(e.bitwidth);
  const int bits = static_cast<int>(sizeof(Int) * 8);
  QKIT_PRECONDITION(!e.is_passthrough() && e.bitwidth <= bits, config_error, "bitwidth ",
                    e.bitwidth, " does not fit ", storage_name<Int>(), " storage (at most ",
                    std::min(bits, 31), " bits)");
  storage_params sp;
  sp.p = params_of(e);
  sp.qmax = top_step(e) - e.offset;
  sp.shift = std::is_signed_v<Int> ? (std::int64_t{1} << (e.bitwidth - 1)) : 0;
  sp.offset = e.offset;
  return sp;
}

/// Grid integer to storage: `v` holds round(x/scale) clamped (half_even; base = offset) or
/// q itself (half_away; base = 0). The integer clamp keeps q on the grid when float cannot
/// hold every grid point (bitwidths above 24).
template <class Int>
inline Int to_storage(float v, std::int64_t base, const storage_params& sp) noexcept {
  std::int64_t q = static_cast<std::int64_t>(v) - base;
  q = q < 0 ? 0 : q;
  q = q > sp.qmax ? sp.qmax : q;
  return static_cast<Int>(q - sp.shift);
}

inline constexpr std::size_t storage_chunk = 512;

template <class Int>
inline void quantize_simd(const float* in, Int* out, std::size_t n, const storage_params& sp,
                          rounding r) noexcept {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  alignas(64) float buf[storage_chunk];
  const qdq_params& p = sp.p;
  const B s(p.scale), lo(p.lo), hi(p.hi), off(p.off), fmin(p.fmin), fmax(p.fmax);
  const std::int64_t base = r == rounding::half_even ? sp.offset : 0;
  for (std::size_t at = 0; at < n; at += storage_chunk) {
    const std::size_t m = std::min(storage_chunk, n - at);
    const float* x = in + at;
    const std::size_t mv = m - m % W;
    std::size_t i = 0;
    if (r == rounding::half_even) {
      for (; i < mv; i += W) even_clamped(B::load_unaligned(x + i), s, lo, hi).store_aligned(buf + i);
      for (; i < m; ++i) buf[i] = even_clamped_1(x[i], p.scale, p.lo, p.hi);
    } else {
      for (; i < mv; i += W) qdq_away_qv(B::load_unaligned(x + i), s, off, fmin, fmax).store_aligned(buf + i);
      for (; i < m; ++i) buf[i] = qdq_away_q(x[i], p.scale, p.off, p.fmin, p.fmax);
    }
    for (i = 0; i < m; ++i) out[at + i] = to_storage<Int>(buf[i], base, sp);
  }
}

template <class Int>
inline void quantize_scalar(const float* in, Int* out, std::size_t n, const storage_params& sp,
                            rounding r) noexcept {
  const qdq_params& p = sp.p;
  if (r == rounding::half_even) {
    for (std::size_t i = 0; i < n; ++i)
      out[i] = to_storage<Int>(even_clamped_1(in[i], p.scale, p.lo, p.hi), sp.offset, sp);
  } else {
    for (std::size_t i = 0; i < n; ++i)
      out[i] = to_storage<Int>(qdq_away_q(in[i], p.scale, p.off, p.fmin, p.fmax), 0, sp);
  }
}

/// x̂ = float(stored - zero_point) * scale, zero_point = -offset - shift (ONNX DequantizeLinear).
template <class Int>
inline void dequantize_simd(const Int* in, float* out, std::size_t n, const storage_params& sp) noexcept {
  using B = simd<float>;
  using I = simd<std::int32_t>;
  constexpr std::size_t W = B::size;
  const std::int64_t k = sp.offset + sp.shift;
  const float s = sp.p.scale;
  // int32 holds stored + k exactly for 8/16-bit storage and any sane offset; otherwise the
  // exact 64-bit sum is rounded to float once, which is what the scalar path does too.
  const bool int32_ok = sizeof(Int) <= 2 && k > -(std::int64_t{1} << 30) && k < (std::int64_t{1} << 30);
  if (!int32_ok) {
    for (std::size_t i = 0; i < n; ++i)
      out[i] = static_cast<float>(static_cast<std::int64_t>(in[i]) + k) * s;
    return;
  }
  alignas(64) std::int32_t buf[storage_chunk];
  const I kv(static_cast<std::int32_t>(k));
  const B sv(s);
  for (std::size_t at = 0; at < n; at += storage_chunk) {
    const std::size_t m = std::min(storage_chunk, n - at);
    for (std::size_t i = 0; i < m; ++i) buf[i] = static_cast<std::int32_t>(in[at + i]);
    const std::size_t mv = m - m % W;
    std::size_t i = 0;
    for (; i < mv; i += W)
      (xsimd::batch_cast<float>(I::load_aligned(buf + i) + kv) * sv).store_unaligned(out + at + i);
    for (; i < m; ++i) out[at + i] = static_cast<float>(buf[i] + static_cast<std::int32_t>(k)) * s;
  }
}

template <class Int>
inline void dequantize_scalar(const Int* in, float* out, std::size_t n, const storage_params& sp) noexcept {
  const std::int64_t k = sp.offset + sp.shift;
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<float>(static_cast<std::int64_t>(in[i]) + k) * sp.p.scale;
}

}  // namespace detail

/// Quantizes n floats to integer storage Int (int8, uint8, int16, uint16, int32; 4-bit values
/// live in int8/uint8). Unsigned storage holds q = clamp(round(x/scale) - offset, 0, 2^bw - 1)
/// (ONNX zero point -offset); signed storage holds q - 2^(bw-1) (zero point -offset - 2^(bw-1)).
/// dequantize(quantize(x)) equals qdq(x) bit for bit. Throws config_error if the encoding is
/// float16, pass-through, or wider than Int.
template <class Int>
inline void quantize(const float* in, Int* out, std::size_t n, const encoding& e,
                     rounding r = rounding::half_even) {
  detail::quantize_simd(in, out, n, detail::storage_params_of<Int>(e), r);
}

template <class Int>
inline void quantize_reference(const float* in, Int* out, std::size_t n, const encoding& e,
                               rounding r = rounding::half_even) {
  detail::quantize_scalar(in, out, n, detail::storage_params_of<Int>(e), r);
}

/// Dequantizes integer storage: x̂ = float(stored - zero_point) * float(scale).
template <class Int>
inline void dequantize(const Int* in, float* out, std::size_t n, const encoding& e) {
  detail::dequantize_simd(in, out, n, detail::storage_params_of<Int>(e));
}

template <class Int>
inline void dequantize_reference(const Int* in, float* out, std::size_t n, const encoding& e) {
  detail::dequantize_scalar(in, out, n, detail::storage_params_of<Int>(e));
}

/// Per-channel quantize to storage, data laid out [outer, channels, inner].
template <class Int>
inline void quantize_per_channel(const float* in, Int* out, std::size_t outer, std::size_t channels,
                                 std::size_t inner, const encoding* encs,
                                 rounding r = rounding::half_even) {
  std::vector<detail::storage_params> sp(channels);
  for (std::size_t ch = 0; ch < channels; ++ch) sp[ch] = detail::storage_params_of<Int>(encs[ch]);
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      detail::quantize_simd(in + at, out + at, inner, sp[ch], r);
    }
}

template <class Int>
inline void quantize_per_channel_reference(const float* in, Int* out, std::size_t outer,
                                           std::size_t channels, std::size_t inner,
                                           const encoding* encs, rounding r = rounding::half_even) {
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      quantize_reference(in + at, out + at, inner, encs[ch], r);
    }
}

/// Per-channel dequantize from storage, data laid out [outer, channels, inner].
template <class Int>
inline void dequantize_per_channel(const Int* in, float* out, std::size_t outer, std::size_t channels,
                                   std::size_t inner, const encoding* encs) {
  std::vector<detail::storage_params> sp(channels);
  for (std::size_t ch = 0; ch < channels; ++ch) sp[ch] = detail::storage_params_of<Int>(encs[ch]);
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      detail::dequantize_simd(in + at, out + at, inner, sp[ch]);
    }
}

template <class Int>
inline void dequantize_per_channel_reference(const Int* in, float* out, std::size_t outer,
                                             std::size_t channels, std::size_t inner,
                                             const encoding* encs) {
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      dequantize_reference(in + at, out + at, inner, encs[ch]);
    }
}

/// Shape + axis forms of the per-channel storage kernels (validated like qdq_per_channel).
template <class Int>
inline void quantize_per_channel(const float* in, Int* out, std::span<const std::size_t> shape,
                                 std::ptrdiff_t axis, const std::vector<encoding>& encs,
                                 rounding r = rounding::half_even) {
  const channel_layout l = channel_layout_of(shape, axis, encs.size());
  quantize_per_channel(in, out, l.outer, l.channels, l.inner, encs.data(), r);
}

template <class Int>
inline void dequantize_per_channel(const Int* in, float* out, std::span<const std::size_t> shape,
                                   std::ptrdiff_t axis, const std::vector<encoding>& encs) {
  const channel_layout l = channel_layout_of(shape, axis, encs.size());
  dequantize_per_channel(in, out, l.outer, l.channels, l.inner, encs.data());
}

// ---------------------------------------------------------------------------------------------
// Straight-through estimator

namespace detail {

template <class M>
inline M mask_value(bool inside) noexcept {
  return inside ? M(1) : M(0);
}

/// mask = 1 where the clamp of qdq leaves x alone:
///   half_even: offset <= round_half_even(x / scale) <= offset + 2^bw - 1 (the rounded value
///              is inside the grid, as PyTorch's fake-quantize gradient);
///   half_away: min <= x <= max (AIMET's straight-through gradient);
/// pass-through: 1 everywhere; float16: 1 where |x| < 65520 (x does not overflow to inf).
/// NaN gets 0 (except pass-through).
template <class M>
inline void ste_mask_simd(const float* x, M* mask, std::size_t n, const encoding& e, rounding r) {
  using B = simd<float>;
  constexpr std::size_t W = B::size;
  const qdq_kind kind = kind_of(e);
  if (kind == qdq_kind::passthrough) {
    for (std::size_t i = 0; i < n; ++i) mask[i] = M(1);
    return;
  }
  qdq_params p{};
  if (kind == qdq_kind::grid) p = params_of(e);
  const B s(p.scale), lo(p.lo), hi(p.hi), fmin(p.fmin), fmax(p.fmax), one(1.0f), zero(0.0f);
  const B limit(65520.0f);
  alignas(64) float buf[storage_chunk];
  for (std::size_t at = 0; at < n; at += storage_chunk) {
    const std::size_t m = std::min(storage_chunk, n - at);
    const float* xs = x + at;
    float* dst = std::is_same_v<M, float> ? reinterpret_cast<float*>(mask + at) : buf;
    const std::size_t mv = m - m % W;
    std::size_t i = 0;
    for (; i < mv; i += W) {
      const B v = B::load_unaligned(xs + i);
      typename B::batch_bool_type in;
      if (kind == qdq_kind::fp16) {
        in = xsimd::abs(v) < limit;
      } else if (r == rounding::half_even) {
        const B t = xsimd::nearbyint(v / s);
        in = (t >= lo) & (t <= hi);
      } else {
        in = (v >= fmin) & (v <= fmax);
      }
      xsimd::select(in, one, zero).store_unaligned(dst + i);
    }
    for (; i < m; ++i) {
      const float v = xs[i];
      bool in;
      if (kind == qdq_kind::fp16) {
        in = std::fabs(v) < 65520.0f;
      } else if (r == rounding::half_even) {
        const float t = std::nearbyint(v / p.scale);
        in = t >= p.lo && t <= p.hi;
      } else {
        in = v >= p.fmin && v <= p.fmax;
      }
      dst[i] = in ? 1.0f : 0.0f;
    }
    if constexpr (!std::is_same_v<M, float>)
      for (i = 0; i < m; ++i) mask[at + i] = static_cast<M>(buf[i]);
  }
}

template <class M>
inline void ste_mask_scalar(const float* x, M* mask, std::size_t n, const encoding& e, rounding r) {
  const qdq_kind kind = kind_of(e);
  if (kind == qdq_kind::passthrough) {
    for (std::size_t i = 0; i < n; ++i) mask[i] = M(1);
    return;
  }
  qdq_params p{};
  if (kind == qdq_kind::grid) p = params_of(e);
  for (std::size_t i = 0; i < n; ++i) {
    const float v = x[i];
    bool in;
    if (kind == qdq_kind::fp16) {
      in = std::fabs(v) < 65520.0f;
    } else if (r == rounding::half_even) {
      const float t = std::nearbyint(v / p.scale);
      in = t >= p.lo && t <= p.hi;
    } else {
      in = v >= p.fmin && v <= p.fmax;
    }
    mask[i] = mask_value<M>(in);
  }
}

}  // namespace detail

/// Gradient mask of the straight-through estimator for qdq with the same encoding and
/// rounding: 1 where qdq's clamp does not act, 0 where it saturates (see docs/encodings.md).
inline void ste_mask(const float* x, float* mask, std::size_t n, const encoding& e,
                     rounding r = rounding::half_even) {
  detail::ste_mask_simd(x, mask, n, e, r);
}
inline void ste_mask(const float* x, std::uint8_t* mask, std::size_t n, const encoding& e,
                     rounding r = rounding::half_even) {
  detail::ste_mask_simd(x, mask, n, e, r);
}
inline void ste_mask_reference(const float* x, float* mask, std::size_t n, const encoding& e,
                               rounding r = rounding::half_even) {
  detail::ste_mask_scalar(x, mask, n, e, r);
}
inline void ste_mask_reference(const float* x, std::uint8_t* mask, std::size_t n,
                               const encoding& e, rounding r = rounding::half_even) {
  detail::ste_mask_scalar(x, mask, n, e, r);
}

/// Per-channel straight-through mask, data laid out [outer, channels, inner].
inline void ste_mask_per_channel(const float* x, float* mask, std::size_t outer,
                                 std::size_t channels, std::size_t inner, const encoding* encs,
                                 rounding r = rounding::half_even) {
  for (std::size_t ch = 0; ch < channels; ++ch) (void)detail::kind_of(encs[ch]);
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const std::size_t at = (o * channels + ch) * inner;
      ste_mask(x + at, mask + at, inner, encs[ch], r);
    }
}

}  // namespace qkit
