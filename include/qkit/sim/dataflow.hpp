// qkit/sim/dataflow.hpp — the model as a list of nodes with named input and output tensors.
// QuantSim needs it to know which tensor feeds which op (supergroups must not fuse across a
// tensor that a skip connection also reads) and the ONNX exporter to rebuild the graph. It is
// derived from the static graph by one structural visit, never kept as a second graph.
//
// Tensor names: the model input is "input"; a node's output tensor carries the node's name
// (e.g. "features.0.0"), which is also the name of its activation encoding. A folded batch
// norm is no node: its output is its input.
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include "../nn/batch_norm.hpp"
#include "../nn/graph.hpp"

namespace qkit::sim {

struct dataflow_node {
  std::string name;
  std::string op_type;
  std::vector<std::string> inputs;  ///< tensor names, in the op's operand order
  std::string output;               ///< tensor name (the node's name)
  const void* layer = nullptr;      ///< the leaf's identity (its address)
};

struct dataflow {
  std::string input = "input";
  std::string output;
  std::vector<dataflow_node> nodes;

  /// How many node operands read `tensor` (the graph output counts as one more reader).
  std::size_t readers(const std::string& tensor) const {
    std::size_t n = tensor == output ? 1 : 0;
    for (const auto& node : nodes)
      for (const auto& in : node.inputs) n += in == tensor;
    return n;
  }
  /// The node that produces `tensor`, or nullptr (the model input).
  const dataflow_node* producer(const std::string& tensor) const {
    for (const auto& node : nodes)
      if (node.output == tensor) return &node;
    return nullptr;
  }
  /// The nodes reading `tensor`.
  std::vector<const dataflow_node*> consumers(const std::string& tensor) const {
    std::vector<const dataflow_node*> out;
    for (const auto& node : nodes)
      for (const auto& in : node.inputs)
        if (in == tensor) {
          out.push_back(&node);
          break;
        }
    return out;
  }
};

namespace detail {

template <class OnNode>
struct dataflow_builder {
  dataflow& flow;
  OnNode& on_node;
  std::string current;
  std::vector<std::string> skip_stack;

  void residual_begin(const std::string&) { skip_stack.push_back(current); }
  void residual_end(const std::string&) {}

  template <class L>
  void leaf(const std::string& name, L& layer) {
    using T = std::remove_cvref_t<L>;
    if constexpr (std::is_same_v<T, nn::batch_norm>) {
      if (layer.folded()) return;  // identity: its output is its input
    }
    dataflow_node node;
    node.name = name;
    node.op_type = std::string(T::op_type);
    node.inputs.push_back(current);
    if constexpr (std::is_same_v<T, nn::add>) {
      QKIT_PRECONDITION(!skip_stack.empty(), shape_error, "dataflow: ", nn::layer_label(layer),
                        " outside a residual block");
      node.inputs.push_back(skip_stack.back());
      skip_stack.pop_back();
    }
    node.output = name;
    node.layer = &layer;
    current = node.output;
    flow.nodes.push_back(node);
    on_node(flow.nodes.back(), layer);
  }
};

}  // namespace detail

/// Describes the model's dataflow; on_node(const dataflow_node&, auto& leaf) is called for each
/// node as it is found (the exporter uses it to read each layer's attributes with its type).
template <class Model, class OnNode>
dataflow describe_dataflow(Model& model, OnNode&& on_node) {
  dataflow flow;
  detail::dataflow_builder<std::remove_reference_t<OnNode>> b{flow, on_node, flow.input, {}};
  nn::visit_structure(model, b);
  flow.output = b.current;
  return flow;
}

template <class Model>
dataflow describe_dataflow(Model& model) {
  return describe_dataflow(model, [](const dataflow_node&, auto&) {});
}

}  // namespace qkit::sim
