// qkit/nn/graph.hpp — the statically composed model: sequential(...), residual(body),
// named("features", layer) and std::ref(layer) (weight sharing), with hierarchical names
// assigned once (PyTorch style: children by index, "features.3.weight"), visitors over the
// leaves and over the dataflow structure, forward/backward templated on hooks, training mode,
// and parameters by name. Passes (BN fold, CLE, QuantSim) are visitors over this, not a second
// graph.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "add.hpp"
#include "layer.hpp"

namespace qkit::nn {

template <class... Layers>
class sequential;
template <class Body>
class residual;
template <class Layer>
class named_layer;

// ---- traits ---------------------------------------------------------------------------------

template <class T>
struct is_sequential : std::false_type {};
template <class... L>
struct is_sequential<sequential<L...>> : std::true_type {};
template <class T>
struct is_residual : std::false_type {};
template <class B>
struct is_residual<residual<B>> : std::true_type {};
template <class T>
struct is_named : std::false_type {};
template <class L>
struct is_named<named_layer<L>> : std::true_type {};
template <class T>
struct is_reference : std::false_type {};
template <class L>
struct is_reference<std::reference_wrapper<L>> : std::true_type {};

template <class T>
inline constexpr bool is_sequential_v = is_sequential<std::remove_cvref_t<T>>::value;
template <class T>
inline constexpr bool is_residual_v = is_residual<std::remove_cvref_t<T>>::value;
template <class T>
inline constexpr bool is_named_v = is_named<std::remove_cvref_t<T>>::value;
template <class T>
inline constexpr bool is_reference_v = is_reference<std::remove_cvref_t<T>>::value;
template <class T>
inline constexpr bool is_composite_v =
    is_sequential_v<T> || is_residual_v<T> || is_named_v<T> || is_reference_v<T>;

/// Sees through std::ref and named(): the layer or composite a child stands for.
template <class T>
decltype(auto) unwrap(T& node) {
  if constexpr (is_reference_v<T>) return unwrap(node.get());
  else if constexpr (is_named_v<T>) return unwrap(node.layer());
  else return (node);
}
template <class T>
using unwrapped_t = std::remove_cvref_t<decltype(unwrap(std::declval<T&>()))>;

// ---- composites -----------------------------------------------------------------------------

/// Children run in order; child i is named "<prefix>.i" unless wrapped in named().
template <class... Layers>
class sequential {
 public:
  static constexpr std::size_t size = sizeof...(Layers);

  explicit sequential(Layers... layers) : children_(std::move(layers)...) { rename(); }
  sequential(const sequential& o) : children_(o.children_) { rename(); }
  sequential(sequential&& o) noexcept : children_(std::move(o.children_)) {}
  sequential& operator=(const sequential&) = default;
  sequential& operator=(sequential&&) = default;

  std::tuple<Layers...>& children() { return children_; }
  const std::tuple<Layers...>& children() const { return children_; }
  /// Child I, seen through std::ref and named().
  template <std::size_t I>
  decltype(auto) get() { return unwrap(std::get<I>(children_)); }
  template <std::size_t I>
  decltype(auto) get() const { return unwrap(std::get<I>(children_)); }

 private:
  void rename();
  std::tuple<Layers...> children_;
};
template <class... Layers>
sequential(Layers...) -> sequential<Layers...>;

/// y = x + body(x). The add is a leaf of its own, named "<residual>.add"; the body's children
/// are named under the residual's own name (the body is not a level of naming).
template <class Body>
class residual {
 public:
  explicit residual(Body body) : body_(std::move(body)) { rename(); }
  residual(const residual& o) : body_(o.body_), add_(o.add_), name_(o.name_) { rename(); }
  residual(residual&&) noexcept = default;
  residual& operator=(const residual&) = default;
  residual& operator=(residual&&) = default;

  Body& body() { return body_; }
  const Body& body() const { return body_; }
  nn::add& add_layer() { return add_; }
  const nn::add& add_layer() const { return add_; }
  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }

 private:
  void rename();
  Body body_;
  nn::add add_;
  std::string name_;
};

/// Gives a child a name instead of its index: named("features", sequential(...)).
template <class Layer>
class named_layer {
 public:
  named_layer(std::string name, Layer layer) : name_(std::move(name)), layer_(std::move(layer)) {
    QKIT_PRECONDITION(!name_.empty() && name_.find('.') == std::string::npos, config_error,
                      "named: a child's name must be non-empty and contain no '.', got '",
                      name_, "'");
    rename();
  }
  named_layer(const named_layer& o) : name_(o.name_), layer_(o.layer_) { rename(); }
  named_layer(named_layer&&) noexcept = default;
  named_layer& operator=(const named_layer&) = default;
  named_layer& operator=(named_layer&&) = default;

  const std::string& child_name() const { return name_; }
  Layer& layer() { return layer_; }
  const Layer& layer() const { return layer_; }

 private:
  void rename();
  std::string name_;
  Layer layer_;
};

