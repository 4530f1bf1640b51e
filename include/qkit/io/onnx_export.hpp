// qkit/io/onnx_export.hpp — writes a float graph plus its encodings as an ONNX model with
// QuantizeLinear/DequantizeLinear pairs (QDQ), runnable in ONNX Runtime. Weights are stored as
// integers quantized by qkit's own kernels, so the model computes exactly qkit's simulation.
// Needs qkit::onnx (CMake option QKIT_WITH_ONNX: Debian's libonnx-dev and protobuf).
#pragma once

#ifndef QKIT_WITH_ONNX
#error "qkit/io/onnx_export.hpp needs qkit::onnx: configure with -DQKIT_WITH_ONNX=ON and link qkit::onnx"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include "../config.hpp"
#include "../error.hpp"
#include "../quant/encoding.hpp"
#include "../quant/fp16.hpp"
#include "../quant/qdq.hpp"
#include "../tensor/tensor.hpp"
#include "atomic_file.hpp"

namespace qkit::io {

/// One attribute of an exported node.
struct onnx_attr {
  std::string name;
  std::variant<std::int64_t, float, std::vector<std::int64_t>, std::vector<float>, std::string>
      value;
};

/// One node of the float graph, with ONNX's op type and attribute names.
struct export_node {
  std::string op_type, name;
  std::vector<std::string> inputs, outputs;
  std::vector<onnx_attr> attrs;
};

/// The encodings of one tensor: one per tensor, or one per channel along `axis` (negative
/// counts from the back, as in ONNX).
struct tensor_quant {
  std::vector<encoding> encodings;
  int axis = -1;
};

/// What the exporter needs of a model: a float graph with one input and one output, its
/// weights, and the encodings of the tensors that are quantized.
struct export_graph {
  std::string name;
  std::string input_name;
  std::vector<std::int64_t> input_shape;  ///< dim 0 may be -1: a dynamic "batch" dimension
  std::string output_name;
  std::vector<std::int64_t> output_shape;
  std::vector<export_node> nodes;                            ///< topological order
  std::vector<std::pair<std::string, tensor>> initializers;  ///< float weights
  std::map<std::string, tensor_quant> quantized;  ///< activation or initializer -> encodings
};

struct onnx_export_options {
  /// The lowest opset to write. Raised to 13 (per-channel QDQ, Clip with tensor bounds) and to
  /// 21 when a tensor needs 16-bit storage.
  int opset = 13;
  /// Activation storage: uint8/uint16 (default, zero point -offset) or int8/int16.
  bool signed_activations = false;
  /// Rounding of weights to their integer grid; match the QuantSim the encodings came from.
  rounding weight_rounding = rounding::half_even;
};

/// ONNX IR version qkit writes. Opset 21 officially comes with IR 10, but IR 10 only adds
/// element types qkit does not write (int4, float8); IR 8 keeps the model readable by ONNX 1.12's
/// checker (Debian's libonnx), and ONNX Runtime 1.30 runs opset 21 models stamped IR 8.
inline constexpr std::int64_t onnx_ir_version = 8;

namespace detail {

// Storage chosen for one quantized tensor.
struct onnx_storage {
  int elem_type = 0;       // onnx::TensorProto::DataType
  int bits = 8;            // 8, 16 or 32
  bool is_signed = false;
};

inline onnx_storage pick_storage(const encoding& e, bool want_signed, const std::string& what) {
  onnx_storage s;
  s.is_signed = want_signed;
  if (e.bitwidth <= 8) {
    s.bits = 8;
    s.elem_type = want_signed ? onnx::TensorProto::INT8 : onnx::TensorProto::UINT8;
  } else if (e.bitwidth <= 16) {
    s.bits = 16;
    s.elem_type = want_signed ? onnx::TensorProto::INT16 : onnx::TensorProto::UINT16;
  } else {
    // DequantizeLinear reads int32 only with zero point 0: a symmetric grid stored signed.
    QKIT_PRECONDITION(e.zero_point_signed() == 0, config_error, what, ": ", e.bitwidth,
                      "-bit encoding with offset ", e.offset,
                      " needs int32 storage, which ONNX allows only with zero point 0 (offset ",
                      -(std::int64_t{1} << (e.bitwidth - 1)), ")");
    s.bits = 32;
    s.is_signed = true;
    s.elem_type = onnx::TensorProto::INT32;
  }
  return s;
}

/// The zero point in storage `s`. AIMET's rule lets a range that does not contain zero have a
/// positive offset, whose zero point lies outside the storage type: ONNX cannot express that
/// grid, so it is an error rather than a silently wrapped integer.
inline std::int64_t zero_point(const encoding& e, const onnx_storage& s,
                               const std::string& what = "tensor") {
  const std::int64_t zp = s.is_signed ? e.zero_point_signed() : e.zero_point_unsigned();
  const std::int64_t lo = s.is_signed ? -(std::int64_t{1} << (s.bits - 1)) : 0;
  const std::int64_t hi = s.is_signed ? (std::int64_t{1} << (s.bits - 1)) - 1
                                      : (std::int64_t{1} << s.bits) - 1;
  QKIT_PRECONDITION(zp >= lo && zp <= hi, config_error, what, ": ", e.bitwidth,
                    "-bit encoding with offset ", e.offset, " has zero point ", zp,
                    ", outside its ", s.bits, "-bit ", s.is_signed ? "signed" : "unsigned",
                    " storage [", lo, ", ", hi, "]; ONNX QuantizeLinear cannot represent a grid "
                    "that does not contain zero");
  return zp;
}

template <class Int>
inline void append_raw(onnx::TensorProto& t, const std::vector<Int>& v) {
  // ONNX raw_data is little-endian; so is every target qkit builds for.
  t.set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(Int)));
}

