// qkit/analysis/auto_quant_mixed_precision.hpp — AIMET's AutoQuant with AMP in one call:
// ptq::auto_quant's flow, then automatic mixed precision (mixed_precision.hpp) on the
// simulation it chose, measured against the caller's FP32 model (docs/mixed_precision.md).
#pragma once

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "../data/dataset.hpp"
#include "../nn/graph.hpp"
#include "../ptq/auto_quant.hpp"
#include "../sim/calibrate.hpp"
#include "mixed_precision.hpp"

namespace qkit::analysis {

/// AutoQuant, then automatic mixed precision on its result.
template <class Model, class Preset>
struct auto_quant_amp_result {
  /// AutoQuant's result; its `sim` carries the mixture AMP chose (every encoding frozen).
  ptq::auto_quant_result<Model, Preset> auto_quant;
  /// Empty when AutoQuant returned no simulation (even float weights missed its target).
  std::optional<amp_result> mixed_precision;
  std::filesystem::path encodings;  ///< the chosen mixture's encodings (results_dir/mixed_precision/)
};

/// AIMET's AutoQuant with AMP: auto_quant<Preset> as above, then choose_mixed_precision on the
/// simulation it chose, with `candidates`, phase 1 by SQNR on `calibration` and phase 2 by
/// `evaluate`. The AMP inputs are checked before AutoQuant starts. AMP's files go to
/// options.results_dir / "mixed_precision" (amp.results_dir is replaced), with the
/// chosen mixture's encodings as model.encodings. Quantizers AMP leaves at Preset's precision
/// keep AutoQuant's encodings (its range method's, AdaRound's weights); at any other precision
/// activations take min-max ranges from `calibration` and weights min-max ranges of the
/// (AdaRound-rounded) weights.
template <class Preset, class Model, class Evaluate>
auto_quant_amp_result<Model, Preset> auto_quant_mixed_precision(const Model& model, const tensor& example_input,
                                                                 const data::dataset& calibration, Evaluate&& evaluate,
                                                                 const ptq::auto_quant_options& options,
                                                                 std::vector<amp_candidate> candidates,
                                                                 amp_options amp = {}) {
  (void)check_amp_inputs(candidates, amp);
  amp.results_dir = options.results_dir / "mixed_precision";
  if (!amp.log) amp.log = options.log;
  amp.verbose = amp.verbose && options.verbose;
  // AMP measures against the caller's FP32 model: AutoQuant's weights are rescaled (CLE) or
  // rounded (AdaRound), so the simulation with its quantizers off is no longer it.
  amp.fp32_forward = [&model](const tensor& x) {
    Model m = model;
    return nn::forward(m, x);
  };
  auto_quant_amp_result<Model, Preset> out{ptq::auto_quant<Preset>(model, example_input, calibration, evaluate, options), {}, {}};
  auto& r = out.auto_quant;
  if (!r.sim) return out;
  auto& sim = *r.sim;
  amp.fp32_score = r.fp32;
  // AMP recomputes encodings at other precisions from calibration statistics, which the frozen
  // result does not have: gather them with AutoQuant's encodings set aside, then put those back.
  // The weights stay in float meanwhile: ranges seen through Preset's coarse weights would clip
  // the activations of the higher precisions (at W4 by enough to cost a 16-bit baseline most of
  // its accuracy), and at Preset's own precision AutoQuant's encodings are kept anyway.
  std::map<std::string, std::vector<encoding>> acts;
  std::vector<std::string> params;
  sim.for_each_quantizer([&](const std::string& n, quantizer_kind k, auto& q) {
    if (!q.enabled()) return;
    if (k == quantizer_kind::param) {
      params.push_back(n);
      q.set_enabled(false);
    } else if (q.frozen()) {
      acts[n] = q.encodings();
      q.unfreeze();
    }
  });
  calibrate(sim, calibration, std::min(options.calibration_samples, calibration.size()));
  sim.for_each_quantizer([&](const std::string& n, quantizer_kind k, auto& q) {
    if (k == quantizer_kind::param && std::find(params.begin(), params.end(), n) != params.end()) q.set_enabled(true);
  });
  for (const auto& [n, e] : acts) sim.set_and_freeze_encodings(n, e);
  out.mixed_precision = choose_mixed_precision(sim, example_input, candidates, evaluate, &calibration, amp);
  sim.for_each_quantizer([](const std::string&, quantizer_kind, auto& q) {
    if (q.enabled() && q.has_encodings()) q.freeze();
  });
  out.encodings = amp.results_dir / "model.encodings";
  sim.export_encodings(out.encodings);
  return out;
}

}  // namespace qkit::analysis
