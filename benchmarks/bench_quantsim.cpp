// QuantSim's cost on the Fashion-MNIST MobileNet: simulated forward time against the FP32
// forward of the same (batch-norm folded) model at batch 64 — the ratio is the overhead of the
// quantize-dequantize work — and the time to compute encodings over 1,000 real training images
// with min-max and with TF-Enhanced; and the integer target mode (sim_mode::onnxruntime_cpu:
// uint8 activations, int32 accumulation, requantization) beside the float QuantSim forward it
// replaces (the goal: within 1.5x of it at batch 64). Timing does not depend on the weights'
// values, so the model is seeded, not trained.
#include <benchmark/benchmark.h>

#include <qkit/data/dataset.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "fashion_bench.hpp"

namespace {

using model_t = fashion::model_type;

const qkit::data::dataset& images_1000() { return fashion_bench::training_images(1000); }

qkit::tensor batch(std::size_t n) { return qkit::data::first(images_1000(), n).samples(); }

using fashion_bench::seeded_model;

void set_threads(benchmark::State& state) { qkit::set_num_threads(std::size_t(state.range(1))); }

// FP32 reference: the folded model QuantSim simulates, without quantizers.
void BM_fp32_forward(benchmark::State& state) {
  set_threads(state);
  auto m = seeded_model();
  qkit::nn::fold_batch_norms(m);
  const qkit::tensor x = batch(std::size_t(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(qkit::nn::forward(m, x));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

template <class Preset>
void BM_quantsim_forward(benchmark::State& state) {
  set_threads(state);
  qkit::quantsim<model_t, Preset> sim(seeded_model(), batch(1));
  qkit::calibrate(sim, images_1000(), 200);
  const qkit::tensor x = batch(std::size_t(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(sim.forward(x));
  state.SetItemsProcessed(state.iterations() * state.range(0));
}

// The integer target mode: the same calibrated simulation computing as ONNX Runtime's fused
// integer kernels do (its forward compiles the integer program from the current encodings,
// then runs it).
template <class Preset>
void BM_quantsim_integer_forward(benchmark::State& state) {
  set_threads(state);
  qkit::quantsim<model_t, Preset, qkit::minmax_range, qkit::minmax_range, qkit::rounding::half_even,
                 qkit::sim_mode::onnxruntime_cpu>
      sim(seeded_model(), batch(1));
  qkit::calibrate(sim, images_1000(), 200);
  const qkit::tensor x = batch(std::size_t(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(sim.forward(x));
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.SetLabel(qkit::integer::gemm_s8u8_kernel());
}

template <class ActRange>
void BM_compute_encodings_1000(benchmark::State& state) {
  set_threads(state);
  qkit::quantsim<model_t, qkit::presets::w8a8, qkit::minmax_range, ActRange> sim(seeded_model(),
                                                                              batch(1));
  for (auto _ : state) qkit::calibrate(sim, images_1000(), 1000);
  state.SetItemsProcessed(state.iterations() * 1000);
}

}  // namespace

BENCHMARK(BM_fp32_forward)->Args({64, 1})->Args({64, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quantsim_forward, qkit::presets::w8a8)->Args({64, 1})->Args({64, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quantsim_forward, qkit::presets::w8a8_per_channel)->Args({64, 1})->Args({64, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quantsim_integer_forward, qkit::presets::w8a8)->Args({64, 1})->Args({64, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quantsim_integer_forward, qkit::presets::w8a8_per_channel)->Args({64, 1})->Args({64, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_quantsim_forward, qkit::presets::fp16)->Args({64, 1})->Args({64, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_compute_encodings_1000, qkit::minmax_range)->Args({0, 2})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_compute_encodings_1000, qkit::tf_enhanced_range)->Args({0, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
