// qkit/nn/pooling.hpp — max pooling (ONNX MaxPool), average pooling (ONNX AveragePool) and
// global average pooling (ONNX GlobalAveragePool) as layers over the kernels of
// qkit/tensor/pool.hpp.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "../tensor/pool.hpp"
#include "layer.hpp"

namespace qkit::nn {

namespace detail {

/// Shared attribute handling of the two windowed poolings.
class pool2d_layer : public layer_base {
 public:
  explicit pool2d_layer(pool2d_params p) : p_(p) {
    QKIT_PRECONDITION(p_.kernel_h > 0 && p_.kernel_w > 0 && p_.stride_h > 0 && p_.stride_w > 0,
                      shape_error, "pooling: kernel and strides must be positive");
  }
  // Kept out of line: GCC 12.2 with -march=native (AVX-512) mis-vectorizes this struct's
  // inlined initialization (SLP), filling the pads with the kernel size.
  [[gnu::noinline]] static pool2d_params square(std::size_t kernel, std::size_t stride, std::size_t padding,
                              bool ceil_mode, bool count_include_pad) {
    pool2d_params p;
    p.kernel_h = p.kernel_w = kernel;
    p.stride_h = p.stride_w = stride;
    p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = padding;
    p.ceil_mode = ceil_mode;
    p.count_include_pad = count_include_pad;
    return p;
  }

  std::array<std::size_t, 2> kernel_shape() const { return {p_.kernel_h, p_.kernel_w}; }
  std::array<std::size_t, 2> strides() const { return {p_.stride_h, p_.stride_w}; }
  /// ONNX order: [top, left, bottom, right].
  std::array<std::size_t, 4> pads() const {
    return {p_.pad_top, p_.pad_left, p_.pad_bottom, p_.pad_right};
  }
  bool ceil_mode() const { return p_.ceil_mode; }
  const pool2d_params& params() const { return p_; }

  template <class F>
  void for_each_parameter(F&&) {}

 protected:
  template <class L>
  pool2d_shape shape_for(const L& self, const tensor& x) const {
    check_shape(self, "input", x.shape(), {0, 0, 0, 0});
    pool2d_shape s;
    s.N = x.shape(0); s.C = x.shape(1); s.H = x.shape(2); s.W = x.shape(3);
    s.p = p_;
    try {
      s.validate();
    } catch (const shape_error& e) {
      QKIT_THROW(shape_error, layer_label(self), ": input ", shape_string(x.shape()),
                 " does not fit: ", detail::nested_message(e));
    }
    return s;
  }
  pool2d_params p_;
  pool2d_shape s_{};
  bool ran_ = false;
};

}  // namespace detail

class max_pool : public detail::pool2d_layer {
 public:
  static constexpr std::string_view op_type = "MaxPool";

  max_pool(std::size_t kernel, std::size_t stride, std::size_t padding = 0, bool ceil_mode = false)
      : pool2d_layer(square(kernel, stride, padding, ceil_mode, false)) {}
  explicit max_pool(pool2d_params p) : pool2d_layer(p) {}

  template <class Hooks>
  tensor forward(const tensor& x, Hooks&) {
    s_ = shape_for(*this, x);
    tensor y = tensor::from_shape({s_.N, s_.C, s_.OH(), s_.OW()});
    argmax_.resize(y.size());
    max_pool2d_forward(s_, x.data(), y.data(), argmax_.data());
    ran_ = true;
    return y;
  }

  template <class Hooks>
  tensor backward(const tensor& dy, Hooks&) {
    QKIT_PRECONDITION(ran_, error, layer_label(*this), ": backward called before forward");
    detail::check_shape(*this, "output gradient", dy.shape(), {s_.N, s_.C, s_.OH(), s_.OW()});
    tensor dx = tensor::from_shape({s_.N, s_.C, s_.H, s_.W});
    max_pool2d_backward(s_, dy.data(), argmax_.data(), dx.data());
    return dx;
  }

 private:
  std::vector<std::uint32_t> argmax_;
};

class avg_pool : public detail::pool2d_layer {
 public:
  static constexpr std::string_view op_type = "AveragePool";

  avg_pool(std::size_t kernel, std::size_t stride, std::size_t padding = 0,
           bool count_include_pad = false, bool ceil_mode = false)
      : pool2d_layer(square(kernel, stride, padding, ceil_mode, count_include_pad)) {}
  explicit avg_pool(pool2d_params p) : pool2d_layer(p) {}

  bool count_include_pad() const { return p_.count_include_pad; }

  template <class Hooks>
  tensor forward(const tensor& x, Hooks&) {
    s_ = shape_for(*this, x);
    tensor y = tensor::from_shape({s_.N, s_.C, s_.OH(), s_.OW()});
    avg_pool2d_forward(s_, x.data(), y.data());
    ran_ = true;
    return y;
  }

  template <class Hooks>
  tensor backward(const tensor& dy, Hooks&) {
    QKIT_PRECONDITION(ran_, error, layer_label(*this), ": backward called before forward");
    detail::check_shape(*this, "output gradient", dy.shape(), {s_.N, s_.C, s_.OH(), s_.OW()});
    tensor dx = tensor::from_shape({s_.N, s_.C, s_.H, s_.W});
    avg_pool2d_backward(s_, dy.data(), dx.data());
    return dx;
  }
};

/// [N, C, H, W] → [N, C, 1, 1], the mean of each plane.
class global_avg_pool : public layer_base {
 public:
  static constexpr std::string_view op_type = "GlobalAveragePool";

  template <class F>
  void for_each_parameter(F&&) {}

  template <class Hooks>
  tensor forward(const tensor& x, Hooks&) {
    detail::check_shape(*this, "input", x.shape(), {0, 0, 0, 0});
    in_shape_.assign(x.shape().begin(), x.shape().end());
    const std::size_t planes = x.shape(0) * x.shape(1), P = x.shape(2) * x.shape(3);
    QKIT_PRECONDITION(P > 0, shape_error, layer_label(*this), ": input ",
                      shape_string(x.shape()), " has empty planes");
    tensor y = tensor::from_shape({x.shape(0), x.shape(1), 1, 1});
    global_avg_pool_forward(planes, P, x.data(), y.data());
    return y;
  }

  template <class Hooks>
  tensor backward(const tensor& dy, Hooks&) {
    QKIT_PRECONDITION(in_shape_.size() == 4, error, layer_label(*this),
                      ": backward called before forward");
    detail::check_shape(*this, "output gradient", dy.shape(), {in_shape_[0], in_shape_[1], 1, 1});
    tensor dx = tensor::from_shape(in_shape_);
    global_avg_pool_backward(in_shape_[0] * in_shape_[1], in_shape_[2] * in_shape_[3],
                             dy.data(), dx.data());
    return dx;
  }

 private:
  shape_type in_shape_;
};

}  // namespace qkit::nn
