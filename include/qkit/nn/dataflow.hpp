// qkit/nn/dataflow.hpp — the typed view of a model's graph that every pass works on: a list of
// nodes with named input and output tensors, each with its op kind and typed access to its
// layer, derived from the static graph by one structural visit (never kept as a second graph).
// QuantSim uses it to place quantizers (a supergroup must not fuse across a tensor that a skip
// connection also reads), the ONNX exporter to rebuild the graph, and the PTQ passes to find
// producer → consumer chains across sequential/residual boundaries (conv → relu → conv,
// conv → depthwise → conv).
//
// Tensor names: the model input is "input"; a node's output tensor carries the node's name
// (e.g. "features.0.0"), which is also the name of its activation encoding. A folded batch
// norm is no node: its output is its input, and the node it was folded into records it.
//
// The view holds pointers into the model: rebuild it after the model moves or changes shape.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "activation.hpp"
#include "batch_norm.hpp"
#include "graph.hpp"
#include "weighted_layer.hpp"

namespace qkit::nn {

struct dataflow_node {
  std::string name;
  std::string op_type;
  op_kind kind = op_kind::other;
  std::vector<std::string> inputs;  ///< tensor names, in the op's operand order
  std::string output;               ///< tensor name (the node's name)
  const void* layer = nullptr;      ///< the leaf's identity (its address)

  // Typed access (nullptr where the layer is not of that family).
  weighted_layer* weighted = nullptr;  ///< conv2d, linear, or a user layer deriving from it
  clip* clip_layer = nullptr;          ///< clip, relu6
  batch_norm* live_batch_norm = nullptr;
  /// The batch norm folded into this (weighted) node, which keeps γ and β; or nullptr.
  batch_norm* folded_batch_norm = nullptr;

  /// relu, or a clip whose bounds are (0, +inf).
  bool is_relu() const { return kind == op_kind::relu; }
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
  /// The one node reading `node`'s output when nothing else reads it (no skip connection, not
  /// the model output); else nullptr. A chain of layers a pass may treat as one continues only
  /// through such links.
  const dataflow_node* sole_consumer(const dataflow_node& node) const {
    if (readers(node.output) != 1) return nullptr;
    const auto c = consumers(node.output);
    return c.size() == 1 ? c.front() : nullptr;
  }
  /// The node called `name`, or nullptr.
  const dataflow_node* find(const std::string& name) const {
    for (const auto& node : nodes)
      if (node.name == name) return &node;
    return nullptr;
  }
  /// The producer of a single-input node's input (nullptr for the model input or a multi-input
  /// node).
  const dataflow_node* sole_producer(const dataflow_node& node) const {
    return node.inputs.size() == 1 ? producer(node.inputs.front()) : nullptr;
  }

  /// Every chain of nodes whose kinds follow `pattern` (one set of allowed kinds per step),
  /// linked by sole-consumer edges, in graph order. Chains may overlap.
  std::vector<std::vector<const dataflow_node*>> find_chains(
      std::initializer_list<std::initializer_list<op_kind>> pattern) const {
    std::vector<std::vector<const dataflow_node*>> found;
    const auto allowed = [](const dataflow_node* n, std::initializer_list<op_kind> set) {
      for (auto k : set)
        if (n->kind == k) return true;
      return false;
    };
    for (const auto& start : nodes) {
      std::vector<const dataflow_node*> chain;
      const dataflow_node* cur = &start;
      for (auto step : pattern) {
        if (!cur || !allowed(cur, step)) break;
        chain.push_back(cur);
        cur = chain.size() < pattern.size() ? sole_consumer(*cur) : nullptr;
      }
      if (chain.size() == pattern.size()) found.push_back(std::move(chain));
    }
    return found;
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
    if constexpr (std::is_same_v<T, batch_norm>) {
      if (layer.folded()) {
        // Identity now; fold_batch_norms folded it into the layer right before it.
        if (!flow.nodes.empty() && flow.nodes.back().output == current &&
            flow.nodes.back().weighted)
          flow.nodes.back().folded_batch_norm = &layer;
        return;
      }
    }
    dataflow_node node;
    node.name = name;
    node.op_type = std::string(T::op_type);
    node.kind = kind_of(layer);
    node.inputs.push_back(current);
    if constexpr (std::is_same_v<T, add>) {
      QKIT_PRECONDITION(!skip_stack.empty(), shape_error, "dataflow: ", layer_label(layer),
                        " outside a residual block");
      node.inputs.push_back(skip_stack.back());
      skip_stack.pop_back();
    }
    node.output = name;
    node.layer = &layer;
    if constexpr (weighted<T>) node.weighted = &layer;
    if constexpr (std::is_base_of_v<clip, T>) node.clip_layer = &layer;
    if constexpr (std::is_same_v<T, batch_norm>) node.live_batch_norm = &layer;
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
  visit_structure(model, b);
  flow.output = b.current;
  return flow;
}

template <class Model>
dataflow describe_dataflow(Model& model) {
  return describe_dataflow(model, [](const dataflow_node&, auto&) {});
}

}  // namespace qkit::nn
