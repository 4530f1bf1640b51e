// qkit/nn/weighted_layer.hpp — what conv2d and linear share, so a pass written once serves both
// (and any user layer that derives from it): a weight whose axis 0 is the output channel and
// axis 1 the input channel within a group ([O, C/groups, kh, kw] or [out, in]), an optional
// bias, their gradients, and the per-channel arithmetic that batch-norm folding, cross-layer
// equalization, high-bias absorption and bias correction do on them.
#pragma once

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <string_view>
#include <type_traits>
#include <vector>

#include "layer.hpp"

namespace qkit::nn {

class weighted_layer : public layer_base {
 public:
  tensor& weight() { return weight_; }
  const tensor& weight() const { return weight_; }
  bool has_bias() const { return has_bias_; }
  /// The bias (empty [0] when the layer has none).
  tensor& bias() { return bias_; }
  const tensor& bias() const { return bias_; }
  tensor& weight_grad() { return weight_grad_; }
  tensor& bias_grad() { return bias_grad_; }

  /// Output channels (weight axis 0).
  std::size_t output_channels() const { return weight_.shape(0); }
  /// Input channels the layer reads (all groups).
  std::size_t input_channels() const { return weight_.shape(1) * groups_; }
  /// Channel groups: input channel c feeds only the outputs of group c / (C / groups).
  std::size_t weight_groups() const { return groups_; }

  /// Gives the layer a zero bias if it has none (folding and bias correction need one).
  void ensure_bias() {
    if (has_bias_) return;
    has_bias_ = true;
    bias_ = tensor::from_shape({output_channels()});
    bias_.fill(0.0f);
    bias_grad_ = bias_;
  }

  /// Removes the bias (undoes an ensure_bias that a failed pass added).
  void drop_bias() {
    has_bias_ = false;
    bias_ = tensor::from_shape({0});
    bias_grad_ = tensor::from_shape({0});
  }

  template <class F>
  void for_each_parameter(F&& f) {
    f(std::string_view("weight"), weight_, &weight_grad_);
    if (has_bias_) f(std::string_view("bias"), bias_, &bias_grad_);
  }

  // ---- per-channel arithmetic (double accumulation; results do not depend on threads) ----

  /// max |W| over each output channel's weights.
  std::vector<float> output_channel_absmax() const {
    const std::size_t O = output_channels(), per = weight_.size() / O;
    std::vector<float> r(O, 0.0f);
    for (std::size_t o = 0; o < O; ++o)
      for (std::size_t i = 0; i < per; ++i)
        r[o] = std::max(r[o], std::fabs(weight_.data()[o * per + i]));
    return r;
  }

  /// max |W| over every weight that reads each input channel.
  std::vector<float> input_channel_absmax() const {
    std::vector<float> r(input_channels(), 0.0f);
    for_each_input_weight([&](std::size_t c, std::size_t, float w) {
      r[c] = std::max(r[c], std::fabs(w));
    });
    return r;
  }

  /// Output channel o (its weights and bias) times s[o].
  void scale_output_channels(const std::vector<float>& s) {
    const std::size_t O = output_channels(), per = weight_.size() / O;
    for (std::size_t o = 0; o < O; ++o) {
      float* w = weight_.data() + o * per;
      for (std::size_t i = 0; i < per; ++i) w[i] *= s[o];
      if (has_bias_) bias_.data()[o] *= s[o];
    }
  }

  /// Every weight that reads input channel c times s[c].
  void scale_input_channels(const std::vector<float>& s) {
    const std::size_t O = output_channels(), G = groups_, Og = O / G;
    const std::size_t Cg = weight_.shape(1), K = weight_.size() / (O * Cg);
    for (std::size_t o = 0; o < O; ++o)
      for (std::size_t ci = 0; ci < Cg; ++ci) {
        const float f = s[(o / Og) * Cg + ci];
        float* w = weight_.data() + (o * Cg + ci) * K;
        for (std::size_t k = 0; k < K; ++k) w[k] *= f;
      }
  }

  /// Σ over inputs and kernel positions of W[o, c, ·]·x[c] per output channel o: what adding
  /// x[c] to every value of input channel c adds to output o (exact away from zero padding).
  std::vector<double> input_response(const std::vector<float>& x) const {
    return input_response(weight_, x);
  }
  /// The same for another weight of this layer's shape (e.g. a quantization error W_q − W).
  std::vector<double> input_response(const tensor& w, const std::vector<float>& x) const {
    std::vector<double> r(output_channels(), 0.0);
    for_each_input_weight(w, [&](std::size_t c, std::size_t o, float v) {
      r[o] += double(v) * double(x[c]);
    });
    return r;
  }

 protected:
  weighted_layer() = default;
  /// Allocates a zero weight of `shape` (axis 0 outputs, axis 1 inputs per group).
  void init_weight(shape_type shape, std::size_t groups, bool bias) {
    groups_ = groups;
    weight_ = tensor::from_shape(shape);
    weight_.fill(0.0f);
    weight_grad_ = weight_;
    if (bias) ensure_bias();
  }

  template <class F>
  void for_each_input_weight(F&& f) const {
    for_each_input_weight(weight_, f);
  }
  // f(input channel, output channel, weight value) for every weight.
  template <class F>
  void for_each_input_weight(const tensor& w, F&& f) const {
    const std::size_t O = output_channels(), G = groups_, Og = O / G;
    const std::size_t Cg = weight_.shape(1), K = weight_.size() / (O * Cg);
    for (std::size_t o = 0; o < O; ++o)
      for (std::size_t ci = 0; ci < Cg; ++ci) {
        const std::size_t c = (o / Og) * Cg + ci;
        const float* p = w.data() + (o * Cg + ci) * K;
        for (std::size_t k = 0; k < K; ++k) f(c, o, p[k]);
      }
  }

  bool has_bias_ = false;
  std::size_t groups_ = 1;
  tensor weight_, bias_ = tensor::from_shape({0}), weight_grad_,
                  bias_grad_ = tensor::from_shape({0});
};

/// A layer with the weighted-layer interface (conv2d, linear, or a user layer deriving from
/// weighted_layer): passes that fold, equalize or correct biases accept it.
template <class L>
concept weighted = std::derived_from<std::remove_cvref_t<L>, weighted_layer>;

}  // namespace qkit::nn
