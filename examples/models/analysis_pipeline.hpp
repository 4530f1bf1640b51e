// examples/models/analysis_pipeline.hpp — QuantAnalyzer on the trained Fashion-MNIST model
// (`fashion_mnist --analyze`, the figures of docs/analysis.md): per-tensor W4A8, the precision
// whose PTQ result collapses (docs/ptq.md), calibrated with min-max on the 2,000 repair images,
// scored by top-1 on the test images; per-layer MSE on 256 training images. Prints what each
// analysis found and what it cost; the JSON files go to OUT/quant_analyzer/. debug_workflow runs
// the guidebook's debugging workflow at the same precision (`fashion_mnist --debug`).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <qkit/analysis/debug.hpp>
#include <qkit/analysis/quant_analyzer.hpp>
#include <qkit/data/dataset.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "ptq_pipeline.hpp"

namespace fashion {

template <class Model>
void analysis_table(const Model& model, const qkit::data::dataset& train,
                    const qkit::data::dataset& test, const std::filesystem::path& out) {
  using clock = std::chrono::steady_clock;
  const qkit::data::dataset calib = repair_calibration_set(train);
  qkit::quantsim<Model, qkit::presets::w4a8> sim(model, qkit::data::first(calib, 1).samples());
  qkit::calibrate(sim, calib, calib.size());
  qkit::analysis::quant_analyzer_options opt;
  opt.results_dir = out / "quant_analyzer";
  qkit::analysis::quant_analyzer<decltype(sim)> qa(
      sim, [&](auto& s) { return qkit::nn::evaluate(s, test); }, opt);
  std::printf("\nQuantAnalyzer, %s per-tensor, min-max, top-1 on %zu test images -> %s\n",
              decltype(sim)::preset::label().c_str(), test.size(), opt.results_dir.string().c_str());

  auto timed = [](auto&& f) {
    const auto t0 = clock::now();
    f();
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  qkit::analysis::sensitivity s;
  const double t_sens = timed([&] { s = qa.check_model_sensitivity_to_quantization(); });
  std::printf("  FP32 %.2f%%, weights only %.2f%%, activations only %.2f%%, all %.2f%% (%.1f s)\n",
              100 * s.fp32, 100 * s.weights_quantized, 100 * s.activations_quantized,
              100 * s.quantized, t_sens);

  qkit::analysis::per_layer_values en, dis, mse;
  const double t_en = timed([&] { en = qa.per_layer_quant_enabled(); });
  const double t_dis = timed([&] { dis = qa.per_layer_quant_disabled(); });
  const double t_mm = timed([&] { qa.export_per_layer_encoding_min_max_range(); });
  const double t_mse = timed([&] { mse = qa.per_layer_mse_loss(train); });

  std::printf("  %-28s %14s %14s %12s\n", "layer", "only it on", "all but it", "output MSE");
  for (std::size_t i = 0; i < en.size(); ++i) {
    double m = 0.0;
    for (const auto& [layer, v] : mse)
      if (layer == en[i].first) m = v;
    std::printf("  %-28s %13.2f%% %13.2f%% %12.3g\n", en[i].first.c_str(), 100 * en[i].second,
                100 * dis[i].second, m);
  }
  // The layers whose quantizers alone cost the most, and whose removal helps the most.
  auto worst = en;
  std::sort(worst.begin(), worst.end(), [](auto& a, auto& b) { return a.second < b.second; });
  auto best_off = dis;
  std::sort(best_off.begin(), best_off.end(), [](auto& a, auto& b) { return a.second > b.second; });
  std::printf("  most sensitive alone: %s (%.2f%%); quantizing all but %s: %.2f%%\n",
              worst.front().first.c_str(), 100 * worst.front().second,
              best_off.front().first.c_str(), 100 * best_off.front().second);
  for (const auto& c : qa.costs())
    std::printf("  cost of %-24s %3zu evaluations, %zu forward passes of its samples\n",
                c.analysis.c_str(), c.evaluations, c.forward_passes);
  std::printf("  time: sensitivity %.1f s, enabled %.1f s, disabled %.1f s, min-max %.2f s, "
              "MSE %.1f s\n", t_sens, t_en, t_dis, t_mm, t_mse);
}

/// The debugging workflow at W4A8 per-tensor with an allowed drop of 1%, scored on the test
/// images, calibrated on the 2,000 repair images (histograms and MSE on them too); AdaRound with
/// `adaround_iterations` steps per layer (0: AIMET's default). Prints the summary; the report and
/// the result files go to OUT/debug_quantization/.
template <class Model>
void debug_workflow(const Model& model, const qkit::data::dataset& train,
                    const qkit::data::dataset& test, const std::filesystem::path& out,
                    std::size_t adaround_iterations) {
  const qkit::data::dataset calib = repair_calibration_set(train);
  qkit::analysis::debug_options o;
  o.results_dir = out / "debug_quantization";
  o.allowed_drop = 0.01;
  o.adaround_options.iterations = adaround_iterations;
  o.adaround_options.verbose = true;  // minutes: a progress line per layer
  std::printf("\nDebugging workflow, W4A8 per-tensor, allowed drop 1%%, top-1 on %zu test images -> %s\n",
              test.size(), o.results_dir.string().c_str());
  const auto r = qkit::analysis::debug_quantization<qkit::presets::w4a8>(
      model, qkit::data::first(calib, 1).samples(), calib, calib,
      [&](auto& m) { return qkit::nn::evaluate(m, test); }, o);
  std::printf("%s", r.summary().c_str());
}

}  // namespace fashion