inline void add_int_values(onnx::TensorProto& t, const onnx_storage& s,
                           const std::vector<std::int64_t>& values) {
  switch (s.elem_type) {
    case onnx::TensorProto::INT8: append_raw(t, std::vector<std::int8_t>(values.begin(), values.end())); break;
    case onnx::TensorProto::UINT8: append_raw(t, std::vector<std::uint8_t>(values.begin(), values.end())); break;
    case onnx::TensorProto::INT16: append_raw(t, std::vector<std::int16_t>(values.begin(), values.end())); break;
    case onnx::TensorProto::UINT16: append_raw(t, std::vector<std::uint16_t>(values.begin(), values.end())); break;
    default: append_raw(t, std::vector<std::int32_t>(values.begin(), values.end())); break;
  }
}

inline onnx::TensorProto float_tensor(const std::string& name, const std::vector<std::int64_t>& dims,
                                      const float* data, std::size_t n) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx::TensorProto::FLOAT);
  for (auto d : dims) t.add_dims(d);
  t.set_raw_data(std::string(reinterpret_cast<const char*>(data), n * sizeof(float)));
  return t;
}

// Scale and zero point of a QDQ pair: scalars per tensor, 1-D per channel.
inline void add_scale_zero_point(onnx::GraphProto& g, const std::string& scale_name,
                                 const std::string& zp_name, const std::vector<encoding>& encs,
                                 const onnx_storage& s) {
  std::vector<float> scales;
  std::vector<std::int64_t> zps;
  for (const auto& e : encs) {
    scales.push_back(static_cast<float>(e.scale));
    zps.push_back(zero_point(e, s, scale_name));
  }
  std::vector<std::int64_t> dims;
  if (encs.size() > 1) dims.push_back(static_cast<std::int64_t>(encs.size()));
  *g.add_initializer() = float_tensor(scale_name, dims, scales.data(), scales.size());
  onnx::TensorProto zp;
  zp.set_name(zp_name);
  zp.set_data_type(s.elem_type);
  for (auto d : dims) zp.add_dims(d);
  add_int_values(zp, s, zps);
  *g.add_initializer() = std::move(zp);
}

// All channels of a tensor share its storage type, so they must agree on the grid's kind.
inline const encoding& common_encoding(const tensor_quant& q, const std::string& what) {
  QKIT_PRECONDITION(!q.encodings.empty(), config_error, what, ": no encodings given");
  const encoding& first = q.encodings.front();
  for (std::size_t c = 1; c < q.encodings.size(); ++c) {
    const encoding& e = q.encodings[c];
    QKIT_PRECONDITION(e.dtype == first.dtype && e.bitwidth == first.bitwidth &&
                          e.symmetric == first.symmetric,
                      config_error, what, ": channel ", c, " differs from channel 0 in bitwidth, "
                      "dtype or symmetry; one ONNX tensor has one storage type");
  }
  QKIT_PRECONDITION(first.dtype == dtype::integer || q.encodings.size() == 1, config_error, what,
                    ": float16 cannot be per-channel");
  if (first.dtype == dtype::floating)
    QKIT_PRECONDITION(first.bitwidth == 16, config_error, what, ": float encoding of ",
                      first.bitwidth, " bits (only float16 is exported)");
  else
    check_int_bitwidth(first.bitwidth, (what + " bitwidth").c_str());
  return first;
}