template <class Layer>
named_layer<Layer> named(std::string name, Layer layer) {
  return named_layer<Layer>(std::move(name), std::move(layer));
}

// ---- naming ---------------------------------------------------------------------------------

namespace detail {

inline std::string join_name(const std::string& prefix, const std::string& child) {
  return prefix.empty() ? child : prefix + "." + child;
}

template <class Node>
void assign_names_impl(Node& node, const std::string& prefix) {
  if constexpr (is_reference_v<Node>) {
    assign_names_impl(node.get(), prefix);
  } else if constexpr (is_named_v<Node>) {
    assign_names_impl(node.layer(), join_name(prefix, node.child_name()));
  } else if constexpr (is_sequential_v<Node>) {
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (
          [&] {
            auto& child = std::get<I>(node.children());
            using C = std::remove_cvref_t<decltype(child)>;
            // A named child brings its own name; others are numbered.
            if constexpr (is_named_v<C>) assign_names_impl(child, prefix);
            else assign_names_impl(child, join_name(prefix, std::to_string(I)));
          }(),
          ...);
    }(std::make_index_sequence<std::remove_cvref_t<Node>::size>{});
  } else if constexpr (is_residual_v<Node>) {
    node.set_name(prefix);
    assign_names_impl(node.body(), prefix);
    node.add_layer().set_name(join_name(prefix, "add"));
  } else {
    node.set_name(prefix);
  }
}

}  // namespace detail

/// (Re)assigns every name under `model`, with `prefix` as the model's own name. Composites do
/// this when constructed, so the outermost one's names win; call it again only after changing
/// the structure by hand.
template <class Model>
void assign_names(Model& model, const std::string& prefix = "") {
  detail::assign_names_impl(model, prefix);
}

template <class... Layers>
void sequential<Layers...>::rename() {
  assign_names(*this);
}
template <class Body>
void residual<Body>::rename() {
  assign_names(*this);
}
template <class Layer>
void named_layer<Layer>::rename() {
  detail::assign_names_impl(*this, "");
}

// ---- visitors -------------------------------------------------------------------------------

namespace detail {
template <class Node, class Visitor>
void visit_structure_impl(Node& node, Visitor& v) {
  if constexpr (is_reference_v<Node> || is_named_v<Node>) {
    visit_structure_impl(unwrap(node), v);
  } else if constexpr (is_sequential_v<Node>) {
    std::apply([&](auto&... child) { (visit_structure_impl(child, v), ...); }, node.children());
  } else if constexpr (is_residual_v<Node>) {
    if constexpr (requires { v.residual_begin(node.name()); }) v.residual_begin(node.name());
    visit_structure_impl(node.body(), v);
    v.leaf(node.add_layer().name(), node.add_layer());
    if constexpr (requires { v.residual_end(node.name()); }) v.residual_end(node.name());
  } else {
    v.leaf(node.name(), node);
  }
}

template <class F>
struct leaf_only_visitor {
  F& f;
  template <class L>
  void leaf(const std::string& name, L& layer) {
    f(name, layer);
  }
};
}  // namespace detail

/// Calls f(const std::string& name, auto& leaf) for every leaf in execution order, a
/// residual's add (type nn::add) included, right after its body.
template <class Model, class F>
void visit_layers(Model& model, F&& f) {
  detail::leaf_only_visitor<F> v{f};
  detail::visit_structure_impl(model, v);
}

/// Walks the dataflow: v.leaf(name, layer) for each leaf in execution order, and, if v has
/// them, v.residual_begin(name) before a residual's body and v.residual_end(name) after its
/// add. Between begin and end, the body's leaves form a chain fed by the tensor that was
/// current at residual_begin; the add (reported through v.leaf) takes the body's output and
/// that same tensor, and its output is current after residual_end.
template <class Model, class Visitor>
void visit_structure(Model& model, Visitor& v) {
  detail::visit_structure_impl(model, v);
}

/// Training (true) or inference (false) mode on every leaf. Layers start in inference mode.
template <class Model>
void set_training(Model& model, bool on) {
  visit_layers(model, [on](const std::string&, auto& leaf) { leaf.set_training(on); });
}

/// Calls f(const std::string& name, tensor& value, tensor* grad) for every parameter under
/// its full name ("features.3.weight"); grad is nullptr for state without a gradient (batch
/// norm's running statistics).
template <class Model, class F>
void for_each_parameter(Model& model, F&& f) {
  visit_layers(model, [&](const std::string& layer_name, auto& leaf) {
    leaf.for_each_parameter([&](std::string_view suffix, tensor& value, tensor* grad) {
      f(detail::join_name(layer_name, std::string(suffix)), value, grad);
    });
  });
}

/// The parameter (or running statistic) with this full name, or nullptr.
template <class Model>
tensor* find_parameter(Model& model, const std::string& name) {
  tensor* found = nullptr;
  for_each_parameter(model, [&](const std::string& n, tensor& value, tensor*) {
    if (!found && n == name) found = &value;
  });
  return found;
}

