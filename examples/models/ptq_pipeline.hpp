// examples/models/ptq_pipeline.hpp — the repair stage of the Fashion-MNIST example, shared with
// the tests: simulate the trained model at one precision after cross-layer equalization and/or
// bias correction (AIMET's defaults: encodings from 2,000 training images, correction over 512),
// measure test accuracy, and export the repaired simulation like any other precision.
#pragma once

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include <qkit/ptq/bias_correction.hpp>
#include <qkit/ptq/cross_layer_equalization.hpp>

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

  /// "none", "CLE", "bias correction", "CLE + bias correction" (+ " (ReLU6 kept)").
  std::string label() const {
    std::string l = cle && bias_correction ? "CLE + bias correction"
                    : cle                  ? "CLE"
                    : bias_correction      ? "bias correction"
                                           : "none";
    if (cle && relu6 == qkit::ptq::relu6_policy::keep) l += " (ReLU6 kept)";
    return l;
  }
};

struct repair_settings {
  std::size_t calibration_samples = 2000;  ///< AIMET's num_quant_samples
  std::size_t correction_samples = 512;    ///< AIMET's num_bias_correct_samples
  bool verbose = false;                    ///< print what CLE did and bias correction's progress
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

}  // namespace fashion
