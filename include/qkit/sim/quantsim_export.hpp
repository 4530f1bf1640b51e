// qkit/sim/quantsim_export.hpp — hands a calibrated QuantSim to a target as an ONNX model
// with QuantizeLinear/DequantizeLinear pairs carrying its encodings (needs qkit::onnx).
// The graph is rebuilt from the model's dataflow, each layer mapped to its ONNX op with its
// attributes; weights are the simulated (batch-norm folded) ones, so a runtime executing the
// QDQ graph in float computes what QuantSim computed.
#pragma once

#include <filesystem>
#include <string>
#include <type_traits>

#include "../io/onnx_export.hpp"
#include "../nn/activation.hpp"
#include "../nn/add.hpp"
#include "../nn/batch_norm.hpp"
#include "../nn/conv2d.hpp"
#include "../nn/flatten.hpp"
#include "../nn/linear.hpp"
#include "../nn/pooling.hpp"
#include "quantsim.hpp"

namespace qkit {

namespace detail {

template <class A>
std::vector<std::int64_t> to_int64s(const A& a) {
  return std::vector<std::int64_t>(a.begin(), a.end());
}

inline tensor scalar_tensor(float v) {
  tensor t = tensor::from_shape({});
  t() = v;
  return t;
}

}  // namespace detail

/// The QuantSim as an export graph: float nodes in dataflow order, the folded weights, and the
/// encodings of every enabled quantizer (per-channel weights along axis 0).
template <class Sim>
io::export_graph to_export_graph(Sim& sim, const std::string& graph_name = "qkit_model") {
  io::export_graph g;
  g.name = graph_name;
  g.input_name = "input";
  for (auto d : sim.input_shape()) g.input_shape.push_back(static_cast<std::int64_t>(d));
  for (auto d : sim.output_shape()) g.output_shape.push_back(static_cast<std::int64_t>(d));
  if (!g.input_shape.empty()) g.input_shape[0] = -1;
  if (!g.output_shape.empty()) g.output_shape[0] = -1;

  auto add_params = [&](io::export_node& n, const std::string& name, auto& layer) {
    n.inputs.push_back(name + ".weight");
    g.initializers.emplace_back(name + ".weight", layer.weight());
    if (layer.has_bias()) {
      n.inputs.push_back(name + ".bias");
      g.initializers.emplace_back(name + ".bias", layer.bias());
    }
  };

  const nn::dataflow flow = nn::describe_dataflow(
      sim.model(), [&](const nn::dataflow_node& node, auto& layer) {
        using L = std::remove_cvref_t<decltype(layer)>;
        io::export_node n;
        n.op_type = node.op_type;
        n.name = node.name;
        n.inputs = node.inputs;
        n.outputs = {node.output};
        if constexpr (std::is_same_v<L, nn::conv2d>) {
          add_params(n, node.name, layer);
          n.attrs = {{"kernel_shape", detail::to_int64s(layer.kernel_shape())},
                     {"strides", detail::to_int64s(layer.strides())},
                     {"pads", detail::to_int64s(layer.pads())},  // top, left, bottom, right
                     {"dilations", detail::to_int64s(layer.dilations())},
                     {"group", static_cast<std::int64_t>(layer.groups())}};
        } else if constexpr (std::is_same_v<L, nn::linear>) {
          add_params(n, node.name, layer);
          n.attrs = {{"transB", std::int64_t{1}}};
        } else if constexpr (std::is_base_of_v<nn::clip, L>) {
          n.op_type = "Clip";
          n.inputs.push_back(node.name + ".min");
          n.inputs.push_back(node.name + ".max");
          g.initializers.emplace_back(node.name + ".min", detail::scalar_tensor(layer.min_value()));
          g.initializers.emplace_back(node.name + ".max", detail::scalar_tensor(layer.max_value()));
        } else if constexpr (std::is_same_v<L, nn::max_pool> || std::is_same_v<L, nn::avg_pool>) {
          n.attrs = {{"kernel_shape", detail::to_int64s(layer.kernel_shape())},
                     {"strides", detail::to_int64s(layer.strides())},
                     {"pads", detail::to_int64s(layer.pads())},
                     {"ceil_mode", static_cast<std::int64_t>(layer.ceil_mode())}};
          if constexpr (std::is_same_v<L, nn::avg_pool>)
            n.attrs.push_back({"count_include_pad", static_cast<std::int64_t>(layer.count_include_pad())});
        } else if constexpr (std::is_same_v<L, nn::flatten>) {
          n.attrs = {{"axis", static_cast<std::int64_t>(L::axis)}};
        } else if constexpr (std::is_same_v<L, nn::batch_norm>) {
          // The deployed graph has its batch norms folded (the target fuses them).
          QKIT_THROW(config_error, "to_export_graph: ", nn::layer_label(layer),
                     " is live; export a QuantSim built with batch_norm_mode::fold (fold "
                     "the batch norms of a model trained with them live first)");
        } else if constexpr (std::is_same_v<L, nn::relu> || std::is_same_v<L, nn::add> ||
                             std::is_same_v<L, nn::global_avg_pool>) {
          // no attributes
        } else {
          static_assert(!sizeof(L*),
                        "qkit::to_export_graph: this layer type has no ONNX mapping; add one "
                        "here (op type, inputs, attributes)");
        }
        g.nodes.push_back(std::move(n));
      });
  g.output_name = flow.output;

  sim.for_each_quantizer([&](const std::string& name, quantizer_kind, const auto& q) {
    const bool passes = !q.enabled() || (q.settings().dtype == dtype::integer && q.bitwidth() >= 32);
    if (passes || !q.has_encodings()) return;
    io::tensor_quant tq;
    tq.encodings = q.encodings();
    tq.axis = q.per_channel() ? 0 : -1;
    g.quantized[name] = std::move(tq);
  });
  return g;
}

/// Writes the QuantSim as an ONNX QDQ model (atomically), checked by the ONNX checker.
template <class Sim>
void export_onnx(Sim& sim, const std::filesystem::path& path, io::onnx_export_options options = {}) {
  options.weight_rounding = Sim::rounding_policy;
  io::write_onnx(to_export_graph(sim), path, options);
}

}  // namespace qkit
