// qkit/sim/quantizer.hpp — one quantizer: calibration statistics, encodings and the
// quantize-dequantize it applies. Rounding and the range setter are compile-time policies;
// bitwidth, scheme flags, per-channel axis, dtype, enabled and frozen are runtime state,
// because AIMET-style config files, mixed precision and analysis change them per quantizer.
//
// Lifecycle: observe(batch)... -> compute_encodings() -> qdq(x) (forward) / ste_mask(x) (QAT).
// set_encodings() installs encodings from elsewhere (a file, another run); freeze() keeps them
// through later observe/compute calls. Disabled or 32-bit int quantizers pass values through;
// a float16 quantizer rounds through half precision and needs no calibration.
#pragma once

#include <cstddef>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "../calib/minmax.hpp"
#include "../calib/range_setter.hpp"
#include "../calib/stats.hpp"
#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"
#include "../quant/encoding.hpp"
#include "../quant/fp16.hpp"
#include "../quant/qdq.hpp"

namespace qkit {

/// A quantizer's runtime settings (AIMET's per-quantizer config values).
struct quantizer_settings {
  int bitwidth = 8;
  scheme s = scheme::asymmetric;
  /// Per-channel along this axis (negative counts from the back); per-tensor when empty.
  std::optional<int> channel_axis;
  qkit::dtype dtype = qkit::dtype::integer;
  bool enabled = true;
  friend bool operator==(const quantizer_settings&, const quantizer_settings&) = default;
};

/// Default settings as a compile-time policy: the scheme and granularity a kind of quantizer
/// starts with (runtime settings may change them later).
template <int Bitwidth, bool Symmetric, bool PerChannel, int Axis = 0>
struct quantizer_defaults {
  static quantizer_settings settings() {
    quantizer_settings s;
    s.bitwidth = Bitwidth;
    s.s = Symmetric ? scheme::symmetric_signed : scheme::asymmetric;
    if (PerChannel) s.channel_axis = Axis;
    return s;
  }
};
/// AIMET's defaults: activations asymmetric per tensor, parameters symmetric.
using activation_defaults = quantizer_defaults<8, false, false>;
using param_defaults = quantizer_defaults<8, true, false>;
/// Per output channel (axis 0 of OIHW / [out, in] weights), symmetric.
using per_channel_weight_defaults = quantizer_defaults<8, true, true, 0>;

template <range_setter RangeSetter = minmax_range, rounding R = rounding::half_even,
          class Defaults = activation_defaults>
class quantizer {
 public:
  using range_setter_type = RangeSetter;
  using defaults_type = Defaults;
  static constexpr rounding rounding_policy = R;

  /// A quantizer with the policy's default settings.
  explicit quantizer(std::string name = "quantizer")
      : quantizer(std::move(name), Defaults::settings()) {}

  /// `prototype` carries the range setter's options (percentile, histogram mode); per-channel
  /// quantizers copy it once per channel.
  quantizer(std::string name, quantizer_settings settings, RangeSetter prototype = RangeSetter{})
      : name_(std::move(name)), settings_(settings), prototype_(std::move(prototype)) {
    validate(settings_);
  }

  // ---- settings ----------------------------------------------------------------------------
  const std::string& name() const { return name_; }
  /// Renames the quantizer (QuantSim does, when a folded layer's output takes over the
  /// quantizer of the batch norm folded into it).
  void set_name(std::string name) { name_ = std::move(name); }
  /// The range setter every new statistic starts from (its options).
  const RangeSetter& prototype() const { return prototype_; }
  const quantizer_settings& settings() const { return settings_; }
  int bitwidth() const { return settings_.bitwidth; }
  const qkit::scheme& scheme_flags() const { return settings_.s; }
  std::optional<int> channel_axis() const { return settings_.channel_axis; }
  bool per_channel() const { return settings_.channel_axis.has_value(); }
  bool enabled() const { return settings_.enabled; }
  bool frozen() const { return frozen_; }

