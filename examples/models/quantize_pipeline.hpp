// examples/models/quantize_pipeline.hpp — the quantization stage of the Fashion-MNIST example,
// shared with the tests and benchmarks: simulate the trained model at one precision preset,
// calibrate on training images, measure test accuracy, and export encodings, weights and ONNX.
#pragma once

#include <chrono>
#include <cstdio>
#include <cstddef>
#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include <qkit/sim/quantsim.hpp>
#if defined(QKIT_WITH_ONNX)
#include <qkit/sim/quantsim_export.hpp>
#endif

#include "training.hpp"

namespace fashion {

/// The first `count` images of a fixed seeded shuffle of `images`: the calibration set.
inline qkit::tensor calibration_images(const qkit::tensor& images, std::size_t count,
                                       std::uint32_t seed = 2024) {
  std::vector<std::size_t> idx(images.shape(0));
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  std::mt19937 rng(seed);
  std::shuffle(idx.begin(), idx.end(), rng);
  return gather_batch(images, idx, 0, std::min(count, idx.size()));
}

/// Calibrates `sim` on `calib` in batches of `batch_size` (AIMET-style forward callback).
template <class Sim>
void calibrate(Sim& sim, const qkit::tensor& calib, std::size_t batch_size = 100) {
  std::vector<std::size_t> idx(calib.shape(0));
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  sim.compute_encodings([&](Sim& s) {
    for (std::size_t b = 0; b < idx.size(); b += batch_size)
      (void)s.forward(gather_batch(calib, idx, b, std::min(idx.size(), b + batch_size)));
  });
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

/// Simulates `model` at Preset: calibrate on `calib`, evaluate on the test set, and (if
/// `out` is not empty) write encodings (AIMET 1.0.0 and 0.6.1), the folded weights and the
/// ONNX QDQ model into out/<preset>/.
template <class Preset, class Model, class Labels>
precision_result simulate_precision(const Model& model, const qkit::tensor& calib,
                                    const qkit::tensor& test_images, const Labels& test_labels,
                                    const std::filesystem::path& out = {}) {
  precision_result r;
  r.label = Preset::label();
  const std::vector<std::size_t> first{0};
  qkit::quantsim<Model, Preset> sim(model, gather_batch(calib, first, 0, 1));
  const auto t0 = std::chrono::steady_clock::now();
  calibrate(sim, calib);
  r.calibration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.accuracy = accuracy_of([&](const qkit::tensor& x) { return sim.forward(x); }, test_images,
                           test_labels);
  if (!out.empty()) {
    r.exported = out / folder_name(r.label);
    std::filesystem::create_directories(r.exported);
    sim.export_encodings(r.exported / "encodings.json", qkit::io::format_version::v1_0_0);
    sim.export_encodings(r.exported / "encodings_0.6.1.json", qkit::io::format_version::v0_6_1);
    sim.save_weights(r.exported / "weights.npz");
#if defined(QKIT_WITH_ONNX)
    qkit::export_onnx(sim, r.exported / "model.onnx");
#endif
  }
  return r;
}

/// The example's table: QuantSim at FP32, W16A16, W8A16, W8A8, W4A8 (per-tensor and
/// per-channel weights) and FP16, calibrated on 1,000 training images, with test accuracy per
/// precision; each precision's encodings, weights and ONNX model go to out/<precision>/.
template <class Model, class Labels>
std::vector<precision_result> precision_table(const Model& model, const qkit::tensor& train_images,
                                              const qkit::tensor& test_images,
                                              const Labels& test_labels,
                                              const std::filesystem::path& out) {
  namespace p = qkit::presets;
  const qkit::tensor calib = calibration_images(train_images, 1000);
  std::vector<precision_result> rows;
  std::printf("\n%-22s %10s %12s\n", "precision", "accuracy", "calibration");
  auto run = [&](auto preset) {
    rows.push_back(simulate_precision<decltype(preset)>(model, calib, test_images, test_labels, out));
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