inline bool needs_opset_21(const export_graph& g) {
  for (const auto& [name, q] : g.quantized) {
    if (q.encodings.empty()) continue;
    const encoding& e = q.encodings.front();
    if (e.dtype == dtype::integer && !e.is_passthrough() && e.bitwidth > 8 && e.bitwidth <= 16)
      return true;
  }
  return false;
}

template <class Int>
inline std::vector<std::int64_t> quantize_values(const tensor& w, const tensor_quant& q,
                                                 rounding r) {
  std::vector<Int> out(w.size());
  if (q.encodings.size() == 1) {
    quantize<Int>(w.data(), out.data(), w.size(), q.encodings.front(), r);
  } else {
    const shape_type shape(w.shape().begin(), w.shape().end());
    quantize_per_channel<Int>(w.data(), out.data(), std::span<const std::size_t>(shape), q.axis,
                              q.encodings, r);
  }
  return std::vector<std::int64_t>(out.begin(), out.end());
}

inline void set_attr(onnx::NodeProto& n, const onnx_attr& a) {
  auto* p = n.add_attribute();
  p->set_name(a.name);
  std::visit(
      [&](const auto& v) {
        using V = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<V, std::int64_t>) {
          p->set_type(onnx::AttributeProto::INT);
          p->set_i(v);
        } else if constexpr (std::is_same_v<V, float>) {
          p->set_type(onnx::AttributeProto::FLOAT);
          p->set_f(v);
        } else if constexpr (std::is_same_v<V, std::vector<std::int64_t>>) {
          p->set_type(onnx::AttributeProto::INTS);
          for (auto x : v) p->add_ints(x);
        } else if constexpr (std::is_same_v<V, std::vector<float>>) {
          p->set_type(onnx::AttributeProto::FLOATS);
          for (auto x : v) p->add_floats(x);
        } else {
          p->set_type(onnx::AttributeProto::STRING);
          p->set_s(v);
        }
      },
      a.value);
}

inline void set_value_info(onnx::ValueInfoProto& vi, const std::string& name,
                           const std::vector<std::int64_t>& shape) {
  vi.set_name(name);
  auto* t = vi.mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  auto* s = t->mutable_shape();
  for (std::size_t i = 0; i < shape.size(); ++i) {
    auto* d = s->add_dim();
    if (shape[i] < 0) d->set_dim_param(i == 0 ? "batch" : "dim" + std::to_string(i));
    else d->set_dim_value(shape[i]);
  }
}

// Builds the QDQ model from the float graph; see onnx_export_model.
class onnx_builder {
 public:
  onnx_builder(const export_graph& g, const onnx_export_options& o) : g_(g), o_(o) {}

  onnx::ModelProto build() {
    validate();
    onnx::ModelProto m;
    m.set_ir_version(onnx_ir_version);
    m.set_producer_name("qkit");
    m.set_producer_version(std::to_string(QKIT_VERSION_MAJOR) + "." +
                           std::to_string(QKIT_VERSION_MINOR) + "." +
                           std::to_string(QKIT_VERSION_PATCH));
    auto* op = m.add_opset_import();
    op->set_domain("");
    op->set_version(opset());
    onnx::GraphProto& gp = *m.mutable_graph();
    gp.set_name(g_.name.empty() ? std::string("qkit_graph") : g_.name);
    set_value_info(*gp.add_input(), g_.input_name, g_.input_shape);
    set_value_info(*gp.add_output(), g_.output_name, g_.output_shape);

    // Weights first: their DequantizeLinear (or Cast) outputs keep the weight's name, so the
    // float nodes read them unchanged.
    for (const auto& [name, w] : g_.initializers) add_initializer(gp, name, w);

    // Activations: the graph input's QDQ comes before every node; each node's quantized
    // outputs get theirs right after it.
    std::map<std::string, std::string> reads;  // tensor -> name its consumers read
    std::map<std::string, std::string> writes; // tensor -> name its producer writes
    if (auto it = g_.quantized.find(g_.input_name); it != g_.quantized.end())
      add_activation_qdq(gp, g_.input_name, g_.input_name, it->second, reads);
    for (const auto& n : g_.nodes) {
      for (const auto& out : n.outputs) {
        auto it = g_.quantized.find(out);
        if (it == g_.quantized.end() || is_passthrough(it->second)) continue;
        // The graph output keeps its name on the dequantized value.
        if (out == g_.output_name) writes[out] = unique(out + "_float");
      }
      onnx::NodeProto& np = *gp.add_node();
      np.set_op_type(n.op_type);
      np.set_name(n.name);
      for (const auto& in : n.inputs) {
        auto it = reads.find(in);
        np.add_input(it == reads.end() ? in : it->second);
      }
      for (const auto& out : n.outputs) {
        auto it = writes.find(out);
        np.add_output(it == writes.end() ? out : it->second);
      }
      for (const auto& a : n.attrs) set_attr(np, a);
      for (const auto& out : n.outputs) {
        auto it = g_.quantized.find(out);
        if (it == g_.quantized.end()) continue;
        auto w = writes.find(out);
        add_activation_qdq(gp, out, w == writes.end() ? out : w->second, it->second, reads);
      }
    }
    return m;
  }