  /// Replaces all settings. A new axis or dtype discards the statistics; a new bitwidth or
  /// scheme keeps them (compute_encodings again). Encodings are dropped whenever the grid they
  /// describe changes. A frozen quantizer refuses a new grid (bitwidth, scheme, dtype, axis)
  /// with a config_error: its encodings stay put by definition, so accepting the change would
  /// make bitwidth() report one grid while forward() computes on another. Unfreeze, change,
  /// then compute_encodings (or set_encodings).
  void set_settings(const quantizer_settings& s) {
    validate(s);
    const bool layout_changed = s.channel_axis != settings_.channel_axis || s.dtype != settings_.dtype;
    const bool grid_changed = layout_changed || s.bitwidth != settings_.bitwidth || s.s != settings_.s;
    QKIT_PRECONDITION(!(frozen_ && grid_changed), config_error, "quantizer '", name_,
                      "': its encodings are frozen (bitwidth ", settings_.bitwidth,
                      "); unfreeze it before changing its bitwidth, scheme, dtype or axis, "
                      "then compute_encodings");
    settings_ = s;
    if (layout_changed) setters_.clear();
    if (grid_changed) encodings_.clear();
  }
  void set_bitwidth(int bw) { with([&](quantizer_settings& s) { s.bitwidth = bw; }); }
  void set_scheme(const qkit::scheme& sc) { with([&](quantizer_settings& s) { s.s = sc; }); }
  void set_channel_axis(std::optional<int> axis) {
    with([&](quantizer_settings& s) { s.channel_axis = axis; });
  }
  /// Float quantizers are float16, so choosing dtype::floating also sets the bitwidth to 16.
  void set_dtype(qkit::dtype d) {
    with([&](quantizer_settings& s) {
      s.dtype = d;
      if (d == qkit::dtype::floating) s.bitwidth = 16;
    });
  }
  void set_enabled(bool on) { settings_.enabled = on; }

  /// Frozen: observe() and compute_encodings() leave the encodings (and statistics) alone.
  void freeze() { frozen_ = true; }
  void unfreeze() { frozen_ = false; }

  // ---- calibration -------------------------------------------------------------------------

  /// Adds one batch of the tensor this quantizer sees. NaN/Inf -> calibration_error naming
  /// the quantizer, how many and the (flat) index of the first; a rejected batch changes
  /// nothing. Float16 and frozen quantizers ignore data.
  void observe(const float* data, std::span<const std::size_t> shape) {
    if (frozen_ || settings_.dtype == qkit::dtype::floating) return;
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    if (!per_channel()) {
      if (setters_.empty()) setters_.assign(1, prototype_);
      try {
        setters_[0].observe(data, n);
      } catch (const calibration_error& e) {
        rethrow(e);
      }
      return;
    }
    // Per channel: check the whole batch first, so the error gives the flat index and no
    // channel's statistics are updated by a rejected batch.
    const channel_layout l = layout(shape, setters_.empty() ? std::nullopt : std::optional(setters_.size()));
    const scan_result r = scan_min_max(data, n);
    if (!r.all_finite())
      QKIT_THROW(calibration_error, "quantizer '", name_, "': ", r.nonfinite, " of ", n,
                 " calibration values are NaN or Inf (first at index ", r.first_nonfinite, ")");
    if (setters_.empty()) setters_.assign(l.channels, prototype_);
    std::size_t c = 0;
    try {
      if (l.outer == 1) {
        // Contiguous channels (axis 0 of OIHW weights): no copy.
        for (; c < l.channels; ++c) setters_[c].observe(data + c * l.inner, l.inner);
        return;
      }
      std::vector<float> gathered(l.outer * l.inner);
      for (; c < l.channels; ++c) {
        for (std::size_t o = 0; o < l.outer; ++o)
          std::memcpy(gathered.data() + o * l.inner, data + (o * l.channels + c) * l.inner,
                      l.inner * sizeof(float));
        setters_[c].observe(gathered.data(), gathered.size());
      }
    } catch (const calibration_error& e) {
      QKIT_THROW(calibration_error, "quantizer '", name_, "' channel ", c, ": ", strip(e.what()));
    }
  }
  void observe(const tensor& t) { observe(t.data(), std::span<const std::size_t>(t.shape().data(), t.shape().size())); }

  /// Merges the statistics another shard of calibration data gave to an equally configured
  /// quantizer: the result equals observing both shards here.
  void merge(const quantizer& o) {
    QKIT_PRECONDITION(o.settings_.channel_axis == settings_.channel_axis, config_error,
                      "quantizer '", name_, "': cannot merge statistics with a different per-channel axis");
    if (frozen_ || o.setters_.empty()) return;
    if (setters_.empty()) {
      setters_ = o.setters_;
      return;
    }
    QKIT_PRECONDITION(o.setters_.size() == setters_.size(), shape_error, "quantizer '", name_,
                      "': cannot merge ", o.setters_.size(), " channels into ", setters_.size());
    for (std::size_t c = 0; c < setters_.size(); ++c) setters_[c].merge(o.setters_[c]);
  }

