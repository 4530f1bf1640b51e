// qkit/nn/flatten.hpp — [N, d1, d2, ...] → [N, d1·d2·...] (ONNX Flatten, axis 1): the step
// between a convolutional trunk and a linear classifier.
#pragma once

#include "layer.hpp"

namespace qkit::nn {

class flatten : public layer_base {
 public:
  static constexpr std::string_view op_type = "Flatten";
  static constexpr std::size_t axis = 1;

  template <class F>
  void for_each_parameter(F&&) {}

  template <class Hooks>
  tensor forward(tensor x, Hooks&) {
    QKIT_PRECONDITION(x.dimension() >= 1, shape_error, layer_label(*this),
                      ": input has shape ", shape_string(x.shape()), ", expected [N, ...]");
    in_shape_.assign(x.shape().begin(), x.shape().end());
    const std::size_t N = x.shape(0);
    x.reshape({N, N == 0 ? 0 : x.size() / N});
    return x;
  }

  template <class Hooks>
  tensor backward(tensor dy, Hooks&) {
    std::size_t n = 1;
    for (auto d : in_shape_) n *= d;
    QKIT_PRECONDITION(!in_shape_.empty() && dy.size() == n, shape_error, layer_label(*this),
                      ": output gradient has shape ", shape_string(dy.shape()),
                      ", expected one matching input ", shape_string(in_shape_));
    dy.reshape(in_shape_);
    return dy;
  }

 private:
  shape_type in_shape_;
};

}  // namespace qkit::nn