  int opset() const {
    int v = std::max(o_.opset, 13);
    if (needs_opset_21(g_)) v = std::max(v, 21);
    return v;
  }

 private:
  static bool is_passthrough(const tensor_quant& q) {
    return !q.encodings.empty() && q.encodings.front().is_passthrough();
  }

  std::string unique(const std::string& base) {
    std::string name = base;
    for (int i = 1; names_.count(name); ++i) name = base + "_" + std::to_string(i);
    names_.insert(name);
    return name;
  }

  void validate() {
    QKIT_PRECONDITION(!g_.input_name.empty() && !g_.output_name.empty(), config_error,
                      "export graph '", g_.name, "': input and output need names");
    QKIT_PRECONDITION(g_.input_name != g_.output_name, config_error, "export graph '", g_.name,
                      "': input and output are the same tensor '", g_.input_name, "'");
    std::set<std::string> defined{g_.input_name};
    for (const auto& [name, w] : g_.initializers)
      QKIT_PRECONDITION(defined.insert(name).second, config_error, "export graph '", g_.name,
                        "': tensor '", name, "' is defined twice");
    for (const auto& n : g_.nodes) {
      for (const auto& in : n.inputs)
        QKIT_PRECONDITION(in.empty() || defined.count(in), config_error, "export graph '",
                          g_.name, "': node '", n.name, "' (", n.op_type, ") reads '", in,
                          "' before anything defines it (nodes must be in topological order)");
      for (const auto& out : n.outputs)
        QKIT_PRECONDITION(defined.insert(out).second, config_error, "export graph '", g_.name,
                          "': tensor '", out, "' is defined twice");
    }
    QKIT_PRECONDITION(defined.count(g_.output_name), config_error, "export graph '", g_.name,
                      "': no node produces the output '", g_.output_name, "'");
    for (const auto& [name, q] : g_.quantized) {
      QKIT_PRECONDITION(defined.count(name), config_error, "export graph '", g_.name,
                        "': encodings given for '", name, "', which the graph does not have");
      common_encoding(q, "tensor '" + name + "'");
    }
    names_ = defined;
  }

  void add_initializer(onnx::GraphProto& gp, const std::string& name, const tensor& w) {
    std::vector<std::int64_t> dims(w.shape().begin(), w.shape().end());
    auto it = g_.quantized.find(name);
    if (it == g_.quantized.end() || is_passthrough(it->second)) {
      *gp.add_initializer() = float_tensor(name, dims, w.data(), w.size());
      return;
    }
    const tensor_quant& q = it->second;
    const std::string what = "weight '" + name + "'";
    const encoding& e = common_encoding(q, what);
    if (e.dtype == dtype::floating) {
      // float16 weight: stored as half, cast back to float for the float nodes.
      std::vector<std::uint16_t> half(w.size());
      float_to_half_bits(w.data(), half.data(), w.size());
      onnx::TensorProto t;
      t.set_name(unique(name + "_fp16"));
      t.set_data_type(onnx::TensorProto::FLOAT16);
      for (auto d : dims) t.add_dims(d);
      append_raw(t, half);
      const std::string stored = t.name();
      *gp.add_initializer() = std::move(t);
      add_cast(gp, stored, name, onnx::TensorProto::FLOAT, name + "_cast");
      return;
    }
    if (q.encodings.size() > 1) {
      const auto rank = static_cast<int>(dims.size());
      QKIT_PRECONDITION(q.axis >= -rank && q.axis < rank, config_error, what,
                        ": per-channel axis ", q.axis, " is out of range for rank ", rank);
    }
    // Symmetric weights are stored signed (8-bit symmetric: int8 with zero point 0).
    const onnx_storage s = pick_storage(e, e.symmetric, what);
    std::vector<std::int64_t> values;
    switch (s.elem_type) {
      case onnx::TensorProto::INT8: values = quantize_values<std::int8_t>(w, q, o_.weight_rounding); break;
      case onnx::TensorProto::UINT8: values = quantize_values<std::uint8_t>(w, q, o_.weight_rounding); break;
      case onnx::TensorProto::INT16: values = quantize_values<std::int16_t>(w, q, o_.weight_rounding); break;
      case onnx::TensorProto::UINT16: values = quantize_values<std::uint16_t>(w, q, o_.weight_rounding); break;
      default: values = quantize_values<std::int32_t>(w, q, o_.weight_rounding); break;
    }
    onnx::TensorProto t;
    t.set_name(unique(name + "_q"));
    t.set_data_type(s.elem_type);
    for (auto d : dims) t.add_dims(d);
    add_int_values(t, s, values);
    const std::string stored = t.name();
    *gp.add_initializer() = std::move(t);
    const std::string scale = unique(name + "_scale"), zp = unique(name + "_zero_point");
    add_scale_zero_point(gp, scale, zp, q.encodings, s);
    onnx::NodeProto& dq = *gp.add_node();
    dq.set_op_type("DequantizeLinear");
    dq.set_name(unique(name + "_dequantize"));
    dq.add_input(stored);
    dq.add_input(scale);
    dq.add_input(zp);
    dq.add_output(name);
    if (q.encodings.size() > 1) set_attr(dq, {"axis", std::int64_t{q.axis}});
  }

