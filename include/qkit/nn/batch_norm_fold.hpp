// qkit/nn/batch_norm_fold.hpp — a float-graph rewrite: folds each batch norm into the conv or linear layer right
// before it (AIMET's rule): s = γ/√(var + ε), W' = W·s per output channel, b' = β + (b − μ)·s.
// The batch norm stays in the graph, folded (identity, no parameters), so names and visitor
// order do not change; a batch norm with no such predecessor is reported, never guessed at.
// The folded batch norm keeps its γ and β: they describe the distribution of the folded
// layer's output (mean β, standard deviation |γ| per channel), which cross-layer equalization's
// high-bias absorption and analytical bias correction use.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "batch_norm.hpp"
#include "conv2d.hpp"
#include "graph.hpp"
#include "linear.hpp"
#include "weighted_layer.hpp"

namespace qkit::nn {

namespace detail {

template <class L>
inline constexpr bool is_foldable_into_v = weighted<L>;

/// Multiplies the layer's output channel o by s[o] and sets its bias to β + (b − μ)·s.
inline void check_foldable(const weighted_layer& layer, const batch_norm& bn) {
  QKIT_PRECONDITION(layer.output_channels() == bn.channels(), shape_error, "fold_batch_norms: ",
                    "BatchNormalization '", bn.name(), "' has ", bn.channels(),
                    " channels but the layer before it, '", layer.name(), "', has ",
                    layer.output_channels(), " outputs");
}

inline void fold_into(weighted_layer& layer, batch_norm& bn) {
  const std::size_t O = bn.channels();
  layer.ensure_bias();
  tensor& w = layer.weight();
  tensor& b = layer.bias();
  const std::size_t per_channel = w.size() / O;
  for (std::size_t o = 0; o < O; ++o) {
    const double s = double(bn.weight()(o)) / std::sqrt(double(bn.running_var()(o)) +
                                                         double(bn.epsilon()));
    float* wo = w.data() + o * per_channel;
    for (std::size_t i = 0; i < per_channel; ++i) wo[i] = float(double(wo[i]) * s);
    b(o) = float(double(bn.bias()(o)) + (double(b(o)) - double(bn.running_mean()(o))) * s);
  }
  bn.set_folded();
}

template <class Node, class OnPair, class OnLoneBn>
void walk_batch_norms(Node& node, OnPair& on_pair, OnLoneBn& on_lone) {
  if constexpr (is_reference_v<Node> || is_named_v<Node>) {
    walk_batch_norms(unwrap(node), on_pair, on_lone);
  } else if constexpr (is_residual_v<Node>) {
    walk_batch_norms(node.body(), on_pair, on_lone);
  } else if constexpr (is_sequential_v<Node>) {
    constexpr std::size_t n = std::remove_cvref_t<Node>::size;
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      (
          [&] {
            auto& child = node.template get<I>();
            using C = std::remove_cvref_t<decltype(child)>;
            if constexpr (std::is_same_v<C, batch_norm>) {
              if constexpr (I > 0) {
                using P = std::remove_cvref_t<decltype(node.template get<I - 1>())>;
                if constexpr (is_foldable_into_v<P>) on_pair(node.template get<I - 1>(), child);
                else on_lone(child);
              } else {
                on_lone(child);
              }
            } else {
              walk_batch_norms(child, on_pair, on_lone);
            }
          }(),
          ...);
    }(std::make_index_sequence<n>{});
  } else if constexpr (std::is_same_v<std::remove_cvref_t<Node>, batch_norm>) {
    on_lone(node);
  }
}

}  // namespace detail

/// One fold: the layer whose weights absorbed the batch norm, and the batch norm.
struct batch_norm_fold {
  std::string layer;
  std::string batch_norm;
  friend bool operator==(const batch_norm_fold&, const batch_norm_fold&) = default;
};

/// Folds every batch norm that directly follows a weighted layer (conv2d, linear) in the same sequential
/// (std::ref and named() are seen through) and returns the pairs folded, in graph order.
/// Uses the running statistics, i.e. the inference-mode function is preserved. Batch norms
/// already folded are skipped.
template <class Model>
std::vector<batch_norm_fold> fold_batch_norms(Model& model) {
  // All pairs are checked before any is folded, so a mismatch leaves the model as it was.
  std::vector<std::pair<weighted_layer*, batch_norm*>> pairs;
  auto on_pair = [&](auto& layer, batch_norm& bn) {
    if (bn.folded()) return;
    detail::check_foldable(layer, bn);
    pairs.emplace_back(&layer, &bn);
  };
  auto on_lone = [](batch_norm&) {};
  detail::walk_batch_norms(model, on_pair, on_lone);
  std::vector<batch_norm_fold> folded;
  for (auto [layer, bn] : pairs) {
    detail::fold_into(*layer, *bn);
    folded.push_back({layer->name(), bn->name()});
  }
  return folded;
}

/// Names of the unfolded batch norms that fold_batch_norms cannot fold (no conv2d or linear
/// right before them in the same sequential), in graph order.
template <class Model>
std::vector<std::string> unfoldable_batch_norms(Model& model) {
  std::vector<std::string> names;
  auto on_pair = [](auto&, batch_norm&) {};
  auto on_lone = [&](batch_norm& bn) {
    if (!bn.folded()) names.push_back(bn.name());
  };
  detail::walk_batch_norms(model, on_pair, on_lone);
  return names;
}

}  // namespace qkit::nn