/// The gradient of the parameter with this full name, or nullptr.
template <class Model>
tensor* find_gradient(Model& model, const std::string& name) {
  tensor* found = nullptr;
  for_each_parameter(model, [&](const std::string& n, tensor&, tensor* grad) {
    if (!found && n == name) found = grad;
  });
  return found;
}

/// Sets every gradient to zeros shaped like its parameter.
template <class Model>
void zero_grad(Model& model) {
  for_each_parameter(model, [](const std::string&, tensor& value, tensor* grad) {
    if (!grad) return;
    if (grad->shape() != value.shape()) *grad = tensor::from_shape(value.shape());
    grad->fill(0.0f);
  });
}

/// Number of learnable scalars (parameters that have a gradient).
template <class Model>
std::size_t parameter_count(Model& model) {
  std::size_t n = 0;
  for_each_parameter(model, [&](const std::string&, tensor& value, tensor* grad) {
    if (grad) n += value.size();
  });
  return n;
}

// ---- forward / backward ---------------------------------------------------------------------

namespace detail {

template <class Node, class Hooks>
tensor forward_impl(Node& node, tensor x, Hooks& h) {
  if constexpr (is_reference_v<Node> || is_named_v<Node>) {
    return forward_impl(unwrap(node), std::move(x), h);
  } else if constexpr (is_sequential_v<Node>) {
    std::apply([&](auto&... child) { ((x = forward_impl(child, std::move(x), h)), ...); },
               node.children());
    return x;
  } else if constexpr (is_residual_v<Node>) {
    tensor body_out = forward_impl(node.body(), x, h);
    h.input(std::as_const(node.add_layer()), std::as_const(body_out));
    tensor y = node.add_layer().forward(body_out, x, h);
    h.output(std::as_const(node.add_layer()), y);
    return y;
  } else {
    static_assert(check_leaf_layer<Node>());
    h.input(std::as_const(node), std::as_const(x));
    tensor y = node.forward(std::move(x), h);
    h.output(std::as_const(node), y);
    return y;
  }
}

template <class Node, class Hooks>
tensor backward_impl(Node& node, tensor dy, Hooks& h) {
  if constexpr (is_reference_v<Node> || is_named_v<Node>) {
    return backward_impl(unwrap(node), std::move(dy), h);
  } else if constexpr (is_sequential_v<Node>) {
    constexpr std::size_t n = std::remove_cvref_t<Node>::size;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      ((dy = backward_impl(std::get<n - 1 - I>(node.children()), std::move(dy), h)), ...);
    }(std::make_index_sequence<n>{});
    return dy;
  } else if constexpr (is_residual_v<Node>) {
    h.output_grad(std::as_const(node.add_layer()), dy);
    // The add passes dy to both operands: one copy goes through the body, one along the
    // skip; they add up at x.
    tensor skip = dy;
    tensor dx = backward_impl(node.body(), std::move(dy), h);
    QKIT_PRECONDITION(dx.shape() == skip.shape(), shape_error, "residual '", node.name(),
                      "': body input gradient ", shape_string(dx.shape()),
                      " and skip gradient ", shape_string(skip.shape()), " differ");
    qkit::add(dx.data(), skip.data(), dx.data(), dx.size());
    return dx;
  } else {
    static_assert(check_leaf_layer<Node>());
    h.output_grad(std::as_const(node), dy);
    return node.backward(std::move(dy), h);
  }
}

}  // namespace detail

/// Runs the model on x; hooks see every parameter value, every output and (in backward) every
/// gradient. Each layer keeps what its backward needs.
template <class Model, class Hooks>
tensor forward(Model& model, const tensor& x, Hooks& hooks) {
  return detail::forward_impl(model, x, hooks);
}
template <class Model>
tensor forward(Model& model, const tensor& x) {
  no_hooks h;
  return detail::forward_impl(model, x, h);
}

/// Back-propagates dy (the loss gradient w.r.t. the last forward's output), accumulating
/// parameter gradients; returns the gradient w.r.t. the model input.
template <class Model, class Hooks>
tensor backward(Model& model, const tensor& dy, Hooks& hooks) {
  return detail::backward_impl(model, dy, hooks);
}
template <class Model>
tensor backward(Model& model, const tensor& dy) {
  no_hooks h;
  return detail::backward_impl(model, dy, h);
}

/// Re-draws every learnable layer's weights (Kaiming/He normal for conv and linear, identity
/// batch norm) from one generator seeded with `seed`, in execution order, so the same seed
/// gives the same model.
template <class Model>
void init_parameters(Model& model, std::uint32_t seed) {
  std::mt19937 rng(seed);
  visit_layers(model, [&](const std::string&, auto& leaf) {
    if constexpr (has_reset_parameters<std::remove_cvref_t<decltype(leaf)>>)
      leaf.reset_parameters(rng);
  });
}

}  // namespace qkit::nn
