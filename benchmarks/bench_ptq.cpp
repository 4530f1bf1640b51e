// PTQ cost on the Fashion-MNIST MobileNet: cross-layer equalization of the whole model (data-
// free) against one FP32 forward of a 64-image batch, and bias correction with AIMET's
// defaults (encodings from 2,000 real training images, the correction over 512) against the
// plain calibration it wraps and the FP32 forward of the same 512 images. Timing does not depend
// on the weights' values, so the model is seeded, not trained.
#include <benchmark/benchmark.h>

#include <qkit/data/dataset.hpp>
#include <qkit/ptq/bias_correction.hpp>
#include <qkit/ptq/cross_layer_equalization.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

#include "fashion_bench.hpp"

namespace {

using model_t = fashion::model_type;

const qkit::data::dataset& images_2000() { return fashion_bench::training_images(2000); }

qkit::tensor batch(std::size_t n) { return qkit::data::first(images_2000(), n).samples(); }

using fashion_bench::seeded_model;

void set_threads(benchmark::State& state) { qkit::set_num_threads(std::size_t(state.range(0))); }

// Reference: the FP32 forward of 64 images (the folded model).
void BM_fp32_forward_64(benchmark::State& state) {
  set_threads(state);
  auto m = seeded_model();
  qkit::nn::fold_batch_norms(m);
  const qkit::tensor x = batch(64);
  for (auto _ : state) benchmark::DoNotOptimize(qkit::nn::forward(m, x));
}

void BM_equalize(benchmark::State& state) {
  set_threads(state);
  const model_t original = seeded_model();
  const qkit::tensor example = batch(1);
  for (auto _ : state) {
    state.PauseTiming();
    model_t m = original;
    state.ResumeTiming();
    benchmark::DoNotOptimize(qkit::ptq::equalize(m, example));
  }
}

// Reference: the FP32 forward of the 512 images bias correction compares outputs on.
void BM_fp32_forward_512(benchmark::State& state) {
  set_threads(state);
  auto m = seeded_model();
  qkit::nn::fold_batch_norms(m);
  const auto data = qkit::data::first(images_2000(), 512);
  for (auto _ : state)
    for (const auto& b : qkit::data::batches(data, 64)) benchmark::DoNotOptimize(qkit::nn::forward(m, b.samples));
  state.SetItemsProcessed(state.iterations() * 512);
}

// Reference: compute_encodings over 2,000 images (bias correction does it before and after).
void BM_calibrate_2000(benchmark::State& state) {
  set_threads(state);
  qkit::quantsim<model_t, qkit::presets::w8a8> sim(seeded_model(), batch(1));
  for (auto _ : state) qkit::calibrate(sim, images_2000(), 2000, 64);
  state.SetItemsProcessed(state.iterations() * 2000);
}

void BM_bias_correction_512(benchmark::State& state) {
  set_threads(state);
  const model_t model = seeded_model();
  for (auto _ : state) {
    state.PauseTiming();
    qkit::quantsim<model_t, qkit::presets::w8a8> sim(model, batch(1));
    state.ResumeTiming();
    benchmark::DoNotOptimize(qkit::ptq::correct_bias(sim, images_2000()));
  }
}

}  // namespace

BENCHMARK(BM_fp32_forward_64)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_equalize)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_fp32_forward_512)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_calibrate_2000)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bias_correction_512)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
