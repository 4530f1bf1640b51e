// qkit/ptq/cross_layer_equalization.hpp — data-free cross-layer equalization (Nagel et al.,
// "Data-Free Quantization Through Weight Equalization and Bias Correction", 2019; AIMET's
// equalize_model). Per-tensor weight quantization fails when one output channel's weights span
// far more than another's (typical after batch-norm folding in depthwise-separable models);
// ReLU is positively homogeneous, so a channel of one layer can be shrunk and the matching input
// channel of the next layer grown without changing the function, until both layers' channel
// ranges agree. AIMET's sequence, on the float model:
//   1. fold batch norms (their γ, β stay on the folded batch norm for step 4);
//   2. replace ReLU6 by ReLU (scaling does not commute with a fixed upper bound) — optional;
//   3. scale every conv → (ReLU) → conv pair and conv → depthwise → conv triplet found on the
//      dataflow, inside residual bodies too, never across a tensor that a second op reads;
//   4. high-bias absorption: move the part c = max(0, β − 3|γ|) of each channel's bias that the
//      ReLU passes anyway into the next layer's bias (b1 −= c, b2 += Σ W2·c).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../nn/batch_norm_fold.hpp"
#include "../nn/dataflow.hpp"
#include "../nn/graph.hpp"
#include "../sim/model_validator.hpp"

namespace qkit::ptq {

/// What equalize does with ReLU6. AIMET replaces it by ReLU so that scaling is exact; that can
/// cost accuracy on models trained with ReLU6, so it can be kept (scaling then changes where a
/// scaled channel saturates, and no bias is absorbed across a ReLU6).
enum class relu6_policy { replace_with_relu, keep };

struct cle_options {
  relu6_policy relu6 = relu6_policy::replace_with_relu;
  bool high_bias_absorption = true;
};

/// One scaled group: two layers (a pair) or three (conv → depthwise → conv), and for each link
/// the range of the scale factors s applied (layer before ÷ s, layer after × s).
struct cle_scaling {
  std::vector<std::string> layers;
  std::vector<std::pair<float, float>> scale_range;  ///< one (min s, max s) per link
};

/// One high-bias absorption: from the layer whose bias shrank into the next layer's bias.
struct cle_absorption {
  std::string from, to;
  std::size_t channels = 0;   ///< channels with c > 0
  float max_absorbed = 0.0f;  ///< the largest c
};

struct cle_report {
  std::vector<nn::batch_norm_fold> folded;  ///< batch norms folded first
  std::vector<std::string> relu6_replaced;  ///< ReLU6 layers turned into ReLU
  std::vector<cle_scaling> scaled;
  std::vector<cle_absorption> absorbed;

