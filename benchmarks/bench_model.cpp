// Whole-model throughput of the Fashion-MNIST MobileNet (examples/models/fashion_mobilenet.hpp):
// inference at batch 1 and 64, and a training step (forward + backward + SGD) at batch 64, on
// one thread and on all threads. Items are images. Batch 64 of the folded model shows what
// batch-norm folding saves at inference. The training step also runs beside a competing load
// (one busy thread per hardware thread, as when two programs share the cores): there the
// reference is the same step on one thread under the same load.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include <qkit/nn/nn.hpp>
#include <qkit/nn/batch_norm_fold.hpp>

#include "../examples/models/fashion_mobilenet.hpp"

namespace {

qkit::tensor random_images(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  qkit::tensor x = qkit::tensor::from_shape({n, 1, 28, 28});
  for (auto& v : x) v = d(rng);
  return x;
}

void set_threads(const benchmark::State& state) { qkit::set_num_threads(std::size_t(state.range(1))); }

void BM_inference(benchmark::State& state) {
  set_threads(state);
  const std::size_t batch = std::size_t(state.range(0));
  auto model = fashion::make_model();
  qkit::nn::init_parameters(model, 1);
  qkit::nn::set_training(model, false);
  const qkit::tensor x = random_images(batch, 2);
  for (auto _ : state) {
    qkit::tensor y = qkit::nn::forward(model, x);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(batch));
}

void BM_inference_folded(benchmark::State& state) {
  set_threads(state);
  const std::size_t batch = std::size_t(state.range(0));
  auto model = fashion::make_model();
  qkit::nn::init_parameters(model, 1);
  qkit::nn::set_training(model, false);
  qkit::nn::fold_batch_norms(model);
  const qkit::tensor x = random_images(batch, 2);
  for (auto _ : state) {
    qkit::tensor y = qkit::nn::forward(model, x);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(batch));
}

// One busy thread per hardware thread for as long as it lives: more runnable threads than cores,
// so the OS often has not scheduled a pool worker when a parallel region starts.
class competing_load {
 public:
  competing_load() {
    for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i)
      threads_.emplace_back([this] {
        volatile double x = 1.0;
        while (!stop_.load(std::memory_order_relaxed)) x = x * 1.0000001 + 1e-9;
      });
  }
  ~competing_load() {
    stop_.store(true);
    for (auto& t : threads_) t.join();
  }
  competing_load(const competing_load&) = delete;
  competing_load& operator=(const competing_load&) = delete;

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::thread> threads_;
};

// A training step at batch range(0) on range(1) threads; `Load` (constructed after the setup)
// runs beside the steps.
template <class Load>
void train_steps(benchmark::State& state) {
  set_threads(state);
  const std::size_t batch = std::size_t(state.range(0));
  auto model = fashion::make_model();
  qkit::nn::init_parameters(model, 1);
  qkit::nn::set_training(model, true);
  qkit::nn::sgd opt({.lr = 0.01f, .momentum = 0.9f, .weight_decay = 5e-4f});
  const qkit::tensor x = random_images(batch, 2);
  std::vector<int> labels(batch);
  for (std::size_t i = 0; i < batch; ++i) labels[i] = int(i % 10);
  [[maybe_unused]] Load load{};
  for (auto _ : state) {
    qkit::nn::zero_grad(model);
    auto r = qkit::nn::softmax_cross_entropy(qkit::nn::forward(model, x), labels);
    qkit::tensor dx = qkit::nn::backward(model, r.grad);
    opt.step(model);
    benchmark::DoNotOptimize(dx.data());
  }
  state.SetItemsProcessed(std::int64_t(state.iterations()) * std::int64_t(batch));
}

struct no_load {};
void BM_train_step(benchmark::State& state) { train_steps<no_load>(state); }
void BM_train_step_loaded(benchmark::State& state) { train_steps<competing_load>(state); }

// Args: {batch, threads}; threads 0 = all hardware threads.
BENCHMARK(BM_inference)->Args({1, 1})->Args({64, 1})->Args({1, 0})->Args({64, 0})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_inference_folded)->Args({64, 1})->Args({64, 0})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_train_step)->Args({64, 1})->Args({64, 0})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_train_step_loaded)->Args({64, 1})->Args({64, 0})->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
