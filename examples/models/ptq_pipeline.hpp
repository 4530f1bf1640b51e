// examples/models/ptq_pipeline.hpp — the repair stage of the Fashion-MNIST example, shared with
// the tests: simulate the trained model at one precision after cross-layer equalization and/or
// bias correction (AIMET's defaults: encodings from 2,000 training images, correction over 512),
// measure test accuracy, and export the repaired simulation like any other precision.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <qkit/ptq/adaround.hpp>
#include <qkit/ptq/bias_correction.hpp>
#include <qkit/ptq/cross_layer_equalization.hpp>
#include <qkit/ptq/sequential_mse.hpp>

#include "quantize_pipeline.hpp"

namespace fashion {

/// The repair stage's calibration set: 2,000 training images (AIMET's default) in the seeded
/// order of calibration_set, whose 1,000 images are its first half.
inline qkit::data::dataset repair_calibration_set(const qkit::data::dataset& train) {
  return qkit::data::random_subset(train, 2000, 2024);
}

/// Which PTQ passes run before the simulation is evaluated.
struct repair {
  bool cle = false, bias_correction = false;
  qkit::ptq::relu6_policy relu6 = qkit::ptq::relu6_policy::replace_with_relu;
  /// Learned weight rounding after CLE (AIMET's advice: not together with bias correction).
  bool adaround = false;
  /// Sequential MSE weight ranges after CLE.
  bool sequential_mse = false;

