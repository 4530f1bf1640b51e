// qkit/nn/layer.hpp — what every leaf layer shares: its hierarchical name and mode, the hooks
// through which QuantSim and QAT see its parameters, outputs and gradients, and the interface
// the graph detects (dlib style) with static_assert messages that say what is missing.
#pragma once

#include <concepts>
#include <cstddef>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/elementwise.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::nn {

/// The default hooks: every call is an inline no-op, so forward(model, x) costs nothing extra.
/// A hooks type used with forward/backward must provide all five; derive from no_hooks and
/// redefine the ones you need (calls are resolved statically on the hooks type, never virtual).
struct no_hooks {
  /// The value a layer computes with for parameter `param_name` (QuantSim returns a
  /// quantize-dequantized copy it owns; the reference must stay valid until the layer's
  /// forward returns).
  template <class L>
  const tensor& param(const L&, std::string_view, const tensor& value) {
    return value;
  }
  /// Called with a leaf's input right before its forward (a residual's add: the body output).
  template <class L>
  void input(const L&, const tensor&) {}
  /// Called right after a leaf (or a residual's add) computed its output y; may change y.
  template <class L>
  void output(const L&, tensor&) {}
  /// Called in backward with the gradient w.r.t. a leaf's output, before the leaf's backward.
  template <class L>
  void output_grad(const L&, tensor&) {}
  /// Called after a leaf computed the gradient of one parameter for this backward pass, before
  /// it is accumulated into the parameter's gradient.
  template <class L>
  void param_grad(const L&, std::string_view, tensor&) {}
};

/// What a pass needs to know about a layer's function, beyond its ONNX op_type: Conv is an
/// ordinary or a depthwise convolution, Clip is ReLU (0, +inf), ReLU6 (0, 6) or another clip.
/// A layer says its kind with `op_kind kind() const`; a layer without one is `other`, which
/// passes leave alone (and which breaks their chains).
enum class op_kind { conv, depthwise_conv, linear, batch_norm, relu, relu6, clip, add, other };

inline const char* to_string(op_kind k) {
  switch (k) {
    case op_kind::conv: return "conv";
    case op_kind::depthwise_conv: return "depthwise conv";
    case op_kind::linear: return "linear";
    case op_kind::batch_norm: return "batch norm";
    case op_kind::relu: return "relu";
    case op_kind::relu6: return "relu6";
    case op_kind::clip: return "clip";
    case op_kind::add: return "add";
    case op_kind::other: return "other";
  }
  return "other";
}

template <class L>
op_kind kind_of(const L& layer) {
  if constexpr (requires { { layer.kind() } -> std::convertible_to<op_kind>; }) return layer.kind();
  else return op_kind::other;
}

/// Name and mode of a leaf layer. Names are assigned by the graph (assign_names) and stay put.
class layer_base {
 public:
  const std::string& name() const noexcept { return name_; }
  void set_name(std::string name) { name_ = std::move(name); }
  /// Training mode: batch norm uses batch statistics and updates its running statistics.
  bool training() const noexcept { return training_; }
  void set_training(bool on) noexcept { training_ = on; }

 private:
  std::string name_;
  bool training_ = false;
};

/// "Conv 'features.0'" — how errors refer to a layer.
template <class L>
std::string layer_label(const L& layer) {
  std::string s(L::op_type);
  s += " '";
  s += layer.name();
  s += "'";
  return s;
}