  void add_cast(onnx::GraphProto& gp, const std::string& in, const std::string& out, int to,
                const std::string& node_name) {
    onnx::NodeProto& c = *gp.add_node();
    c.set_op_type("Cast");
    c.set_name(unique(node_name));
    c.add_input(in);
    c.add_output(out);
    set_attr(c, {"to", std::int64_t{to}});
  }

  // T -> [Clip] -> QuantizeLinear -> DequantizeLinear -> T_dq (or the graph output's name);
  // float16: T -> Cast(FLOAT16) -> Cast(FLOAT).
  void add_activation_qdq(onnx::GraphProto& gp, const std::string& tensor_name,
                          const std::string& src, const tensor_quant& q,
                          std::map<std::string, std::string>& reads) {
    const std::string what = "activation '" + tensor_name + "'";
    const encoding& e = common_encoding(q, what);
    if (e.is_passthrough()) return;
    const std::string dst =
        tensor_name == g_.output_name ? tensor_name : unique(tensor_name + "_dq");
    reads[tensor_name] = dst;
    if (e.dtype == dtype::floating) {
      const std::string half = unique(tensor_name + "_fp16");
      add_cast(gp, src, half, onnx::TensorProto::FLOAT16, tensor_name + "_to_fp16");
      add_cast(gp, half, dst, onnx::TensorProto::FLOAT, tensor_name + "_from_fp16");
      return;
    }
    QKIT_PRECONDITION(e.bitwidth <= 16, config_error, what, ": bitwidth ", e.bitwidth,
                      " cannot be exported (QuantizeLinear stores at most 16 bits)");
    const onnx_storage s = pick_storage(e, o_.signed_activations, what);
    std::string qin = src;
    if (e.bitwidth < s.bits) {
      // QuantizeLinear saturates to the storage type's range; a narrower grid (4-bit
      // activations in 8-bit storage) is clamped first, to its own ends.
      QKIT_PRECONDITION(q.encodings.size() == 1, config_error, what, ": per-channel ",
                        e.bitwidth, "-bit activations cannot be exported (only ", s.bits,
                        "-bit per-channel grids)");
      const float lo = static_cast<float>(e.scale) * static_cast<float>(e.offset);
      const float hi = static_cast<float>(e.scale) * static_cast<float>(e.offset + e.qmax());
      const std::string lo_name = unique(tensor_name + "_clip_min");
      const std::string hi_name = unique(tensor_name + "_clip_max");
      *gp.add_initializer() = float_tensor(lo_name, {}, &lo, 1);
      *gp.add_initializer() = float_tensor(hi_name, {}, &hi, 1);
      qin = unique(tensor_name + "_clipped");
      onnx::NodeProto& clip = *gp.add_node();
      clip.set_op_type("Clip");
      clip.set_name(unique(tensor_name + "_clip"));
      clip.add_input(src);
      clip.add_input(lo_name);
      clip.add_input(hi_name);
      clip.add_output(qin);
    }
    const std::string scale = unique(tensor_name + "_scale");
    const std::string zp = unique(tensor_name + "_zero_point");
    add_scale_zero_point(gp, scale, zp, q.encodings, s);
    const std::string quantized = unique(tensor_name + "_q");
    onnx::NodeProto& qn = *gp.add_node();
    qn.set_op_type("QuantizeLinear");
    qn.set_name(unique(tensor_name + "_quantize"));
    qn.add_input(qin);
    qn.add_input(scale);
    qn.add_input(zp);
    qn.add_output(quantized);
    onnx::NodeProto& dq = *gp.add_node();
    dq.set_op_type("DequantizeLinear");
    dq.set_name(unique(tensor_name + "_dequantize"));
    dq.add_input(quantized);
    dq.add_input(scale);
    dq.add_input(zp);
    dq.add_output(dst);
    if (q.encodings.size() > 1) {
      set_attr(qn, {"axis", std::int64_t{q.axis}});
      set_attr(dq, {"axis", std::int64_t{q.axis}});
    }
  }