  /// A few readable lines: what was folded, replaced, scaled and absorbed.
  std::string summary() const {
    std::ostringstream os;
    os << "cross-layer equalization: " << folded.size() << " batch norm(s) folded, "
       << relu6_replaced.size() << " ReLU6 replaced by ReLU, " << scaled.size()
       << " group(s) scaled, " << absorbed.size() << " bias absorption(s)\n";
    if (scaled.empty()) os << "  no equalizable conv pairs found\n";
    for (const auto& g : scaled) {
      os << "  scaled";
      for (std::size_t i = 0; i < g.layers.size(); ++i) os << (i ? " -> " : " ") << g.layers[i];
      os << "  s in";
      for (const auto& [lo, hi] : g.scale_range) os << " [" << lo << ", " << hi << "]";
      os << "\n";
    }
    for (const auto& a : absorbed)
      os << "  absorbed " << a.channels << " channel bias(es) of " << a.from << " into " << a.to
         << " (max " << a.max_absorbed << ")\n";
    return os.str();
  }
};

namespace detail {

// A link of a conv chain: the next conv, and what lies between (relu, relu6 or nothing).
struct cle_link {
  const nn::dataflow_node* to = nullptr;
  nn::op_kind activation = nn::op_kind::other;  // other: no activation
};

inline bool is_conv(const nn::dataflow_node* n) {
  return n && n->weighted &&
         (n->kind == nn::op_kind::conv || n->kind == nn::op_kind::depthwise_conv);
}

// The conv that `from` feeds directly or through one ReLU (or ReLU6, when kept) on
// sole-consumer edges, with nothing else reading the tensors in between.
inline cle_link next_conv(const nn::dataflow& flow, const nn::dataflow_node& from) {
  const nn::dataflow_node* c = flow.sole_consumer(from);
  if (is_conv(c)) return {c, nn::op_kind::other};
  if (c && (c->kind == nn::op_kind::relu || c->kind == nn::op_kind::relu6)) {
    const nn::dataflow_node* d = flow.sole_consumer(*c);
    if (is_conv(d)) return {d, c->kind};
  }
  return {};
}

inline std::pair<float, float> scale_range(const std::vector<float>& s) {
  if (s.empty()) return {1.0f, 1.0f};
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  return {*lo, *hi};
}

inline std::vector<float> reciprocal(const std::vector<float>& s) {
  std::vector<float> r(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) r[i] = 1.0f / s[i];
  return r;
}

// Layer 1's output channels ÷ s, its folded batch norm's statistics with them, layer 2's input
// channels × s.
inline void apply_scale(const nn::dataflow_node& a, const nn::dataflow_node& b,
                        const std::vector<float>& s) {
  const auto inv = reciprocal(s);
  a.weighted->scale_output_channels(inv);
  if (auto* bn = a.folded_batch_norm) {
    for (std::size_t i = 0; i < s.size(); ++i) {
      bn->weight().data()[i] *= inv[i];
      bn->bias().data()[i] *= inv[i];
    }
  }
  b.weighted->scale_input_channels(s);
}

inline void check_link(const nn::dataflow_node& a, const nn::dataflow_node& b) {
  QKIT_PRECONDITION(a.weighted->output_channels() == b.weighted->input_channels(), shape_error,
                    "cross-layer equalization: '", a.name, "' has ",
                    a.weighted->output_channels(), " output channels but '", b.name, "' reads ",
                    b.weighted->input_channels());
}

// s = √(r1 / r2) per channel (r1/s = r2·s), 1 where either range is zero.
inline std::vector<float> pair_scales(const nn::dataflow_node& a, const nn::dataflow_node& b) {
  check_link(a, b);
  const auto r1 = a.weighted->output_channel_absmax();
  const auto r2 = b.weighted->input_channel_absmax();
  std::vector<float> s(r1.size(), 1.0f);
  for (std::size_t i = 0; i < s.size(); ++i)
    if (r1[i] > 0.0f && r2[i] > 0.0f) s[i] = float(std::sqrt(double(r1[i]) / double(r2[i])));
  return s;
}

// S12 = r1 / ∛(r1 r2 r3), S23 = ∛(r1 r2 r3) / r3; 1 where any range is zero.
inline std::pair<std::vector<float>, std::vector<float>> triplet_scales(
    const nn::dataflow_node& a, const nn::dataflow_node& dw, const nn::dataflow_node& c) {
  check_link(a, dw);
  check_link(dw, c);
  const auto r1 = a.weighted->output_channel_absmax();
  const auto r2 = dw.weighted->output_channel_absmax();
  const auto r3 = c.weighted->input_channel_absmax();
  QKIT_PRECONDITION(r1.size() == r2.size() && r2.size() == r3.size(), shape_error,
                    "cross-layer equalization: '", dw.name, "' is not a depthwise conv between '",
                    a.name, "' (", r1.size(), " outputs) and '", c.name, "' (", r3.size(),
                    " inputs): it has ", r2.size(), " outputs");
  std::vector<float> s12(r1.size(), 1.0f), s23(r1.size(), 1.0f);
  for (std::size_t i = 0; i < r1.size(); ++i) {
    if (!(r1[i] > 0.0f && r2[i] > 0.0f && r3[i] > 0.0f)) continue;
    const double g = std::cbrt(double(r1[i]) * double(r2[i]) * double(r3[i]));
    s12[i] = float(double(r1[i]) / g);
    s23[i] = float(g / double(r3[i]));
  }
  return {s12, s23};
}

// High-bias absorption across one link; returns false when nothing could be absorbed.
inline bool absorb_high_bias(const nn::dataflow_node& a, const nn::dataflow_node& b,
                             nn::op_kind activation, cle_absorption& out) {
  nn::batch_norm* bn = a.folded_batch_norm;
  if (!bn || !a.weighted->has_bias()) return false;
  if (activation != nn::op_kind::relu && activation != nn::op_kind::other) return false;
  const std::size_t C = a.weighted->output_channels();
  std::vector<float> c(C, 0.0f);
  std::size_t moved = 0;
  float largest = 0.0f;
  for (std::size_t i = 0; i < C; ++i) {
    const float beta = bn->bias().data()[i], gamma = bn->weight().data()[i];
    const float ci =
        activation == nn::op_kind::relu ? std::max(0.0f, beta - 3.0f * std::fabs(gamma)) : beta;
    c[i] = ci;
    if (ci != 0.0f) {
      ++moved;
      largest = std::max(largest, std::fabs(ci));
    }
  }
  if (moved == 0) return false;
  const auto shift = b.weighted->input_response(c);
  b.weighted->ensure_bias();
  for (std::size_t o = 0; o < shift.size(); ++o)
    b.weighted->bias().data()[o] = float(double(b.weighted->bias().data()[o]) + shift[o]);
  for (std::size_t i = 0; i < C; ++i) {
    a.weighted->bias().data()[i] -= c[i];
    bn->bias().data()[i] -= c[i];  // the folded layer's output mean moved down by c
  }
  out = {a.name, b.name, moved, largest};
  return true;
}

}  // namespace detail

/// The clipping layers of `model` whose upper bound equalize lifted to +inf (ReLU6 turned
/// into ReLU). A weights file holds parameters only, so a flow that saves an equalized model
/// records these names beside it and replace_relu6() applies them again on load.
template <class Model>
std::vector<std::string> replaced_relu6(Model& model) {
  std::vector<std::string> out;
  for (const auto& n : nn::describe_dataflow(model).nodes)
    if (n.clip_layer && n.clip_layer->min_value() == 0.0f &&
        n.clip_layer->max_value() == std::numeric_limits<float>::infinity())
      out.push_back(n.name);
  return out;
}

/// Turns the named ReLU6 (clip) layers of `model` into ReLU, as equalize does; a name that is
/// not a clipping layer of the model is a config_error and nothing changes.
template <class Model>
void replace_relu6(Model& model, const std::vector<std::string>& names) {
  const nn::dataflow flow = nn::describe_dataflow(model);
  std::vector<nn::clip*> layers;
  for (const auto& name : names) {
    const auto it = std::find_if(flow.nodes.begin(), flow.nodes.end(),
                                 [&](const auto& n) { return n.name == name && n.clip_layer; });
    QKIT_PRECONDITION(it != flow.nodes.end(), config_error, "replace_relu6: '", name,
                      "' is not a ReLU6/Clip layer of the model");
    layers.push_back(it->clip_layer);
  }
  for (auto* c : layers) c->set_bounds(0.0f, std::numeric_limits<float>::infinity());
}

/// Equalizes the float `model` in place (see the file comment) and reports what it did.
/// `example_input` checks that the model runs (shapes) before anything changes. Throws
/// config_error naming any batch norm that cannot be folded (or other problems the model
/// validator finds), shape_error for layers whose channels do not line up; the model is
/// unchanged then, and on any other failure. A model without equalizable pairs is not an
/// error: the report says none were found. Equalize before building a QuantSim of the model
/// (a QuantSim's dataflow describes the model as it was built).
template <class Model>
cle_report equalize(Model& model, const tensor& example_input, const cle_options& options = {}) {
  // Everything, the validation's forward pass included, runs on a copy: the caller's model
  // changes only when the whole pass succeeded.
  Model work = model;
  try {
    sim::validate_model(work, example_input, true);
  } catch (const error& e) {
    QKIT_THROW(config_error, "cross-layer equalization: ", nn::detail::nested_message(e));
  }
  cle_report report;
  report.folded = nn::fold_batch_norms(work);
  const nn::dataflow flow = nn::describe_dataflow(work);

  if (options.relu6 == relu6_policy::replace_with_relu) {
    for (const auto& n : flow.nodes)
      if (n.kind == nn::op_kind::relu6 && n.clip_layer) {
        n.clip_layer->set_bounds(0.0f, std::numeric_limits<float>::infinity());
        report.relu6_replaced.push_back(n.name);
      }
  }
  // The kinds changed with the bounds: describe again.
  const nn::dataflow view = report.relu6_replaced.empty() ? flow : nn::describe_dataflow(work);

  // Maximal chains of convs linked as detail::next_conv allows, each started at a conv that no
  // such link reaches.
  std::vector<const nn::dataflow_node*> reached;
  for (const auto& n : view.nodes)
    if (detail::is_conv(&n))
      if (auto l = detail::next_conv(view, n); l.to) reached.push_back(l.to);
  for (const auto& start : view.nodes) {
    if (!detail::is_conv(&start) ||
        std::find(reached.begin(), reached.end(), &start) != reached.end())
      continue;
    std::vector<const nn::dataflow_node*> chain{&start};
    std::vector<nn::op_kind> acts;
    for (auto l = detail::next_conv(view, start); l.to; l = detail::next_conv(view, *l.to)) {
      chain.push_back(l.to);
      acts.push_back(l.activation);
    }
    // Split into triplets around a depthwise conv in the middle, pairs elsewhere; each group
    // starts where the last one ended.
    std::size_t i = 0;
    while (i + 1 < chain.size()) {
      cle_scaling g;
      if (i + 2 < chain.size() && chain[i + 1]->kind == nn::op_kind::depthwise_conv) {
        const auto [s12, s23] = detail::triplet_scales(*chain[i], *chain[i + 1], *chain[i + 2]);
        detail::apply_scale(*chain[i], *chain[i + 1], s12);
        detail::apply_scale(*chain[i + 1], *chain[i + 2], s23);
        g.layers = {chain[i]->name, chain[i + 1]->name, chain[i + 2]->name};
        g.scale_range = {detail::scale_range(s12), detail::scale_range(s23)};
        report.scaled.push_back(std::move(g));
        i += 2;
      } else {
        const auto s = detail::pair_scales(*chain[i], *chain[i + 1]);
        detail::apply_scale(*chain[i], *chain[i + 1], s);
        g.layers = {chain[i]->name, chain[i + 1]->name};
        g.scale_range = {detail::scale_range(s)};
        report.scaled.push_back(std::move(g));
        i += 1;
      }
    }
    if (options.high_bias_absorption)
      for (std::size_t j = 0; j + 1 < chain.size(); ++j) {
        cle_absorption a;
        if (detail::absorb_high_bias(*chain[j], *chain[j + 1], acts[j], a))
          report.absorbed.push_back(std::move(a));
      }
  }
  model = std::move(work);
  return report;
}

}  // namespace qkit::ptq
