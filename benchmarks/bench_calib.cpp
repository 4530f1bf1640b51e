// Calibration benchmarks: the statistics kernels beside their scalar references (bytes read
// per second), and the time TF-Enhanced takes to turn a histogram into an encoding.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include <qkit/calib/stats.hpp>
#include <qkit/calib/tf_enhanced.hpp>
#include <qkit/tensor/thread_pool.hpp>

namespace {
const std::vector<float>& data(std::size_t n) {
  static std::vector<float> v;
  if (v.size() != n) {
    v.resize(n);
    std::mt19937 rng(1);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (auto& x : v) x = d(rng);
  }
  return v;
}

// Single-threaded: the kernels against their references, not the thread pool.
struct one_thread {
  one_thread() { qkit::set_num_threads(1); }
};

void BM_scan_min_max(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  for (auto _ : st) benchmark::DoNotOptimize(qkit::scan_min_max(v.data(), v.size()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}
void BM_scan_min_max_reference(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  for (auto _ : st) benchmark::DoNotOptimize(qkit::scan_min_max_reference(v.data(), v.size()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}
void BM_abs_max(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  for (auto _ : st) benchmark::DoNotOptimize(qkit::abs_max(v.data(), v.size()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}
void BM_abs_max_reference(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  for (auto _ : st) benchmark::DoNotOptimize(qkit::abs_max_reference(v.data(), v.size()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}

// N(0,1) over 2048 bins of width 1/256 starting at -4: the default histogram's typical shape.
const qkit::bin_grid grid{-8, -1024, 2048};

void BM_histogram_update(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  std::vector<std::uint64_t> c(grid.bins);
  for (auto _ : st) benchmark::DoNotOptimize(qkit::histogram_update(v.data(), v.size(), grid, c.data()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}
void BM_histogram_update_reference(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  std::vector<std::uint64_t> c(grid.bins);
  for (auto _ : st)
    benchmark::DoNotOptimize(qkit::histogram_update_reference(v.data(), v.size(), grid, c.data()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}
void BM_aimet_histogram_update(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  std::vector<std::uint64_t> c(512);
  for (auto _ : st)
    benchmark::DoNotOptimize(qkit::aimet_histogram_update(v.data(), v.size(), 0.05f, -256.0f, 512, c.data()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}
void BM_aimet_histogram_update_reference(benchmark::State& st) {
  one_thread t;
  const auto& v = data(static_cast<std::size_t>(st.range(0)));
  std::vector<std::uint64_t> c(512);
  for (auto _ : st)
    benchmark::DoNotOptimize(
        qkit::aimet_histogram_update_reference(v.data(), v.size(), 0.05f, -256.0f, 512, c.data()));
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
}

// Whole observe() of a 10^6-value batch through each histogram mode (scan + binning).
void BM_tf_enhanced_observe(benchmark::State& st) {
  one_thread t;
  const auto& v = data(1'000'000);
  const auto mode = st.range(0) ? qkit::histogram_mode::aimet_parity : qkit::histogram_mode::exact;
  for (auto _ : st) {
    qkit::tf_enhanced_range r(mode);
    r.observe(v.data(), v.size());
    benchmark::DoNotOptimize(r);
  }
  st.SetBytesProcessed(static_cast<int64_t>(st.iterations() * v.size() * sizeof(float)));
  st.SetLabel(st.range(0) ? "aimet_parity" : "exact");
}

// compute_encoding from an already filled histogram (10^6 N(0,1) values, 8 bits).
void BM_tf_enhanced_compute(benchmark::State& st) {
  one_thread t;
  const auto& v = data(1'000'000);
  const auto mode = st.range(0) ? qkit::histogram_mode::aimet_parity : qkit::histogram_mode::exact;
  qkit::tf_enhanced_range r(mode);
  for (std::size_t i = 0; i < v.size(); i += 65536) r.observe(v.data() + i, std::min<std::size_t>(65536, v.size() - i));
  const qkit::scheme s = st.range(1) ? qkit::scheme::symmetric_signed : qkit::scheme::asymmetric;
  for (auto _ : st) benchmark::DoNotOptimize(r.compute_encoding(8, s));
  st.SetLabel(std::string(st.range(0) ? "aimet_parity" : "exact") + (st.range(1) ? " sym" : " asym"));
}
}  // namespace

BENCHMARK(BM_scan_min_max)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_scan_min_max_reference)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_abs_max)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_abs_max_reference)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_histogram_update)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_histogram_update_reference)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_aimet_histogram_update)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_aimet_histogram_update_reference)->Arg(4096)->Arg(1 << 20);
BENCHMARK(BM_tf_enhanced_observe)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_tf_enhanced_compute)->Args({0, 0})->Args({0, 1})->Args({1, 0})->Args({1, 1})->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