  const export_graph& g_;
  const onnx_export_options& o_;
  std::set<std::string> names_;
};

}  // namespace detail

/// The highest ai.onnx opset the linked ONNX library knows (17 for Debian's ONNX 1.12).
inline int onnx_library_max_opset() {
  const auto& m = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  auto it = m.find("");
  return it == m.end() ? 0 : it->second.second;
}

/// Checks a model with ONNX's checker: the structural check always, and the full check (strict
/// shape and type inference, as onnx.checker.check_model(full_check=True)) when the linked ONNX
/// library knows the model's opset. ONNX 1.12 knows opsets up to 17, so a model that needed
/// opset 21 (16-bit storage) gets the structural check only; ONNX Runtime checks its types when
/// it loads it. Returns whether the full check ran; a failure is a format_error.
inline bool check_onnx_model(const onnx::ModelProto& m, const std::string& what = "ONNX model") {
  try {
    onnx::checker::check_model(m);
  } catch (const std::exception& e) {
    QKIT_THROW(format_error, what, " fails ONNX's checker: ", e.what());
  }
  int opset = 0;
  for (const auto& o : m.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") opset = static_cast<int>(o.version());
  if (opset > onnx_library_max_opset()) return false;
  try {
    onnx::ModelProto copy = m;
    onnx::shape_inference::InferShapes(copy, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(true, 1, false));
  } catch (const std::exception& e) {
    QKIT_THROW(format_error, what, " fails ONNX's full check (type and shape inference): ",
               e.what());
  }
  return true;
}

/// The opset write_onnx will stamp on `g` under `o` (see onnx_export_options::opset).
inline int onnx_export_opset(const export_graph& g, const onnx_export_options& o = {}) {
  return detail::onnx_builder(g, o).opset();
}

/// Builds the QDQ model of `g` (not checked; see check_onnx_model):
/// - a quantized activation T gets [Clip ->] QuantizeLinear -> DequantizeLinear -> T_dq, and
///   every consumer reads T_dq (the graph output keeps its name on the dequantized value);
///   float16 activations get Cast(FLOAT16) -> Cast(FLOAT); 32-bit ones nothing;
/// - a quantized weight W becomes integers W_q (qkit's quantize, options.weight_rounding) and
///   DequantizeLinear(W_q, W_scale, W_zero_point[, axis]) -> W; float16 weights are stored as
///   half and cast to float.
/// Storage: activations uint8/uint16 (int8/int16 if signed_activations); symmetric weights
/// int8/int16, asymmetric uint8/uint16; grids of 17..31 bits int32 (symmetric only). Grids
/// narrower than their storage (4-bit) keep values in their own range.
inline onnx::ModelProto onnx_export_model(const export_graph& g, const onnx_export_options& o = {}) {
  return detail::onnx_builder(g, o).build();
}

/// Exports `g` as a QDQ ONNX model at `path`, checked by ONNX's checker first (a model that
/// fails it is a format_error and nothing is written), then written atomically.
inline void write_onnx(const export_graph& g, const std::filesystem::path& path,
                       const onnx_export_options& o = {}) {
  const onnx::ModelProto m = onnx_export_model(g, o);
  check_onnx_model(m, "exported model '" + path.string() + "'");
  std::string bytes;
  QKIT_PRECONDITION(m.SerializeToString(&bytes), format_error, "cannot serialize ONNX model '",
                    path.string(), "'");
  write_file_atomically(path, bytes);
}

}  // namespace qkit::io
