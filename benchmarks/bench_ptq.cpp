// PTQ cost on the Fashion-MNIST MobileNet: cross-layer equalization of the whole model (data-
// free) against one FP32 forward of a 64-image batch; bias correction with AIMET's defaults
// (encodings from 2,000 real training images, the correction over 512) against the plain
// calibration it wraps and the FP32 forward of the same 512 images; one AdaRound step of each
// conv/linear layer (32 cached samples, W4 weights) against that layer's forward plus weight
// gradient on the same 32 samples; and whole-model AdaRound at AIMET's defaults on 1,000
// images. Timing does not depend on the weights' values, so the model is seeded, not trained.
#include <benchmark/benchmark.h>

#include <qkit/data/dataset.hpp>
#include <qkit/ptq/adaround.hpp>
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

// ---- AdaRound, per layer --------------------------------------------------------------------

// One layer's cached inputs and targets (256 images through the seeded model, W4A8, activation
// quantizers off as AdaRound has them) and its kernel.
struct adaround_layer {
  std::string name;
  qkit::ptq::detail::layer_kernel kernel;
  qkit::ptq::detail::fused_activation act;
  qkit::tensor weight, bias, inputs, targets;
  std::vector<qkit::ptq::detail::grid_params> grid;
};

std::vector<adaround_layer> adaround_layers() {
  using sim_t = qkit::quantsim<model_t, qkit::presets::w4a8>;
  static sim_t sim(seeded_model(), batch(1));
  sim.compute_param_encodings();
  sim.for_each_quantizer([](const std::string&, qkit::quantizer_kind k, auto& q) {
    if (k != qkit::quantizer_kind::param) q.set_enabled(false);
  });
  const auto data = qkit::data::first(images_2000(), 256);
  std::vector<adaround_layer> out;
  for (const auto& n : sim.dataflow().nodes) {
    if (!n.weighted) continue;
    adaround_layer l;
    l.name = n.name;
    l.kernel = qkit::ptq::detail::kernel_of(sim, n.name, "bench");
    l.act = qkit::ptq::detail::activation_after(sim.dataflow(), n);
    l.weight = n.weighted->weight();
    if (n.weighted->has_bias()) l.bias = n.weighted->bias();
    for (const auto& e : sim.param_quantizer(n.name + ".weight").encodings())
      l.grid.push_back(qkit::detail::params_of(e));
    l.inputs = qkit::ptq::detail::capture(sim, data, 256, 64, n.name, {}, "bench").first;
    l.targets = qkit::ptq::detail::capture(sim, data, 256, 64, {},
                                           l.act.present() ? l.act.node : n.name, "bench").second;
    out.push_back(std::move(l));
  }
  return out;
}

// Reference: the layer's forward and weight gradient on 32 of the cached samples.
void BM_layer_forward_weight_grad(benchmark::State& state, const adaround_layer* l) {
  set_threads(state);
  const qkit::tensor x = qkit::ptq::detail::slice_rows(l->inputs, 0, 32);
  qkit::tensor dw = qkit::tensor::from_shape(l->weight.shape());
  const float* b = l->bias.size() ? l->bias.data() : nullptr;
  for (auto _ : state) {
    const qkit::tensor y = l->kernel.forward(x, l->weight.data(), b);
    l->kernel.weight_gradient(x, y, dw.data());
    benchmark::DoNotOptimize(dw.data());
  }
}

// One AdaRound step: draw 32 samples, soft weights, forward, loss gradient, weight gradient,
// α gradient with the regularizer, Adam (the regularized phase: after the warm start).
void BM_adaround_step(benchmark::State& state, const adaround_layer* l) {
  set_threads(state);
  qkit::ptq::adaround_options o;
  const float* b = l->bias.size() ? l->bias.data() : nullptr;
  qkit::ptq::detail::layer_rounding r(l->kernel, l->act, l->weight, l->grid, b, l->inputs,
                                      l->targets, o, 10000, 1);
  std::size_t it = 5000;
  for (auto _ : state) benchmark::DoNotOptimize(r.step(it++ % 10000, false));
}

// Whole-model AdaRound at AIMET's defaults (15,000 steps per layer at 4 bits, 32 samples per
// step) with 1,000 cached images; encodings computed first, activations recalibrated after.
void BM_adaround_whole_model(benchmark::State& state) {
  set_threads(state);
  const auto data = qkit::data::first(images_2000(), 1000);
  for (auto _ : state) {
    state.PauseTiming();
    qkit::quantsim<model_t, qkit::presets::w4a8> sim(seeded_model(), batch(1));
    state.ResumeTiming();
    qkit::ptq::adaround_options o;
    o.samples = 1000;
    o.calibration_samples = 1000;
    o.verbose = false;
    benchmark::DoNotOptimize(qkit::ptq::adaround(sim, data, o));
  }
}

}  // namespace

BENCHMARK(BM_fp32_forward_64)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_equalize)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_fp32_forward_512)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_calibrate_2000)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bias_correction_512)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_adaround_whole_model)->Arg(2)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

// The per-layer pairs are registered at run time: the layer names come from the model.
int main(int argc, char** argv) {
  static const std::vector<adaround_layer> layers = adaround_layers();
  for (const auto& l : layers) {
    benchmark::RegisterBenchmark(("BM_layer_forward_weight_grad/" + l.name).c_str(),
                                 BM_layer_forward_weight_grad, &l)
        ->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();
    benchmark::RegisterBenchmark(("BM_adaround_step/" + l.name).c_str(), BM_adaround_step, &l)
        ->Arg(1)->Unit(benchmark::kMicrosecond)->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