  /// "none", "CLE", "bias correction", "CLE + bias correction", "CLE + AdaRound", "Sequential
  /// MSE", ... (+ " (ReLU6 kept)").
  std::string label() const {
    std::vector<std::string> parts;
    if (cle) parts.push_back("CLE");
    if (bias_correction) parts.push_back("bias correction");
    if (adaround) parts.push_back("AdaRound");
    if (sequential_mse) parts.push_back("Sequential MSE");
    std::string l = parts.empty() ? "none" : parts[0];
    for (std::size_t i = 1; i < parts.size(); ++i) l += " + " + parts[i];
    if (cle && relu6 == qkit::ptq::relu6_policy::keep) l += " (ReLU6 kept)";
    return l;
  }
};

struct repair_settings {
  std::size_t calibration_samples = 2000;  ///< AIMET's num_quant_samples
  std::size_t correction_samples = 512;    ///< AIMET's num_bias_correct_samples
  /// AdaRound: samples cached per layer and steps per layer (0: AIMET's 10,000 / 15,000).
  std::size_t adaround_samples = 1000, adaround_iterations = 0;
  /// Sequential MSE: batches of 32 scored per candidate, and candidates per channel.
  std::size_t seq_mse_batches = 20, seq_mse_candidates = 20;
  bool verbose = false;  ///< print what CLE did and the passes' progress
};

/// Test accuracy of `model` simulated at Preset (min-max ranges) after `r`, calibrated on the
/// first settings.calibration_samples of `calib`; if `out` is not empty the repaired
/// simulation's encodings, folded weights and ONNX model go to out/<preset>_<repair>/.
template <class Preset, class Model>
precision_result simulate_repaired(const Model& model, const repair& r,
                                   const qkit::data::dataset& calib,
                                   const qkit::data::dataset& test,
                                   const repair_settings& settings = {},
                                   const std::filesystem::path& out = {}) {
  precision_result res;
  res.label = Preset::label() + ", " + r.label();
  Model m = model;
  const qkit::tensor example = qkit::data::first(calib, 1).samples();
  const auto t0 = std::chrono::steady_clock::now();
  if (r.cle) {
    const auto report = qkit::ptq::equalize(m, example, {.relu6 = r.relu6});
    if (settings.verbose) std::printf("%s", report.summary().c_str());
  }
  qkit::quantsim<Model, Preset> sim(m, example);
  if (r.bias_correction) {
    qkit::ptq::bias_correction_options o;
    o.samples = settings.correction_samples;
    o.calibration_samples = settings.calibration_samples;
    if (settings.verbose)
      o.progress = [](const qkit::ptq::bias_correction_progress& p) {
        std::printf("  bias correction %zu/%zu: %s\n", p.index + 1, p.total, p.layer.c_str());
        std::fflush(stdout);
      };
    (void)qkit::ptq::correct_bias(sim, calib, o);
  } else if (r.adaround) {
    qkit::ptq::adaround_options o;
    o.samples = settings.adaround_samples;
    o.iterations = settings.adaround_iterations;
    o.calibration_samples = settings.calibration_samples;
    o.verbose = true;  // minutes per row: a progress line per layer on stderr
    const auto report = qkit::ptq::adaround(sim, calib, o);
    if (settings.verbose) std::printf("%s", report.summary().c_str());
  } else if (r.sequential_mse) {
    qkit::ptq::sequential_mse_options o;
    o.num_batches = settings.seq_mse_batches;
    o.num_candidates = settings.seq_mse_candidates;
    o.calibration_samples = settings.calibration_samples;
    const auto report = qkit::ptq::apply_sequential_mse(sim, calib, o);
    if (settings.verbose) std::printf("%s", report.summary().c_str());
  } else {
    qkit::calibrate(sim, calib, settings.calibration_samples);
  }
  res.calibration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  res.accuracy = qkit::nn::evaluate(sim, test);
  if (!out.empty()) {
    std::string folder = folder_name(Preset::label());
    if (r.cle) folder += "_cle";
    if (r.bias_correction) folder += "_bc";
    if (r.adaround) folder += "_adaround";
    if (r.sequential_mse) folder += "_seqmse";
    res.exported = out / folder;
    export_simulation(sim, res.exported);
  }
  return res;
}

/// The example's repair table: W4A8 per-tensor (which collapses without help) and W8A8
/// per-tensor, each with no repair and with CLE + bias correction; the repaired simulations are
/// exported to out/<precision>_cle_bc/.
template <class Model>
void repair_table(const Model& model, const qkit::data::dataset& train,
                  const qkit::data::dataset& test, const std::filesystem::path& out) {
  namespace p = qkit::presets;
  const qkit::data::dataset calib = repair_calibration_set(train);
  std::printf("\nPTQ repair (per-tensor weights; encodings from 2,000 training images, bias "
              "correction over 512)\n%-36s %10s %10s\n", "precision, repair", "accuracy", "time");
  auto row = [&](auto preset, const repair& r, bool export_it, bool verbose) {
    repair_settings s;
    s.verbose = verbose;
    const auto res = simulate_repaired<decltype(preset)>(model, r, calib, test, s,
                                                          export_it ? out : std::filesystem::path{});
    std::printf("%-36s %9.2f%% %8.2f s\n", res.label.c_str(), 100.0 * res.accuracy,
                res.calibration_seconds);
    std::fflush(stdout);
  };
  row(p::w4a8{}, {}, false, false);
  row(p::w4a8{}, {.cle = true, .bias_correction = true}, true, true);
  row(p::w8a8{}, {}, false, false);
  row(p::w8a8{}, {.cle = true, .bias_correction = true}, true, false);
  std::printf("repaired encodings, weights and ONNX models written to %s/<precision>_cle_bc/\n",
              out.string().c_str());
}

/// The example's learned-rounding table (--adaround): AdaRound at AIMET's defaults (or
/// `iterations` steps per layer) and Sequential MSE, against no repair, at W8A8 and W4A8
/// per-tensor and W4A8/W3A8/W2A8 per-channel. Each row is exported to
/// out/<precision>_<repair>/.
template <class Model>
void adaround_table(const Model& model, const qkit::data::dataset& train,
                    const qkit::data::dataset& test, const std::filesystem::path& out,
                    std::size_t iterations = 0) {
  namespace p = qkit::presets;
  using w3a8_pc = qkit::sim_preset<3, 8, true>;
  using w2a8_pc = qkit::sim_preset<2, 8, true>;
  const qkit::data::dataset calib = repair_calibration_set(train);
  std::printf("\nLearned rounding and ranges (encodings from 2,000 training images; AdaRound: "
              "1,000 cached, %s steps per layer; Sequential MSE: 20 batches of 32, 20 candidates)\n"
              "%-44s %10s %10s\n",
              iterations ? std::to_string(iterations).c_str() : "AIMET's default",
              "precision, repair", "accuracy", "time");
  auto row = [&](auto preset, const repair& r) {
    repair_settings s;
    s.adaround_iterations = iterations;
    const bool learned = r.adaround || r.sequential_mse;
    const auto res = simulate_repaired<decltype(preset)>(model, r, calib, test, s,
                                                          learned ? out : std::filesystem::path{});
    std::printf("%-44s %9.2f%% %8.1f s\n", res.label.c_str(), 100.0 * res.accuracy,
                res.calibration_seconds);
    std::fflush(stdout);
  };
  row(p::w8a8{}, {});
  row(p::w8a8{}, {.adaround = true});
  row(p::w4a8{}, {});
  row(p::w4a8{}, {.cle = true});
  row(p::w4a8{}, {.cle = true, .adaround = true});
  row(p::w4a8_per_channel{}, {});
  row(p::w4a8_per_channel{}, {.adaround = true});
  row(p::w4a8_per_channel{}, {.sequential_mse = true});
  row(w3a8_pc{}, {});
  row(w3a8_pc{}, {.adaround = true});
  row(w3a8_pc{}, {.sequential_mse = true});
  row(w2a8_pc{}, {});
  row(w2a8_pc{}, {.adaround = true});
  row(w2a8_pc{}, {.sequential_mse = true});
  std::printf("rounded simulations written to %s/<precision>_adaround/ and _seqmse/\n",
              out.string().c_str());
}

}  // namespace fashion
