// examples/models/quantize_pipeline.hpp — the quantization stage of the Fashion-MNIST example,
// shared with the tests and benchmarks: simulate the trained model at one precision preset,
// calibrate on training images, measure test accuracy, and export encodings, weights and ONNX.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include <qkit/data/dataset.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>
#if defined(QKIT_WITH_ONNX)
#include <qkit/sim/quantsim_export.hpp>
#endif

namespace fashion {

/// The example's calibration set: 1,000 training images chosen at random with a fixed seed.
inline qkit::data::dataset calibration_set(const qkit::data::dataset& train) {
  return qkit::data::random_subset(train, 1000, 2024);
}

struct precision_result {
  std::string label;
  double accuracy = 0.0;
  double calibration_seconds = 0.0;
  std::filesystem::path exported;  ///< folder with this precision's files ("" if none)
};

/// "W8A8 per-channel" -> "w8a8_per_channel".
inline std::string folder_name(std::string label) {
  for (auto& c : label) c = c == ' ' || c == '-' ? '_' : char(std::tolower(c));
  return label;
}

/// Writes a calibrated simulation's encodings (AIMET 1.0.0 and 0.6.1), folded weights and ONNX
/// QDQ model (when built with ONNX) into `dir`.
template <class Sim>
void export_simulation(Sim& sim, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  sim.export_encodings(dir / "encodings.json", qkit::io::format_version::v1_0_0);
  sim.export_encodings(dir / "encodings_0.6.1.json", qkit::io::format_version::v0_6_1);
  sim.save_weights(dir / "weights.npz");
#if defined(QKIT_WITH_ONNX)
  qkit::export_onnx(sim, dir / "model.onnx");
#endif
}

/// Simulates `model` at Preset: calibrate on all of `calib` (batches of 100), evaluate on the
/// test set, and (if `out` is not empty) write encodings (AIMET 1.0.0 and 0.6.1), the folded
/// weights and the ONNX QDQ model into out/<preset>/.
template <class Preset, class Model>
precision_result simulate_precision(const Model& model, const qkit::data::dataset& calib,
                                    const qkit::data::dataset& test,
                                    const std::filesystem::path& out = {}) {
  precision_result r;
  r.label = Preset::label();
  qkit::quantsim<Model, Preset> sim(model, qkit::data::first(calib, 1).samples());
  const auto t0 = std::chrono::steady_clock::now();
  qkit::calibrate(sim, calib, calib.size());
  r.calibration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.accuracy = qkit::nn::evaluate(sim, test);
  if (!out.empty()) {
    r.exported = out / folder_name(r.label);
    export_simulation(sim, r.exported);
  }
  return r;
}

/// The example's table: QuantSim at FP32, W16A16, W8A16, W8A8, W4A8 (per-tensor and
/// per-channel weights) and FP16, calibrated on 1,000 training images, with test accuracy per
/// precision; each precision's encodings, weights and ONNX model go to out/<precision>/.
template <class Model>
std::vector<precision_result> precision_table(const Model& model, const qkit::data::dataset& train,
                                              const qkit::data::dataset& test,
                                              const std::filesystem::path& out) {
  namespace p = qkit::presets;
  const qkit::data::dataset calib = calibration_set(train);
  std::vector<precision_result> rows;
  std::printf("\n%-22s %10s %12s\n", "precision", "accuracy", "calibration");
  auto run = [&](auto preset) {
    rows.push_back(simulate_precision<decltype(preset)>(model, calib, test, out));
    const auto& r = rows.back();
    std::printf("%-22s %9.2f%% %10.2f s\n", r.label.c_str(), 100.0 * r.accuracy,
                r.calibration_seconds);
    std::fflush(stdout);
  };
  run(p::fp32{});
  run(p::w16a16{});
  run(p::w16a16_per_channel{});
  run(p::w8a16{});
  run(p::w8a16_per_channel{});
  run(p::w8a8{});
  run(p::w8a8_per_channel{});
  run(p::w4a8{});
  run(p::w4a8_per_channel{});
  run(p::fp16{});
  std::printf("\nencodings (AIMET 1.0.0 and 0.6.1), folded weights (.npz)%s written to %s/<precision>/\n",
#if defined(QKIT_WITH_ONNX)
              " and ONNX QDQ models",
#else
              " (ONNX export needs QKIT_WITH_ONNX)",
#endif
              out.string().c_str());
  return rows;
}

}  // namespace fashion
