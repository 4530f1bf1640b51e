// qkit/nn/weights_file.hpp — a model's parameters and batch-norm running statistics saved to
// and loaded from .npz, keyed by their full names ("features.3.weight"), so numpy reads them,
// a PyTorch state_dict saved with np.savez loads, and a file from another model is caught:
// load reports every missing, unexpected, mis-shaped and mis-typed name at once.
#pragma once

#include <filesystem>
#include <map>
#include <set>
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

namespace detail {

/// One array offered to load_state_dict, from either input type.
struct offered_state {
  const std::string* name;
  const tensor* values;
  bool floating;
  std::string dtype;  // numpy's name, for messages
};

template <class Model>
void load_offered_state(Model& model, const std::vector<offered_state>& offered,
                        const std::string& source) {
  std::map<std::string, const offered_state*> given;
  std::vector<std::string> duplicated;
  for (const auto& o : offered)
    if (!given.emplace(*o.name, &o).second) duplicated.push_back(*o.name);
  // qkit's batch norm keeps no step counter, so PyTorch's "<bn>.num_batches_tracked" has
  // nowhere to go; it is skipped only under a batch norm's own name, so that a counter from
  // another architecture still shows up as unexpected.
  std::set<std::string> batch_norms;
  visit_layers(model, [&](const std::string& name, auto& leaf) {
    if (kind_of(leaf) == op_kind::batch_norm) batch_norms.insert(name);
  });
  std::vector<std::string> missing, misshaped, mistyped;
  std::map<std::string, tensor*> targets;
  for_each_parameter(model, [&](const std::string& name, tensor& value, tensor*) {
    auto it = given.find(name);
    if (it == given.end()) {
      missing.push_back(name);
      return;
    }
    const offered_state& o = *it->second;
    if (!o.floating)
      mistyped.push_back(name + " (file " + o.dtype + ", model float32)");
    else if (o.values->shape() != value.shape())
      misshaped.push_back(name + " (file " + shape_string(o.values->shape()) + ", model " +
                          shape_string(value.shape()) + ")");
    targets.emplace(name, &value);
    given.erase(it);
  });
  std::vector<std::string> unexpected;
  for (const auto& [n, o] : given) {
    constexpr std::string_view counter = "num_batches_tracked";
    const std::size_t dot = n.rfind('.');
    const std::string layer = dot == std::string::npos ? "" : n.substr(0, dot);
    const std::string_view leaf =
        dot == std::string::npos ? std::string_view(n) : std::string_view(n).substr(dot + 1);
    if (!o->floating && leaf == counter && batch_norms.count(layer)) continue;
    unexpected.push_back(n);
  }
  if (!missing.empty() || !unexpected.empty() || !misshaped.empty() || !mistyped.empty() ||
      !duplicated.empty()) {
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
    list("missing", missing);
    list("unexpected", unexpected);
    list("mis-shaped", misshaped);
    list("not floating-point", mistyped);
    list("given twice", duplicated);
    msg.pop_back();
    QKIT_THROW(format_error, msg);
  }
  for (const auto& o : offered) {
    auto it = targets.find(*o.name);
    if (it != targets.end()) *it->second = *o.values;
  }
}

}  // namespace detail

/// Sets the model's parameters from `arrays` (all taken as float32). Throws format_error
/// (naming `source`) listing all missing, unexpected and mis-shaped names; the model is
/// unchanged then.
template <class Model>
void load_state_dict(Model& model, const io::npz_arrays& arrays,
                     const std::string& source = "state dict") {
  std::vector<detail::offered_state> offered;
  offered.reserve(arrays.size());
  for (const auto& [name, t] : arrays) offered.push_back({&name, &t, true, "float32"});
  detail::load_offered_state(model, offered, source);
}

/// Sets the model's parameters from typed entries (io::load_npz_entries), as from a PyTorch
/// state_dict saved with np.savez: float16/64 entries are converted to float32; an integer
/// or bool entry named like a parameter is an error; "<bn>.num_batches_tracked" of a batch
/// norm in the model is skipped (qkit keeps no such counter). Throws format_error (naming
/// `source`) listing all missing, unexpected, mis-shaped and non-float names; the model is
/// unchanged then.
template <class Model>
void load_state_dict(Model& model, const io::npz_entries& entries,
                     const std::string& source = "state dict") {
  std::vector<detail::offered_state> offered;
  offered.reserve(entries.size());
  for (const auto& e : entries)
    offered.push_back({&e.name, &e.values, e.dtype.is_floating(), e.dtype.name()});
  detail::load_offered_state(model, offered, source);
}

/// Loads weights written by save_weights, or by numpy's np.savez with the same names (a
/// PyTorch state_dict included; see the load_state_dict overload for io::npz_entries).
template <class Model>
void load_weights(Model& model, const std::filesystem::path& path) {
  load_state_dict(model, io::load_npz_entries(path), "weights file '" + path.string() + "'");
}

}  // namespace qkit::nn