namespace detail {

/// Hands a freshly computed parameter gradient to the hooks, then accumulates it (gradients
/// add up over backward calls until zero_grad, as in PyTorch).
template <class Hooks, class L>
void deliver_param_grad(Hooks& h, const L& layer, std::string_view param_name, tensor& fresh,
                        tensor& accumulated) {
  h.param_grad(layer, param_name, fresh);
  if (accumulated.shape() == fresh.shape())
    qkit::add(accumulated.data(), fresh.data(), accumulated.data(), fresh.size());
  else
    accumulated = std::move(fresh);
}

/// Throws shape_error naming the layer and both shapes unless `got` has `expected` sizes
/// (0 in `expected` matches any size).
template <class L, class Shape>
void check_shape(const L& layer, const char* what, const Shape& got,
                 std::initializer_list<std::size_t> expected) {
  bool ok = got.size() == expected.size();
  std::size_t i = 0;
  for (auto e : expected) {
    if (!ok) break;
    if (e != 0 && got[i] != e) ok = false;
    ++i;
  }
  if (!ok) {
    std::string want = "[";
    bool first = true;
    for (auto e : expected) {
      if (!first) want += ", ";
      want += e == 0 ? std::string("*") : std::to_string(e);
      first = false;
    }
    want += "]";
    QKIT_THROW(shape_error, layer_label(layer), ": ", what, " has shape ", shape_string(got),
               ", expected ", want);
  }
}

/// The message of a nested qkit error without its "qkit: shape error: " prefix.
inline std::string nested_message(const std::exception& e) {
  std::string m = e.what();
  const auto p = m.find("error: ");
  return p == std::string::npos ? m : m.substr(p + 7);
}

struct parameter_probe {
  void operator()(std::string_view, tensor&, tensor*) const {}
};

}  // namespace detail

// ---- the leaf-layer interface, one requirement at a time so a failure says which is missing --

template <class L>
concept has_op_type = requires {
  { L::op_type } -> std::convertible_to<std::string_view>;
};
template <class L>
concept has_name = requires(const L& l) {
  { l.name() } -> std::convertible_to<const std::string&>;
};
template <class L>
concept has_forward = requires(L& l, const tensor& x, no_hooks& h) {
  { l.forward(x, h) } -> std::same_as<tensor>;
};
template <class L>
concept has_backward = requires(L& l, const tensor& dy, no_hooks& h) {
  { l.backward(dy, h) } -> std::same_as<tensor>;
};
template <class L>
concept has_parameters = requires(L& l, detail::parameter_probe f) { l.for_each_parameter(f); };
template <class L>
concept has_mode = requires(L& l) { l.set_training(true); };
/// Optional: layers with learnable weights re-draw them from a seeded generator.
template <class L>
concept has_reset_parameters = requires(L& l, std::mt19937& rng) { l.reset_parameters(rng); };

/// A leaf layer: an ONNX op_type, a name, forward/backward templated on hooks, and its
/// parameters by name suffix.
template <class L>
concept leaf_layer = has_op_type<L> && has_name<L> && has_forward<L> && has_backward<L> &&
                     has_parameters<L> && has_mode<L>;

/// Fails compilation with a sentence naming what a would-be leaf layer lacks.
template <class L>
constexpr bool check_leaf_layer() {
  static_assert(has_op_type<L>,
                "qkit::nn: a leaf layer needs `static constexpr std::string_view op_type` with "
                "its ONNX op name (Conv, Gemm, Relu, ...)");
  static_assert(has_name<L>,
                "qkit::nn: a leaf layer needs `const std::string& name() const` (derive from "
                "qkit::nn::layer_base)");
  static_assert(has_mode<L>,
                "qkit::nn: a leaf layer needs `set_training(bool)` (derive from "
                "qkit::nn::layer_base)");
  static_assert(has_forward<L>,
                "qkit::nn: a leaf layer needs `template <class Hooks> tensor forward(const "
                "tensor& x, Hooks& h)` (or taking `tensor x` by value, to keep it without a copy)");
  static_assert(has_backward<L>,
                "qkit::nn: a leaf layer needs `template <class Hooks> tensor backward(const "
                "tensor& dy, Hooks& h)` (or `tensor dy` by value) returning the gradient w.r.t. "
                "its input");
  static_assert(has_parameters<L>,
                "qkit::nn: a leaf layer needs `template <class F> void for_each_parameter(F&& "
                "f)` calling f(suffix, value, grad-or-nullptr) for each parameter (none is fine)");
  return true;
}

}  // namespace qkit::nn
