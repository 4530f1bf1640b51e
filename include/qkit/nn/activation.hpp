// qkit/nn/activation.hpp — ReLU (ONNX Relu) and clipping activations (ONNX Clip): relu6 is
// clip(0, 6), the MobileNet activation. Backward passes the gradient where the input lies
// strictly inside the clipping range (0 on the flat parts and at the kinks, as PyTorch does).
#pragma once

#include <limits>

#include "layer.hpp"

namespace qkit::nn {

class relu : public layer_base {
 public:
  static constexpr std::string_view op_type = "Relu";
  op_kind kind() const { return op_kind::relu; }

  template <class F>
  void for_each_parameter(F&&) {}

  template <class Hooks>
  tensor forward(tensor x, Hooks&) {
    tensor y = tensor::from_shape(x.shape());
    qkit::clamp(x.data(), y.data(), x.size(), 0.0f, std::numeric_limits<float>::infinity());
    x_ = std::move(x);
    return y;
  }

  template <class Hooks>
  tensor backward(tensor dy, Hooks&) {
    QKIT_PRECONDITION(dy.shape() == x_.shape(), shape_error, layer_label(*this),
                      ": output gradient has shape ", shape_string(dy.shape()), ", expected ",
                      shape_string(x_.shape()));
    qkit::clamp_grad(x_.data(), dy.data(), dy.data(), dy.size(), 0.0f,
                     std::numeric_limits<float>::infinity());
    return dy;
  }

  void clear_cache() { x_ = tensor(); }

 private:
  tensor x_;
};

/// y = min(max(x, min), max). ONNX Clip with min and max inputs.
class clip : public layer_base {
 public:
  static constexpr std::string_view op_type = "Clip";

  clip(float min_value, float max_value) : lo_(min_value), hi_(max_value) {
    QKIT_PRECONDITION(lo_ <= hi_, config_error, "Clip: min (", lo_, ") must not exceed max (",
                      hi_, ")");
  }

  float min_value() const { return lo_; }
  float max_value() const { return hi_; }
  /// Changes the clipping range (cross-layer equalization turns ReLU6 into ReLU with
  /// max = +inf, since scaling a channel does not commute with a fixed upper bound).
  void set_bounds(float min_value, float max_value) {
    QKIT_PRECONDITION(min_value <= max_value, config_error, layer_label(*this), ": min (",
                      min_value, ") must not exceed max (", max_value, ")");
    lo_ = min_value;
    hi_ = max_value;
  }
  /// By its bounds, not its type: a ReLU6 whose max was lifted to +inf is a ReLU.
  op_kind kind() const {
    if (lo_ == 0.0f && hi_ == std::numeric_limits<float>::infinity()) return op_kind::relu;
    if (lo_ == 0.0f && hi_ == 6.0f) return op_kind::relu6;
    return op_kind::clip;
  }

  template <class F>
  void for_each_parameter(F&&) {}

  template <class Hooks>
  tensor forward(tensor x, Hooks&) {
    tensor y = tensor::from_shape(x.shape());
    qkit::clamp(x.data(), y.data(), x.size(), lo_, hi_);
    x_ = std::move(x);
    return y;
  }

  template <class Hooks>
  tensor backward(tensor dy, Hooks&) {
    QKIT_PRECONDITION(dy.shape() == x_.shape(), shape_error, layer_label(*this),
                      ": output gradient has shape ", shape_string(dy.shape()), ", expected ",
                      shape_string(x_.shape()));
    qkit::clamp_grad(x_.data(), dy.data(), dy.data(), dy.size(), lo_, hi_);
    return dy;
  }

  void clear_cache() { x_ = tensor(); }

 private:
  float lo_, hi_;
  tensor x_;
};

/// ReLU6 = clip(0, 6); a distinct type so passes (CLE's ReLU6 → ReLU) can find it.
class relu6 : public clip {
 public:
  relu6() : clip(0.0f, 6.0f) {}
};

}  // namespace qkit::nn
