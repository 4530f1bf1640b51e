// qkit/nn/weights_file.hpp — a model's parameters and batch-norm running statistics saved to
// and loaded from .npz, keyed by their full names ("features.3.weight"), so numpy reads them
// and a file from another model is caught: load reports every missing, unexpected and
// mis-shaped name at once.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "../io/npz.hpp"
#include "graph.hpp"

namespace qkit::nn {

/// Every parameter and running statistic of the model, by full name, in graph order.
template <class Model>
io::npz_arrays state_dict(Model& model) {
  io::npz_arrays out;
  for_each_parameter(model, [&](const std::string& name, tensor& value, tensor*) {
    out.emplace_back(name, value);
  });
  return out;
}

/// Writes state_dict(model) to `path` atomically.
template <class Model>
void save_weights(Model& model, const std::filesystem::path& path) {
  io::save_npz(path, state_dict(model));
}

/// Sets the model's parameters from `arrays`. Throws format_error (naming `source`) listing
/// all missing, unexpected and mis-shaped names; the model is unchanged then.
template <class Model>
void load_state_dict(Model& model, const io::npz_arrays& arrays,
                     const std::string& source = "state dict") {
  std::map<std::string, const tensor*> given;
  for (const auto& [name, t] : arrays) given.emplace(name, &t);
  std::vector<std::string> missing, misshaped;
  std::map<std::string, tensor*> targets;
  for_each_parameter(model, [&](const std::string& name, tensor& value, tensor*) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      return;
    }
    if (it->second->shape() != value.shape())
      misshaped.push_back(name + " (file " + shape_string(it->second->shape()) + ", model " +
                          shape_string(value.shape()) + ")");
    targets.emplace(name, &value);
    given.erase(it);
  });
  if (!missing.empty() || !given.empty() || !misshaped.empty()) {
    std::string msg = source + " does not match the model:";
    const auto list = [&](const char* what, const auto& names) {
      if (names.empty()) return;
      msg += std::string(" ") + what + ":";
      bool first = true;
      for (const auto& n : names) {
        msg += (first ? " " : ", ") + n;
        first = false;
      }
      msg += ";";
    };
    std::vector<std::string> unexpected;
    for (const auto& [n, t] : given) unexpected.push_back(n);
    list("missing", missing);
    list("unexpected", unexpected);
    list("mis-shaped", misshaped);
    msg.pop_back();
    QKIT_THROW(format_error, msg);
  }
  for (const auto& [name, t] : arrays) *targets.at(name) = t;
}

/// Loads weights written by save_weights (or numpy's np.savez with the same names).
template <class Model>
void load_weights(Model& model, const std::filesystem::path& path) {
  load_state_dict(model, io::load_npz(path), "weights file '" + path.string() + "'");
}

}  // namespace qkit::nn
