// qkit/nn/batch_norm.hpp — batch normalization over channel axis 1 (ONNX BatchNormalization),
// for [N, C] and [N, C, H, W] inputs. Training mode normalizes with the batch's statistics and
// updates the running ones (PyTorch's momentum convention and unbiased running variance);
// inference mode uses the running statistics. After fold_batch_norms the layer is "folded": it
// passes data through unchanged and has no parameters, so it is exported and quantized as
// nothing while keeping its place and name in the graph.
#pragma once

#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

#include "../tensor/elementwise.hpp"
#include "../tensor/thread_pool.hpp"
#include "layer.hpp"

namespace qkit::nn {

class batch_norm : public layer_base {
 public:
  static constexpr std::string_view op_type = "BatchNormalization";
  op_kind kind() const { return op_kind::batch_norm; }

  explicit batch_norm(std::size_t channels, float epsilon = 1e-5f, float momentum = 0.1f)
      : c_(channels), eps_(epsilon), momentum_(momentum) {
    QKIT_PRECONDITION(c_ > 0, shape_error, "BatchNormalization: channels must be positive");
    QKIT_PRECONDITION(eps_ > 0.0f && momentum_ >= 0.0f && momentum_ <= 1.0f, config_error,
                      "BatchNormalization: epsilon must be > 0 and momentum in [0, 1], got ",
                      eps_, " and ", momentum_);
    reset_statistics();
    gamma_ = tensor::from_shape({c_});
    gamma_.fill(1.0f);
    beta_ = tensor::from_shape({c_});
    beta_.fill(0.0f);
    gamma_grad_ = beta_;
    beta_grad_ = beta_;
  }

  std::size_t channels() const { return c_; }
  float epsilon() const { return eps_; }
  float momentum() const { return momentum_; }
  void set_momentum(float m) { momentum_ = m; }

  tensor& weight() { return gamma_; }
  const tensor& weight() const { return gamma_; }
  tensor& bias() { return beta_; }
  const tensor& bias() const { return beta_; }
  tensor& running_mean() { return mean_; }
  const tensor& running_mean() const { return mean_; }
  tensor& running_var() { return var_; }
  const tensor& running_var() const { return var_; }
  tensor& weight_grad() { return gamma_grad_; }
  tensor& bias_grad() { return beta_grad_; }

  /// Folded into the preceding conv/linear: forward and backward pass through. weight() and
  /// bias() keep γ and β, the folded layer's output distribution (mean β, std |γ|).
  bool folded() const { return folded_; }
  void set_folded() { folded_ = true; }

  /// Running mean 0 and variance 1 (BN re-estimation starts here).
  void reset_statistics() {
    mean_ = tensor::from_shape({c_});
    mean_.fill(0.0f);
    var_ = tensor::from_shape({c_});
    var_.fill(1.0f);
  }

  /// "weight" (gamma) and "bias" (beta) are learnable; "running_mean" and "running_var" are
  /// state with no gradient (grad nullptr). A folded layer has none.
  template <class F>
  void for_each_parameter(F&& f) {
    if (folded_) return;
    f(std::string_view("weight"), gamma_, &gamma_grad_);
    f(std::string_view("bias"), beta_, &beta_grad_);
    f(std::string_view("running_mean"), mean_, static_cast<tensor*>(nullptr));
    f(std::string_view("running_var"), var_, static_cast<tensor*>(nullptr));
  }

  void reset_parameters(std::mt19937&) {
    gamma_.fill(1.0f);
    beta_.fill(0.0f);
    reset_statistics();
  }

  /// Per-channel scale s = gamma / sqrt(var + eps) and shift t = beta - mean * s of inference
  /// mode (what folding multiplies into the previous layer).
  std::pair<std::vector<float>, std::vector<float>> inference_scale_shift() const {
    std::vector<float> s(c_), t(c_);
    for (std::size_t c = 0; c < c_; ++c) {
      s[c] = gamma_(c) / std::sqrt(var_(c) + eps_);
      t[c] = beta_(c) - mean_(c) * s[c];
    }
    return {s, t};
  }

