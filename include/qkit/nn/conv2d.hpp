// qkit/nn/conv2d.hpp — the convolution layer (ONNX Conv): any kernel, stride, asymmetric
// padding, dilation and groups, optional bias. Parameters "weight" [O, C/groups, KH, KW] and
// "bias" [O]; attributes are exposed for ONNX export and the PTQ passes.
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <random>

#include "../tensor/conv.hpp"
#include "weighted_layer.hpp"

namespace qkit::nn {

/// The common square case: one kernel size, stride, symmetric padding and dilation.
struct conv2d_options {
  std::size_t stride = 1;
  std::size_t padding = 0;
  std::size_t dilation = 1;
  std::size_t groups = 1;
  bool bias = true;
};

class conv2d : public weighted_layer {
 public:
  static constexpr std::string_view op_type = "Conv";

  conv2d(std::size_t in_channels, std::size_t out_channels, std::size_t kernel,
         conv2d_options o = {})
      : conv2d(in_channels, out_channels, kernel, kernel, square_params(o), o.bias) {}

  /// Any kernel shape and the full parameter set (asymmetric pads, per-axis stride/dilation).
  conv2d(std::size_t in_channels, std::size_t out_channels, std::size_t kernel_h,
         std::size_t kernel_w, conv2d_params p, bool bias = true)
      : in_(in_channels), out_(out_channels), kh_(kernel_h), kw_(kernel_w), p_(p) {
    QKIT_PRECONDITION(in_ > 0 && out_ > 0 && kh_ > 0 && kw_ > 0, shape_error,
                      "Conv: channels and kernel sizes must be positive, got in ", in_, ", out ",
                      out_, ", kernel ", kh_, "x", kw_);
    QKIT_PRECONDITION(p_.groups > 0 && in_ % p_.groups == 0 && out_ % p_.groups == 0,
                      shape_error, "Conv: groups (", p_.groups, ") must divide in (", in_,
                      ") and out (", out_, ") channels");
    QKIT_PRECONDITION(p_.stride_h > 0 && p_.stride_w > 0 && p_.dilation_h > 0 &&
                          p_.dilation_w > 0,
                      shape_error, "Conv: strides and dilations must be positive");
    init_weight(weight_shape(), p_.groups, bias);
  }

  /// The conv2d_params of the square case. Kept out of line: GCC 12.2 with -march=native
  /// (AVX-512) can mis-vectorize such an inlined struct initialization from repeated values.
  [[gnu::noinline]] static conv2d_params square_params(const conv2d_options& o) {
    conv2d_params p;
    p.stride_h = p.stride_w = o.stride;
    p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = o.padding;
    p.dilation_h = p.dilation_w = o.dilation;
    p.groups = o.groups;
    return p;
  }

  // ---- attributes ----
  std::size_t in_channels() const { return in_; }
  std::size_t out_channels() const { return out_; }
  std::size_t groups() const { return p_.groups; }
  std::array<std::size_t, 2> kernel_shape() const { return {kh_, kw_}; }
  std::array<std::size_t, 2> strides() const { return {p_.stride_h, p_.stride_w}; }
  /// ONNX order: [top, left, bottom, right].
  std::array<std::size_t, 4> pads() const {
    return {p_.pad_top, p_.pad_left, p_.pad_bottom, p_.pad_right};
  }
  std::array<std::size_t, 2> dilations() const { return {p_.dilation_h, p_.dilation_w}; }
  const conv2d_params& params() const { return p_; }
  /// A depthwise convolution: one group per input channel.
  bool is_depthwise() const { return p_.groups == in_ && p_.groups > 1; }
  /// A depthwise conv without a channel multiplier (one output per input channel, so output
  /// channel i reads only input channel i) is a `depthwise_conv` to the passes; a depthwise
  /// conv with a multiplier is grouped like any other `conv`.
  op_kind kind() const {
    return is_depthwise() && out_ == in_ ? op_kind::depthwise_conv : op_kind::conv;
  }
  shape_type weight_shape() const { return {out_, in_ / p_.groups, kh_, kw_}; }
  std::size_t fan_in() const { return in_ / p_.groups * kh_ * kw_; }

  /// Kaiming/He normal init for the ReLU family: std = sqrt(2 / fan_in); bias 0.
  void reset_parameters(std::mt19937& rng) {
    std::normal_distribution<float> d(0.0f, std::sqrt(2.0f / float(fan_in())));
    for (auto& w : weight_) w = d(rng);
    if (has_bias_) bias_.fill(0.0f);
  }

  conv2d_shape shape_for(const tensor& x) const {
    conv2d_shape s;
    s.N = x.shape(0); s.C = in_; s.H = x.shape(2); s.W = x.shape(3);
    s.O = out_; s.KH = kh_; s.KW = kw_; s.p = p_;
    return s;
  }

  /// x by value: the layer keeps it for backward, so a moved-in input costs no copy.
  template <class Hooks>
  tensor forward(tensor x, Hooks& h) {
    detail::check_shape(*this, "input", x.shape(), {0, in_, 0, 0});
    detail::check_shape(*this, "weight", weight_.shape(), {out_, in_ / p_.groups, kh_, kw_});
    if (has_bias_) detail::check_shape(*this, "bias", bias_.shape(), {out_});
    const conv2d_shape s = shape_for(x);
    try {
      s.validate();
    } catch (const shape_error& e) {
      QKIT_THROW(shape_error, layer_label(*this), ": input ", shape_string(x.shape()),
                 " does not fit: ", detail::nested_message(e));
    }
    const tensor& w = h.param(*this, "weight", weight_);
    const tensor* b = has_bias_ ? &h.param(*this, "bias", bias_) : nullptr;
    tensor y = tensor::from_shape({s.N, out_, s.OH(), s.OW()});
    conv2d_forward(s, x.data(), w.data(), b ? b->data() : nullptr, y.data());
    x_ = std::move(x);
    // Backward must use the weight forward used; copy it only when the hooks replaced it.
    w_substituted_ = &w != &weight_;
    if (w_substituted_) w_used_ = w;
    else w_used_ = tensor();
    return y;
  }

  template <class Hooks>
  tensor backward(const tensor& dy, Hooks& h) {
    QKIT_PRECONDITION(x_.dimension() == 4, error, layer_label(*this),
                      ": backward called before forward");
    const conv2d_shape s = shape_for(x_);
    detail::check_shape(*this, "output gradient", dy.shape(), {s.N, out_, s.OH(), s.OW()});
    const tensor& w = w_substituted_ ? w_used_ : weight_;
    tensor dx = tensor::from_shape(x_.shape());
    conv2d_backward_data(s, dy.data(), w.data(), dx.data());
    tensor dw = tensor::from_shape(weight_shape());
    tensor db;
    if (has_bias_) db = tensor::from_shape({out_});
    conv2d_backward_weight(s, x_.data(), dy.data(), dw.data(), has_bias_ ? db.data() : nullptr);
    detail::deliver_param_grad(h, *this, "weight", dw, weight_grad_);
    if (has_bias_) detail::deliver_param_grad(h, *this, "bias", db, bias_grad_);
    return dx;
  }

  /// Drops what forward kept for backward (frees memory after training).
  void clear_cache() {
    x_ = tensor();
    w_used_ = tensor();
  }

 private:
  std::size_t in_, out_, kh_, kw_;
  conv2d_params p_;
  bool w_substituted_ = false;
  tensor x_, w_used_;
};

}  // namespace qkit::nn
