// examples/models/qat_pipeline.hpp — quantization-aware training of the trained Fashion-MNIST
// model, shared by the example (`fashion_mnist --qat`, the table of docs/qat.md) and the
// Fashion test suite (the same runs with fewer steps): min-max PTQ encodings from the 2,000
// calibration images, then QAT in the loop (regular or range learning) with Adam on the 60,000
// training images, flip + shift augmented as the model was trained; with batch norms live, BN
// re-estimation and folding to scale after.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>

#include <qkit/data/dataset.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/nn/fit.hpp>
#include <qkit/qat/batch_norm.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "fashion_mobilenet.hpp"
#include "ptq_pipeline.hpp"

namespace fashion {

struct qat_settings {
  qkit::qat_mode mode = qkit::qat_mode::regular;
  std::size_t steps = 938;    ///< batches of 64 (938 are one epoch of the 60,000 images)
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
  // About `steps` batches in all, as epochs of equal length (fit caps the batches per epoch, so
  // a single epoch would stop at 938 whatever `steps` says).
  const std::size_t per_epoch = (train.size() + o.batch_size - 1) / o.batch_size;
  o.epochs = std::max<std::size_t>(1, (s.steps + per_epoch - 1) / per_epoch);
  o.max_steps_per_epoch = (s.steps + o.epochs - 1) / o.epochs;
  o.lr = {.base = s.lr};
  o.encoding_lr = s.encoding_lr;
  o.augment = {.max_shift = 2, .flip = true, .fill = (0.0f - pixel_mean) / pixel_std};
  const auto t0 = std::chrono::steady_clock::now();
  (void)qkit::nn::fit(sim, opt, train, o);
  // Batch norms live during QAT (a sim built with batch_norm_mode::keep, AIMET's flow for range
  // learning with per-channel weights): their running statistics are re-estimated on the
  // quantized model, then they fold into the layers' weights and weight grids, as deployed.
  if (sim.options().batch_norms == qkit::batch_norm_mode::keep) {
    (void)qkit::qat::reestimate_bn_stats(sim, train);
    (void)qkit::qat::fold_all_batch_norms_to_scale(sim);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.qat = qkit::nn::evaluate(sim, test);
  return r;
}

/// The table of docs/qat.md: PTQ only vs regular QAT vs range learning at W8A8, W4A8, W4A4 and
/// W8A4 (per-tensor weights — also after cross-layer equalization at 4-bit weights — and W4A4
/// per-channel, also with batch norms live), `steps` batches each.
template <class Model>
void qat_table(const Model& model, const qkit::data::dataset& train,
               const qkit::data::dataset& test, std::size_t steps) {
  const qkit::data::dataset calib = repair_calibration_set(train);
  std::printf("\nQuantization-aware training (PTQ encodings from 2,000 training images, then %zu "
              "batches of 64 with Adam, lr 1e-3 cosine)\n%-36s %9s %9s %9s\n",
              steps, "precision, mode", "PTQ", "QAT", "time");
  auto row = [&](auto preset, qkit::qat_mode mode, bool cle = false, bool live_bn = false) {
    using P = decltype(preset);
    Model m = model;
    const qkit::tensor example = qkit::data::first(test, 1).samples();
    if (cle) (void)qkit::ptq::equalize(m, example);
    qkit::quantsim_options so;
    if (live_bn) so.batch_norms = qkit::batch_norm_mode::keep;
    qkit::quantsim<Model, P> sim(m, example, P::default_config(), {}, {}, so);
    qat_settings s;
    s.mode = mode;
    s.steps = steps;
    const auto r = quantization_aware_training(sim, calib, train, test, s);
    const std::string how = cle ? ", after CLE" : live_bn ? ", BN live" : "";
    std::printf("%-36s %8.2f%% %8.2f%% %7.1f s\n", (r.label + how).c_str(),
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
    row(w4a4_pc{}, mode, false, true);
  }
}

}  // namespace fashion
