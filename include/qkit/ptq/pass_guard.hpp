// qkit/ptq/pass_guard.hpp — what makes a PTQ pass all-or-nothing: every pass that changes a
// simulation's weights, biases or quantizers runs inside all_or_nothing, which puts all of them
// back when the pass throws half way (bad data at layer 7, a layer it cannot handle), so the
// caller's simulation is either fully repaired or exactly as it was. Also the other things
// every per-layer pass asks first: which conv/linear layers it works on, and whether the
// simulation still needs encodings.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "../nn/dataflow.hpp"
#include "../nn/weighted_layer.hpp"
#include "../sim/quantsim.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::ptq::detail {

/// The conv/linear layers a pass works on, in forward order, without `ignore` (which go to
/// `skipped`); a name in `ignore` that is not a conv/linear layer is a config_error.
template <class Sim>
std::vector<const nn::dataflow_node*> correctable_layers(Sim& sim,
                                                         const std::vector<std::string>& ignore,
                                                         std::vector<std::string>& skipped,
                                                         const char* pass) {
  for (const auto& name : ignore)  // config_error on an unknown name
    QKIT_PRECONDITION(sim.node(name).weighted, config_error, pass, ": '", name,
                      "' in layers_to_ignore is a ", nn::to_string(sim.node(name).kind),
                      ", not a conv or linear layer");
  std::vector<const nn::dataflow_node*> out;
  for (const auto& n : sim.dataflow().nodes) {
    if (!n.weighted) continue;
    if (std::find(ignore.begin(), ignore.end(), n.name) != ignore.end()) skipped.push_back(n.name);
    else out.push_back(&n);
  }
  return out;
}

// Whether any enabled integer quantizer (of the parameters only, if asked) lacks encodings.
template <class Sim>
bool needs_calibration(Sim& sim, bool params_only = false) {
  bool missing = false;
  sim.for_each_quantizer([&](const std::string&, quantizer_kind kind, const auto& q) {
    if (params_only && kind != quantizer_kind::param) return;
    if (q.enabled() && q.settings().dtype == dtype::integer && q.bitwidth() < 32 &&
        !q.has_encodings())
      missing = true;
  });
  return missing;
}

/// Weights and biases of every conv/linear layer of a simulation, to put back.
struct parameter_backup {
  struct entry {
    nn::weighted_layer* layer;
    bool had_bias;
    tensor weight, bias;
  };
  std::vector<entry> saved;

  template <class Sim>
  explicit parameter_backup(Sim& sim) {
    for (const auto& n : sim.dataflow().nodes)
      if (n.weighted)
        saved.push_back({n.weighted, n.weighted->has_bias(), n.weighted->weight(),
                         n.weighted->bias()});
  }
  void restore() {
    for (auto& e : saved) {
      e.layer->weight() = e.weight;
      if (!e.had_bias) e.layer->drop_bias();  // a bias the pass added
      else e.layer->bias() = e.bias;
    }
  }
};

/// Runs f with every quantizer of `sim` off (the FP32 model), then puts the quantizers back,
/// also when f throws. Returns what f returns.
template <class Sim, class F>
decltype(auto) with_quantizers_off(Sim& sim, F&& f) {
  const auto state = sim.snapshot();
  sim.set_all_enabled(false);
  struct restorer {
    Sim& sim;
    const decltype(state)& s;
    ~restorer() { sim.restore(s); }
  } put_back{sim, state};
  return std::forward<F>(f)();
}

/// Turns every activation quantizer (the model input's too) off, as AdaRound and Sequential
/// MSE run; restore() turns each back to what it was.
template <class Sim>
class activations_off {
 public:
  explicit activations_off(Sim& sim) : sim_(sim) {
    sim.for_each_quantizer([&](const std::string& name, quantizer_kind kind, auto& q) {
      if (kind == quantizer_kind::param) return;
      saved_.emplace_back(name, q.enabled());
      q.set_enabled(false);
    });
  }
  void restore() {
    for (const auto& [name, on] : saved_) sim_.set_enabled(name, on);
  }

 private:
  Sim& sim_;
  std::vector<std::pair<std::string, bool>> saved_;
};

/// Runs f; if it throws, every weight, bias and quantizer of `sim` is put back first.
template <class Sim, class F>
void all_or_nothing(Sim& sim, F&& f) {
  const auto state = sim.snapshot();
  parameter_backup backup(sim);
  try {
    std::forward<F>(f)();
  } catch (...) {
    backup.restore();
    sim.restore(state);
    throw;
  }
}

}  // namespace qkit::ptq::detail