  // x and dy by value: a folded batch norm hands its input on without a copy (the copy was
  // 15% of an inference of the folded Fashion-MNIST simulation).
  template <class Hooks>
  tensor forward(tensor x, Hooks& h) {
    if (folded_) return x;
    QKIT_PRECONDITION(x.dimension() >= 2 && x.shape(1) == c_, shape_error, layer_label(*this),
                      ": input has shape ", shape_string(x.shape()), ", expected [*, ", c_,
                      ", ...]");
    for (const tensor* p : {&gamma_, &beta_, &mean_, &var_})
      detail::check_shape(*this, "parameter", p->shape(), {c_});
    const std::size_t N = x.shape(0), P = x.size() / (N * c_);
    const tensor& gamma = h.param(*this, "weight", gamma_);
    const tensor& beta = h.param(*this, "bias", beta_);
    xhat_ = tensor::from_shape(x.shape());
    inv_std_.assign(c_, 0.0f);
    gamma_used_.assign(gamma.begin(), gamma.end());
    tensor y = tensor::from_shape(x.shape());
    trained_forward_ = training();
    const float M = float(N * P);
    parallel_for(0, c_, grain_for(N * P), [&](std::size_t lo, std::size_t hi) {
      for (std::size_t c = lo; c < hi; ++c) {
        float mean, var;
        if (trained_forward_) {
          double s = 0.0;
          for (std::size_t n = 0; n < N; ++n) s += qkit::sum(x.data() + (n * c_ + c) * P, P);
          mean = float(s / double(M));
          double ss = 0.0;
          for (std::size_t n = 0; n < N; ++n)
            ss += qkit::sum_squared_deviation(x.data() + (n * c_ + c) * P, P, mean);
          var = float(ss / double(M));
          const float unbiased = M > 1.0f ? float(ss / double(M - 1.0f)) : var;
          float& rm = mean_.data()[c];
          float& rv = var_.data()[c];
          rm = (1.0f - momentum_) * rm + momentum_ * mean;
          rv = (1.0f - momentum_) * rv + momentum_ * unbiased;
        } else {
          mean = mean_.data()[c];
          var = var_.data()[c];
        }
        const float inv = 1.0f / std::sqrt(var + eps_);
        inv_std_[c] = inv;
        const float g = gamma.data()[c], b = beta.data()[c];
        for (std::size_t n = 0; n < N; ++n) {
          const std::size_t off = (n * c_ + c) * P;
          normalize_affine_row(x.data() + off, xhat_.data() + off, y.data() + off, P, inv,
                               -mean * inv, g, b);
        }
      }
    });
    return y;
  }

  template <class Hooks>
  tensor backward(tensor dy, Hooks& h) {
    if (folded_) return dy;
    QKIT_PRECONDITION(xhat_.dimension() >= 2, error, layer_label(*this),
                      ": backward called before forward");
    QKIT_PRECONDITION(dy.shape() == xhat_.shape(), shape_error, layer_label(*this),
                      ": output gradient has shape ", shape_string(dy.shape()), ", expected ",
                      shape_string(xhat_.shape()));
    const std::size_t N = dy.shape(0), P = dy.size() / (N * c_);
    const float M = float(N * P);
    tensor dx = tensor::from_shape(dy.shape());
    tensor dgamma = tensor::from_shape({c_}), dbeta = tensor::from_shape({c_});
    parallel_for(0, c_, grain_for(N * P), [&](std::size_t lo, std::size_t hi) {
      for (std::size_t c = lo; c < hi; ++c) {
        double sdy = 0.0, sdyx = 0.0;
        for (std::size_t n = 0; n < N; ++n) {
          const std::size_t off = (n * c_ + c) * P;
          const auto [s1, s2] = qkit::sum_and_dot(dy.data() + off, xhat_.data() + off, P);
          sdy += s1;
          sdyx += s2;
        }
        dgamma.data()[c] = float(sdyx);
        dbeta.data()[c] = float(sdy);
        const float k = gamma_used_[c] * inv_std_[c];
        for (std::size_t n = 0; n < N; ++n) {
          const std::size_t off = (n * c_ + c) * P;
          if (trained_forward_) {
            // dx = k·(dy − mean(dy) − x̂·mean(dy·x̂)): the batch statistics depend on x too.
            axpby_shift_row(dy.data() + off, xhat_.data() + off, dx.data() + off, P, k,
                            -k * float(sdyx / double(M)), -k * float(sdy / double(M)));
          } else {
            scale_shift_row(dy.data() + off, dx.data() + off, P, k, 0.0f);
          }
        }
      }
    });
    detail::deliver_param_grad(h, *this, "weight", dgamma, gamma_grad_);
    detail::deliver_param_grad(h, *this, "bias", dbeta, beta_grad_);
    return dx;
  }

  void clear_cache() { xhat_ = tensor(); }

 private:
  std::size_t c_;
  float eps_, momentum_;
  bool folded_ = false, trained_forward_ = false;
  tensor gamma_, beta_, mean_, var_, gamma_grad_, beta_grad_;
  tensor xhat_;
  std::vector<float> inv_std_, gamma_used_;
};

}  // namespace qkit::nn