  bool has_statistics() const { return !setters_.empty() && !setters_[0].empty(); }
  void reset_statistics() { setters_.clear(); }
  /// Puts back statistics taken with statistics() from this quantizer (QuantSim does, when a
  /// calibration batch fails part way through the model).
  void restore_statistics(std::vector<RangeSetter> s) { setters_ = std::move(s); }
  /// The range setters (one per channel, or one).
  const std::vector<RangeSetter>& statistics() const { return setters_; }
  /// Memory the calibration statistics hold: the range setters (for those that report their
  /// heap use through bytes(), which every qkit range setter does) and their vector. Bounded
  /// by the channel count and the setters' fixed sizes, never by how much data was observed.
  std::size_t statistics_bytes() const {
    std::size_t b = setters_.capacity() * sizeof(RangeSetter);
    if constexpr (requires(const RangeSetter& r) { { r.bytes() } -> std::convertible_to<std::size_t>; })
      for (const auto& r : setters_) b += r.bytes() - sizeof(RangeSetter);
    return b;
  }

  /// Turns the statistics into encodings (a no-op when frozen). No data -> calibration_error.
  void compute_encodings() {
    if (frozen_) return;
    if (settings_.dtype == qkit::dtype::floating) {
      encodings_.assign(1, encoding::fp16());
      return;
    }
    QKIT_PRECONDITION(has_statistics(), calibration_error, "quantizer '", name_,
                      "': no data observed (call observe before compute_encodings)");
    std::vector<encoding> encs;
    encs.reserve(setters_.size());
    try {
      for (const auto& r : setters_) {
        encoding e = r.compute_encoding(settings_.bitwidth, settings_.s);
        e.dtype = qkit::dtype::integer;
        encs.push_back(e);
      }
    } catch (const calibration_error& e) {
      rethrow(e);
    }
    encodings_ = std::move(encs);
  }

  bool has_encodings() const { return !encodings_.empty(); }
  /// One encoding per tensor, or one per channel.
  const std::vector<encoding>& encodings() const { return encodings_; }

  /// Installs encodings (one, or one per channel). Frozen quantizers refuse, unfreeze first.
  /// The settings follow them: bitwidth, dtype and symmetric flag come from the encodings.
  void set_encodings(std::vector<encoding> encs) {
    QKIT_PRECONDITION(!frozen_, config_error, "quantizer '", name_,
                      "': its encodings are frozen (unfreeze before set_encodings)");
    QKIT_PRECONDITION(!encs.empty(), config_error, "quantizer '", name_, "': no encodings given");
    QKIT_PRECONDITION(per_channel() || encs.size() == 1, shape_error, "quantizer '", name_,
                      "' is per-tensor but ", encs.size(), " encodings were given");
    for (const auto& e : encs) {
      QKIT_PRECONDITION(e.bitwidth == encs[0].bitwidth && e.dtype == encs[0].dtype, config_error,
                        "quantizer '", name_, "': per-channel encodings mix bitwidths or dtypes");
      try {
        const float probe = 0.0f;
        float out;
        qkit::qdq(&probe, &out, 1, e, R);  // validates bitwidth and scale
      } catch (const error& err) {
        QKIT_THROW(config_error, "quantizer '", name_, "': invalid encoding (", strip(err.what()), ")");
      }
    }
    settings_.bitwidth = encs[0].bitwidth;
    settings_.dtype = encs[0].dtype;
    settings_.s.symmetric = encs[0].symmetric;
    encodings_ = std::move(encs);
  }
  void set_encoding(const encoding& e) { set_encodings({e}); }

  // ---- forward -----------------------------------------------------------------------------

