// qkit/nn/linear.hpp — the fully connected layer, y = x·Wᵀ + b (ONNX Gemm with transB = 1, as
// PyTorch exports nn.Linear). Parameters "weight" [out, in] and "bias" [out].
#pragma once

#include <cmath>
#include <cstddef>
#include <random>

#include "../tensor/gemm.hpp"
#include "weighted_layer.hpp"

namespace qkit::nn {

class linear : public weighted_layer {
 public:
  static constexpr std::string_view op_type = "Gemm";

  linear(std::size_t in_features, std::size_t out_features, bool bias = true)
      : in_(in_features), out_(out_features) {
    QKIT_PRECONDITION(in_ > 0 && out_ > 0, shape_error,
                      "Gemm: feature counts must be positive, got in ", in_, ", out ", out_);
    init_weight({out_, in_}, 1, bias);
  }

  std::size_t in_features() const { return in_; }
  std::size_t out_features() const { return out_; }
  std::size_t fan_in() const { return in_; }
  /// ONNX Gemm attributes of this layer: alpha = beta = 1, transA = 0, transB = 1.
  static constexpr bool trans_b = true;
  op_kind kind() const { return op_kind::linear; }

  /// Kaiming/He normal init: std = sqrt(2 / in); bias 0.
  void reset_parameters(std::mt19937& rng) {
    std::normal_distribution<float> d(0.0f, std::sqrt(2.0f / float(in_)));
    for (auto& w : weight_) w = d(rng);
    if (has_bias_) bias_.fill(0.0f);
  }

  template <class Hooks>
  tensor forward(tensor x, Hooks& h) {
    detail::check_shape(*this, "input", x.shape(), {0, in_});
    detail::check_shape(*this, "weight", weight_.shape(), {out_, in_});
    if (has_bias_) detail::check_shape(*this, "bias", bias_.shape(), {out_});
    const std::size_t N = x.shape(0);
    const tensor& w = h.param(*this, "weight", weight_);
    tensor y = tensor::from_shape({N, out_});
    gemm(transpose::no, transpose::yes, N, out_, in_, 1.0f, x.data(), in_, w.data(), in_, 0.0f,
         y.data(), out_);
    if (has_bias_) {
      const tensor& b = h.param(*this, "bias", bias_);
      for (std::size_t n = 0; n < N; ++n)
        qkit::add(y.data() + n * out_, b.data(), y.data() + n * out_, out_);
    }
    x_ = std::move(x);
    w_substituted_ = &w != &weight_;
    if (w_substituted_) w_used_ = w;
    else w_used_ = tensor();
    return y;
  }

  template <class Hooks>
  tensor backward(const tensor& dy, Hooks& h) {
    QKIT_PRECONDITION(x_.dimension() == 2, error, layer_label(*this),
                      ": backward called before forward");
    const std::size_t N = x_.shape(0);
    detail::check_shape(*this, "output gradient", dy.shape(), {N, out_});
    const tensor& w = w_substituted_ ? w_used_ : weight_;
    tensor dx = tensor::from_shape({N, in_});
    gemm(transpose::no, transpose::no, N, in_, out_, 1.0f, dy.data(), out_, w.data(), in_, 0.0f,
         dx.data(), in_);
    tensor dw = tensor::from_shape({out_, in_});
    gemm(transpose::yes, transpose::no, out_, in_, N, 1.0f, dy.data(), out_, x_.data(), in_, 0.0f,
         dw.data(), in_);
    detail::deliver_param_grad(h, *this, "weight", dw, weight_grad_);
    if (has_bias_) {
      tensor db = tensor::from_shape({out_});
      db.fill(0.0f);
      // Rows in batch order, whatever the thread count.
      for (std::size_t n = 0; n < N; ++n)
        qkit::add(db.data(), dy.data() + n * out_, db.data(), out_);
      detail::deliver_param_grad(h, *this, "bias", db, bias_grad_);
    }
    return dx;
  }

  void clear_cache() {
    x_ = tensor();
    w_used_ = tensor();
  }

 private:
  std::size_t in_, out_;
  bool w_substituted_ = false;
  tensor x_, w_used_;
};

}  // namespace qkit::nn
