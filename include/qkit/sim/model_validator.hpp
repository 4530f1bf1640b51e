// qkit/sim/model_validator.hpp — checks a model before QuantSim wraps it, so that problems
// surface as one clear error at construction instead of a wrong simulation later: a layer
// instance used twice or held by std::ref (its quantizers would be shared, or the caller's layer
// changed), duplicate names (quantizers and files are keyed by name), a batch norm that cannot
// be folded (when batch norms are to be folded), and an example input whose shape the model
// does not accept.
#pragma once

#include <map>
#include <tuple>
#include <sstream>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../nn/graph.hpp"
#include "../nn/batch_norm_fold.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::sim {

/// One problem found by validate_model.
struct model_issue {
  enum class kind { shared_instance, referenced_layer, duplicate_name, unfoldable_batch_norm,
                    shape_mismatch } what;
  std::string message;
};

namespace detail {
// Names of the leaves held through std::ref anywhere in the model.
template <class Node>
void referenced_leaves(Node& node, std::vector<std::string>& out) {
  if constexpr (nn::is_reference_v<Node>) {
    nn::visit_layers(node.get(), [&](const std::string& name, auto&) { out.push_back(name); });
  } else if constexpr (nn::is_named_v<Node>) {
    referenced_leaves(node.layer(), out);
  } else if constexpr (nn::is_sequential_v<Node>) {
    std::apply([&](auto&... child) { (referenced_leaves(child, out), ...); }, node.children());
  } else if constexpr (nn::is_residual_v<Node>) {
    referenced_leaves(node.body(), out);
  }
}
}  // namespace detail

/// Lists every problem (empty when the model is fine). Runs one inference-mode forward pass on
/// `example_input` to check shapes. Unfoldable batch norms are problems only when
/// `fold_batch_norms` (QuantSim's default; a simulation that keeps batch norms live runs them).
template <class Model>
std::vector<model_issue> find_model_issues(Model& model, const tensor& example_input,
                                           bool fold_batch_norms = true) {
  std::vector<model_issue> issues;

  // std::ref lets one layer object appear twice; each appearance would need its own quantizers.
  std::map<const void*, std::vector<std::size_t>> seen;
  std::vector<std::string> labels;
  nn::visit_layers(model, [&](const std::string& name, auto& leaf) {
    seen[&leaf].push_back(labels.size());
    labels.push_back(nn::layer_label(leaf) + " (position " + std::to_string(labels.size()) +
                     ", named '" + name + "')");
  });
  for (const auto& [ptr, positions] : seen) {
    if (positions.size() < 2) continue;
    std::ostringstream os;
    os << "layer instance used " << positions.size() << " times:";
    for (auto p : positions) os << " " << labels[p] << ";";
    os << " give each use its own layer object";
    issues.push_back({model_issue::kind::shared_instance, os.str()});
  }

  // QuantSim (and every pass that copies a model) copies a std::ref as a reference: the copy
  // would fold and quantize the caller's own layer.
  std::vector<std::string> referenced;
  detail::referenced_leaves(model, referenced);
  if (!referenced.empty()) {
    std::ostringstream os;
    os << "layers held by std::ref cannot be simulated (QuantSim works on a copy of the model "
          "and would change the referenced layer itself):";
    for (const auto& n : referenced) os << " '" << n << "'";
    issues.push_back({model_issue::kind::referenced_layer, os.str()});
  }

  // Names key quantizers and files: each must be unique, and "input" names the model input.
  std::map<std::string, std::size_t> name_count;
  nn::visit_layers(model, [&](const std::string& name, auto&) { ++name_count[name]; });
  for (const auto& [name, count] : name_count) {
    if (count > 1)
      issues.push_back({model_issue::kind::duplicate_name,
                        "layer name '" + name + "' is used by " + std::to_string(count) +
                            " layers; give each a unique name (named(...))"});
    if (name == "input" || name.empty())
      issues.push_back({model_issue::kind::duplicate_name,
                        "layer name '" + name + "' is reserved (\"input\" is the model input; "
                        "the model's root must be a sequential)"});
  }

  if (fold_batch_norms)
    for (const auto& bn : nn::unfoldable_batch_norms(model))
      issues.push_back({model_issue::kind::unfoldable_batch_norm,
                      "BatchNormalization '" + bn +
                          "' cannot be folded: it does not directly follow a Conv or Gemm in "
                          "the same sequential"});

  nn::set_training(model, false);
  try {
    (void)nn::forward(model, example_input);
  } catch (const shape_error& e) {
    issues.push_back({model_issue::kind::shape_mismatch,
                      "example input of shape " + shape_string(example_input.shape()) +
                          " does not fit the model: " + e.what()});
  }
  return issues;
}

/// Throws config_error (shared or referenced layer, duplicate name, unfoldable batch norm) or
/// shape_error (only shape problems) listing every problem find_model_issues reports.
template <class Model>
void validate_model(Model& model, const tensor& example_input, bool fold_batch_norms = true) {
  const auto issues = find_model_issues(model, example_input, fold_batch_norms);
  if (issues.empty()) return;
  std::ostringstream os;
  os << "model validation found " << issues.size() << " problem(s):";
  bool only_shapes = true;
  for (const auto& i : issues) {
    os << "\n  - " << i.message;
    only_shapes = only_shapes && i.what == model_issue::kind::shape_mismatch;
  }
  if (only_shapes) throw shape_error(os.str());
  throw config_error(os.str());
}

}  // namespace qkit::sim