  /// Quantize-dequantize (in == out allowed). Identity when disabled or 32-bit int.
  void qdq(const float* in, float* out, std::span<const std::size_t> shape) const {
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    if (passes_through()) {
      if (in != out) std::memcpy(out, in, n * sizeof(float));
      return;
    }
    if (settings_.dtype == qkit::dtype::floating) {
      fp16_qdq(in, out, n);
      return;
    }
    require_encodings();
    if (per_channel())
      qdq_per_channel(in, out, shape, *settings_.channel_axis, encodings_, R);
    else
      qkit::qdq(in, out, n, encodings_[0], R);
  }
  tensor qdq(const tensor& x) const {
    tensor y = tensor::from_shape(x.shape());
    qdq(x.data(), y.data(), shape_of(x));
    return y;
  }
  void qdq_inplace(tensor& x) const { qdq(x.data(), x.data(), shape_of(x)); }

  /// Straight-through gradient mask for QAT: 1 where qdq does not saturate, 0 where it does;
  /// all ones when the quantizer passes values through.
  void ste_mask(const float* x, float* mask, std::span<const std::size_t> shape) const {
    std::size_t n = 1;
    for (auto d : shape) n *= d;
    if (passes_through()) {
      for (std::size_t i = 0; i < n; ++i) mask[i] = 1.0f;
      return;
    }
    if (settings_.dtype == qkit::dtype::floating) {
      qkit::ste_mask(x, mask, n, encoding::fp16(), R);
      return;
    }
    require_encodings();
    if (per_channel()) {
      const channel_layout l = channel_layout_of(shape, *settings_.channel_axis, encodings_.size());
      ste_mask_per_channel(x, mask, l.outer, l.channels, l.inner, encodings_.data(), R);
    } else {
      qkit::ste_mask(x, mask, n, encodings_[0], R);
    }
  }
  tensor ste_mask(const tensor& x) const {
    tensor m = tensor::from_shape(x.shape());
    ste_mask(x.data(), m.data(), shape_of(x));
    return m;
  }

 private:
  static std::span<const std::size_t> shape_of(const tensor& x) {
    return {x.shape().data(), x.shape().size()};
  }

  bool passes_through() const {
    return !settings_.enabled ||
           (settings_.dtype == qkit::dtype::integer && settings_.bitwidth >= 32);
  }

  void require_encodings() const {
    QKIT_PRECONDITION(has_encodings(), calibration_error, "quantizer '", name_,
                      "' has no encodings (call compute_encodings or set_encodings first)");
  }

  channel_layout layout(std::span<const std::size_t> shape, std::optional<std::size_t> channels) const {
    const auto rank = static_cast<std::ptrdiff_t>(shape.size());
    const std::ptrdiff_t axis = *settings_.channel_axis;
    QKIT_PRECONDITION(axis >= -rank && axis < rank, config_error, "quantizer '", name_,
                      "': per-channel axis ", axis, " is out of range for a tensor of shape ",
                      shape_string(shape));
    const std::size_t k = static_cast<std::size_t>(axis < 0 ? axis + rank : axis);
    QKIT_PRECONDITION(!channels || *channels == shape[k], shape_error, "quantizer '", name_,
                      "': this batch has ", shape[k], " channels along axis ", axis,
                      " (shape ", shape_string(shape), ") but earlier batches had ", *channels);
    return channel_layout_of(shape, axis, shape[k]);
  }

  void validate(const quantizer_settings& s) const {
    if (s.dtype == qkit::dtype::floating) {
      QKIT_PRECONDITION(s.bitwidth == 16, config_error, "quantizer '", name_, "': float bitwidth ",
                        s.bitwidth, " is not supported (float quantizers are float16)");
    } else {
      QKIT_PRECONDITION(s.bitwidth >= 2 && s.bitwidth <= 32, config_error, "quantizer '", name_,
                        "': bitwidth ", s.bitwidth, " is outside 2..32");
    }
  }

  template <class F>
  void with(F&& change) {
    quantizer_settings s = settings_;
    change(s);
    set_settings(s);
  }

  static std::string strip(const char* what) {
    std::string m(what);
    for (const char* p : {"qkit: calibration error: ", "qkit: config error: ", "qkit: shape error: ", "qkit: "})
      if (m.rfind(p, 0) == 0) return m.substr(std::strlen(p));
    return m;
  }
  [[noreturn]] void rethrow(const calibration_error& e) const {
    QKIT_THROW(calibration_error, "quantizer '", name_, "': ", strip(e.what()));
  }

  std::string name_;
  quantizer_settings settings_;
  RangeSetter prototype_;
  std::vector<RangeSetter> setters_;
  std::vector<encoding> encodings_;
  bool frozen_ = false;
};

}  // namespace qkit
