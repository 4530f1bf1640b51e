// examples/models/qat_pipeline.hpp — quantization-aware training of the trained Fashion-MNIST
// model, shared by the example (`fashion_mnist --qat`, the table of docs/qat.md) and the
// Fashion test suite (the same runs with fewer steps): min-max PTQ encodings from the 2,000
// calibration images, then QAT in the loop (regular or range learning) with Adam on the 60,000
// training images, flip + shift augmented as the model was trained.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

#include <qkit/data/dataset.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/nn/fit.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "fashion_mobilenet.hpp"
#include "ptq_pipeline.hpp"

namespace fashion {

struct qat_settings {
  qkit::qat_mode mode = qkit::qat_mode::regular;
  std::size_t steps = 1000;   ///< batches of 64 (938 are one epoch)
  float lr = 1e-3f;           ///< Adam, cosine decay to 0 over the steps
  float encoding_lr = 1e-3f;  ///< range learning
};

struct qat_outcome {
  std::string label;
  double ptq = 0.0, qat = 0.0, seconds = 0.0;
};

inline const char* mode_name(qkit::qat_mode m) {
  return m == qkit::qat_mode::regular ? "regular" : "range learning";
}

/// PTQ encodings on `calib`, then QAT of `sim` on `train`; both accuracies on `test`.
template <class Sim>
qat_outcome quantization_aware_training(Sim& sim, const qkit::data::dataset& calib,
                                        const qkit::data::dataset& train,
                                        const qkit::data::dataset& test, const qat_settings& s) {
  qkit::calibrate(sim, calib, calib.size());
  qat_outcome r;
  r.label = Sim::preset::label() + ", " + mode_name(s.mode);
  r.ptq = qkit::nn::evaluate(sim, test);
  sim.set_qat_mode(s.mode);
  qkit::nn::adam opt({.lr = s.lr});
  qkit::nn::fit_options o;
  o.epochs = 1;
  o.max_steps_per_epoch = s.steps;
  o.lr = {.base = s.lr};
  o.encoding_lr = s.encoding_lr;
  o.augment = {.max_shift = 2, .flip = true, .fill = (0.0f - pixel_mean) / pixel_std};
  const auto t0 = std::chrono::steady_clock::now();
  (void)qkit::nn::fit(sim, opt, train, o);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.qat = qkit::nn::evaluate(sim, test);
  return r;
}

/// The table of docs/qat.md: PTQ only vs regular QAT vs range learning at W8A8, W4A8, W4A4 and
/// W8A4 (per-tensor weights — also after cross-layer equalization at 4-bit weights — and W4A4
/// per-channel), `steps` batches each.
template <class Model>
void qat_table(const Model& model, const qkit::data::dataset& train,
               const qkit::data::dataset& test, std::size_t steps) {
  const qkit::data::dataset calib = repair_calibration_set(train);
  std::printf("\nQuantization-aware training (PTQ encodings from 2,000 training images, then %zu "
              "batches of 64 with Adam, lr 1e-3 cosine)\n%-36s %9s %9s %9s\n",
              steps, "precision, mode", "PTQ", "QAT", "time");
  auto row = [&](auto preset, qkit::qat_mode mode, bool cle = false) {
    Model m = model;
    const qkit::tensor example = qkit::data::first(test, 1).samples();
    if (cle) (void)qkit::ptq::equalize(m, example);
    qkit::quantsim<Model, decltype(preset)> sim(m, example);
    qat_settings s;
    s.mode = mode;
    s.steps = steps;
    const auto r = quantization_aware_training(sim, calib, train, test, s);
    std::printf("%-36s %8.2f%% %8.2f%% %7.1f s\n", (r.label + (cle ? ", after CLE" : "")).c_str(),
                100 * r.ptq, 100 * r.qat, r.seconds);
    std::fflush(stdout);
  };
  using w4a4 = qkit::sim_preset<4, 4>;
  using w4a4_pc = qkit::sim_preset<4, 4, true>;
  using w8a4 = qkit::sim_preset<8, 4>;
  for (auto mode : {qkit::qat_mode::regular, qkit::qat_mode::range_learning}) {
    row(qkit::presets::w8a8{}, mode);
    row(qkit::presets::w4a8{}, mode);
    row(qkit::presets::w4a8{}, mode, true);
    row(w8a4{}, mode);
    row(w4a4{}, mode);
    row(w4a4{}, mode, true);
    row(w4a4_pc{}, mode);
  }
}

}  // namespace fashion
