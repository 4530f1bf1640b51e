// QAT cost on the Fashion-MNIST MobileNet: one training step (zero_grad, forward, softmax
// cross-entropy, backward, SGD step; batch 64) with QuantSim in the loop — regular QAT and range
// learning, W4A8 per-channel, batch norms folded or kept live — against the FP32 training step of
// the same model in the same run (batch norms live, as the example trains it, and folded, as the
// folded simulation computes). The goal is at most 1.3× the FP32 step. Timing does not depend on
// the weights' values, so the model is seeded, not trained; the labels are arbitrary.
#include <benchmark/benchmark.h>

#include <vector>

#include <qkit/nn/fit.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "fashion_bench.hpp"

namespace {

using model_t = fashion::model_type;
using preset = qkit::presets::w4a8_per_channel;

const qkit::tensor& batch64() {
  static const qkit::tensor x = qkit::data::first(fashion_bench::training_images(2000), 64).samples();
  return x;
}
std::vector<int> labels64() {
  std::vector<int> y(64);
  for (std::size_t i = 0; i < y.size(); ++i) y[i] = int(i % 10);
  return y;
}

void set_threads(benchmark::State& state) { qkit::set_num_threads(std::size_t(state.range(0))); }

template <class Model>
void fp32_step(benchmark::State& state, Model& m) {
  qkit::nn::set_training(m, true);
  qkit::nn::sgd opt({.lr = 1e-3f, .momentum = 0.9f});
  const auto y = labels64();
  for (auto _ : state) {
    qkit::nn::zero_grad(m);
    auto r = qkit::nn::softmax_cross_entropy(qkit::nn::forward(m, batch64()), y);
    benchmark::DoNotOptimize(qkit::nn::backward(m, r.grad));
    opt.step(m);
  }
  state.SetItemsProcessed(state.iterations() * 64);
}

// Reference: the FP32 step of the model as the example trains it (batch norms live).
void BM_fp32_step_bn(benchmark::State& state) {
  set_threads(state);
  auto m = fashion_bench::seeded_model();
  fp32_step(state, m);
}

// Reference: the FP32 step of the batch-norm-folded model (what a folded QuantSim computes).
void BM_fp32_step_folded(benchmark::State& state) {
  set_threads(state);
  auto m = fashion_bench::seeded_model();
  qkit::nn::fold_batch_norms(m);
  fp32_step(state, m);
}

void qat_step(benchmark::State& state, qkit::qat_mode mode, qkit::batch_norm_mode bn) {
  set_threads(state);
  qkit::quantsim<model_t, preset> sim(fashion_bench::seeded_model(), batch64(),
                                      preset::default_config(), {}, {}, {.batch_norms = bn});
  qkit::calibrate(sim, fashion_bench::training_images(2000), 512, 64);
  sim.set_qat_mode(mode);
  sim.set_training(true);
  qkit::nn::sgd opt({.lr = 1e-3f, .momentum = 0.9f});
  qkit::nn::sgd ranges({.lr = 1e-4f, .momentum = 0.9f});
  const auto y = labels64();
  for (auto _ : state) {
    sim.zero_grad();
    auto r = qkit::nn::softmax_cross_entropy(sim.forward(batch64()), y);
    benchmark::DoNotOptimize(sim.backward(r.grad));
    opt.step(sim.model());
    if (mode == qkit::qat_mode::range_learning)
      ranges.step_each([&](auto&& f) { sim.for_each_encoding_parameter(f); });
  }
  state.SetItemsProcessed(state.iterations() * 64);
}

void BM_qat_regular_step_folded(benchmark::State& state) {
  qat_step(state, qkit::qat_mode::regular, qkit::batch_norm_mode::fold);
}
void BM_qat_range_learning_step_folded(benchmark::State& state) {
  qat_step(state, qkit::qat_mode::range_learning, qkit::batch_norm_mode::fold);
}
void BM_qat_regular_step_bn(benchmark::State& state) {
  qat_step(state, qkit::qat_mode::regular, qkit::batch_norm_mode::keep);
}
void BM_qat_range_learning_step_bn(benchmark::State& state) {
  qat_step(state, qkit::qat_mode::range_learning, qkit::batch_norm_mode::keep);
}

}  // namespace

BENCHMARK(BM_fp32_step_bn)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_qat_regular_step_bn)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_qat_range_learning_step_bn)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_fp32_step_folded)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_qat_regular_step_folded)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_qat_range_learning_step_folded)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
