// qkit/nn/add.hpp — elementwise addition of two equally shaped tensors (ONNX Add). A residual
// block owns one; it is a real node of the graph with its own name (`<residual>.add`), so
// QuantSim can give it an output quantizer.
#pragma once

#include "layer.hpp"

namespace qkit::nn {

class add : public layer_base {
 public:
  static constexpr std::string_view op_type = "Add";
  op_kind kind() const { return op_kind::add; }

  template <class F>
  void for_each_parameter(F&&) {}

  /// y = a + b.
  template <class Hooks>
  tensor forward(const tensor& a, const tensor& b, Hooks&) {
    QKIT_PRECONDITION(a.shape() == b.shape(), shape_error, layer_label(*this),
                      ": operands have shapes ", shape_string(a.shape()), " and ",
                      shape_string(b.shape()), ", expected equal shapes");
    tensor y = tensor::from_shape(a.shape());
    qkit::add(a.data(), b.data(), y.data(), a.size());
    return y;
  }

  /// The gradient w.r.t. each operand: dy itself (the graph sends it to both).
  template <class Hooks>
  tensor backward(const tensor& dy, Hooks&) {
    return dy;
  }
};

}  // namespace qkit::nn
