// qkit/sim/model_validator.hpp — checks a model before QuantSim wraps it, so that problems
// surface as one clear error at construction instead of a wrong simulation later: a layer
// instance used twice (its quantizers would be shared by two places), a batch norm that cannot
// be folded, and an example input whose shape the model does not accept.
#pragma once

#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "../error.hpp"
#include "../nn/graph.hpp"
#include "../ptq/batch_norm_fold.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::sim {

/// One problem found by validate_model.
struct model_issue {
  enum class kind { shared_instance, unfoldable_batch_norm, shape_mismatch } what;
  std::string message;
};

/// Lists every problem (empty when the model is fine). Runs one inference-mode forward pass on
/// `example_input` to check shapes.
template <class Model>
std::vector<model_issue> find_model_issues(Model& model, const tensor& example_input) {
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

  for (const auto& bn : unfoldable_batch_norms(model))
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

/// Throws config_error (shared instance, unfoldable batch norm) or shape_error listing every
/// problem find_model_issues reports.
template <class Model>
void validate_model(Model& model, const tensor& example_input) {
  const auto issues = find_model_issues(model, example_input);
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
