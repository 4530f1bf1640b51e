// bench_gemm — qkit::gemm against OpenBLAS's cblas_sgemm (same binary, same data) and the
// scalar reference, at square sizes and at the im2col shapes of a small Fashion-MNIST network.
// Counters: GFLOP/s (2·M·N·K per call). Threads: "/threads:1" and "/threads:all" variants set
// both libraries to one thread or to every hardware thread. Also the integer GEMM of the
// target-exact simulation (qkit::integer::gemm_s8u8: uint8 activations × int8 weights into
// int32, AVX-512 VNNI where the CPU has it) beside its scalar reference and the float GEMM of
// the same shape, single-threaded (the integer mode runs one image per thread).
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include <qkit/tensor/gemm.hpp>
#include <qkit/tensor/integer.hpp>

#ifdef QKIT_HAVE_CBLAS
#include <cblas.h>
// Declared here too: a netlib cblas.h (the other Debian alternative) lacks it.
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

struct gemm_case {
  std::string name;
  std::size_t M, N, K;
  qkit::transpose ta = qkit::transpose::no, tb = qkit::transpose::no;
};

// im2col GEMMs of a MobileNet-style network on 28×28 inputs, batch 64 (N = 64·OH·OW):
// forward y[O × N·OH·OW] = w[O × C·9] · col; the 1×1 pointwise conv is w[O × C] · x.
const std::vector<gemm_case>& cases() {
  static const std::vector<gemm_case> c{
      {"square128", 128, 128, 128},
      {"square256", 256, 256, 256},
      {"square512", 512, 512, 512},
      {"square1024", 1024, 1024, 1024},
      {"square512_AtB", 512, 512, 512, qkit::transpose::yes, qkit::transpose::no},
      {"square512_ABt", 512, 512, 512, qkit::transpose::no, qkit::transpose::yes},
      {"conv3x3_1to16_28x28_b64", 16, 64 * 784, 9},
      {"conv3x3_16to32_s2_14x14_b64", 32, 64 * 196, 144},
      {"conv3x3_32to64_14x14_b64", 64, 64 * 196, 288},
      {"conv3x3_64to64_7x7_b64", 64, 64 * 49, 576},
      {"pointwise1x1_32to64_14x14_b64", 64, 64 * 196, 32},
      {"conv3x3_32to64_14x14_per_image", 64, 196, 288},
      // backward-weight of the 3x3 32->64 conv: dw[O × C·9] = dy[O × NHW] · col^T
      {"conv3x3_32to64_dw_b64", 64, 288, 64 * 196, qkit::transpose::no, qkit::transpose::yes},
      // backward-data: dcol[C·9 × NHW] = w^T[C·9 × O] · dy
      {"conv3x3_32to64_dx_b64", 288, 64 * 196, 64, qkit::transpose::yes, qkit::transpose::no},
  };
  return c;
}

struct operands {
  std::vector<float> a, b, c;
  std::size_t lda, ldb;
  explicit operands(const gemm_case& g) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    a.resize(g.M * g.K);
    b.resize(g.K * g.N);
    c.assign(g.M * g.N, 0.0f);
    for (auto& v : a) v = d(rng);
    for (auto& v : b) v = d(rng);
    lda = g.ta == qkit::transpose::no ? g.K : g.M;
    ldb = g.tb == qkit::transpose::no ? g.N : g.K;
  }
};

std::size_t thread_count(bool all) {
  return all ? std::max(1u, std::thread::hardware_concurrency()) : 1;
}

void set_counters(benchmark::State& state, const gemm_case& g) {
  const double flops = 2.0 * double(g.M) * double(g.N) * double(g.K);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * std::int64_t(g.M * g.N));
}

void bm_qkit(benchmark::State& state, std::size_t index, bool all_threads) {
  const auto& g = cases()[index];
  operands o(g);
  qkit::set_num_threads(thread_count(all_threads));
  for (auto _ : state) {
    qkit::gemm(g.ta, g.tb, g.M, g.N, g.K, 1.0f, o.a.data(), o.lda, o.b.data(), o.ldb, 0.0f,
               o.c.data(), g.N);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
}

void bm_reference(benchmark::State& state, std::size_t index) {
  const auto& g = cases()[index];
  operands o(g);
  for (auto _ : state) {
    qkit::gemm_reference(g.ta, g.tb, g.M, g.N, g.K, 1.0f, o.a.data(), o.lda, o.b.data(), o.ldb,
                         0.0f, o.c.data(), g.N);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
}

#ifdef QKIT_HAVE_CBLAS
void bm_openblas(benchmark::State& state, std::size_t index, bool all_threads) {
  const auto& g = cases()[index];
  operands o(g);
  openblas_set_num_threads(int(thread_count(all_threads)));
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, g.ta == qkit::transpose::no ? CblasNoTrans : CblasTrans,
                g.tb == qkit::transpose::no ? CblasNoTrans : CblasTrans, int(g.M), int(g.N),
                int(g.K), 1.0f, o.a.data(), int(o.lda), o.b.data(), int(o.ldb), 0.0f,
                o.c.data(), int(g.N));
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
}
#endif

// Integer GEMM c[M×N] = a[M×K] (int8 weights) · b[K×N] (uint8 activations), per image.
const std::vector<gemm_case>& integer_cases() {
  static const std::vector<gemm_case> c{
      {"square256", 256, 256, 256},
      {"conv3x3_1to16_28x28_per_image", 16, 784, 9},
      {"conv3x3_32to64_14x14_per_image", 64, 196, 288},
      {"pointwise1x1_32to64_14x14_per_image", 64, 196, 32},
      {"pointwise1x1_64to128_7x7_per_image", 128, 49, 64},
  };
  return c;
}

struct integer_operands {
  std::vector<std::int8_t> a;
  std::vector<std::uint8_t> b;
  std::vector<std::int32_t> c;
  explicit integer_operands(const gemm_case& g) {
    std::mt19937 rng(1);
    std::uniform_int_distribution<int> wa(-128, 127), wb(0, 255);
    a.resize(g.M * g.K);
    b.resize(g.K * g.N);
    c.assign(g.M * g.N, 0);
    for (auto& v : a) v = static_cast<std::int8_t>(wa(rng));
    for (auto& v : b) v = static_cast<std::uint8_t>(wb(rng));
  }
};

void bm_integer(benchmark::State& state, std::size_t index) {
  const auto& g = integer_cases()[index];
  integer_operands o(g);
  const qkit::integer::packed_weights w(g.M, g.K, o.a.data());
  for (auto _ : state) {
    qkit::integer::gemm_s8u8(w, g.N, o.b.data(), g.N, o.c.data(), g.N);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
  state.SetLabel(qkit::integer::gemm_s8u8_kernel());
}

// The portable kernel (what CPUs without AVX-512 VNNI run), benchmarked on every CPU.
void bm_integer_simd(benchmark::State& state, std::size_t index) {
  const auto& g = integer_cases()[index];
  integer_operands o(g);
  const qkit::integer::packed_weights w(g.M, g.K, o.a.data());
  for (auto _ : state) {
    qkit::integer::detail::simd_gemm(w, g.N, o.b.data(), g.N, o.c.data(), g.N);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
}

void bm_integer_reference(benchmark::State& state, std::size_t index) {
  const auto& g = integer_cases()[index];
  integer_operands o(g);
  for (auto _ : state) {
    qkit::integer::gemm_s8u8_reference(g.M, g.N, g.K, o.a.data(), o.b.data(), g.N, o.c.data(), g.N);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
}

void bm_float_same_shape(benchmark::State& state, std::size_t index) {
  const auto& g = integer_cases()[index];
  operands o(g);
  qkit::set_num_threads(1);
  for (auto _ : state) {
    qkit::gemm(qkit::transpose::no, qkit::transpose::no, g.M, g.N, g.K, 1.0f, o.a.data(), g.K,
               o.b.data(), g.N, 0.0f, o.c.data(), g.N);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, g);
}

// Single-threaded runs are timed by the benchmark thread's CPU time, which the other jobs on
// a shared machine disturb least; all-thread runs by wall time, the only fair measure there.
benchmark::internal::Benchmark* timing(benchmark::internal::Benchmark* b, bool all_threads) {
  b->Unit(benchmark::kMicrosecond);
  if (all_threads) b->UseRealTime();
  return b;
}

const bool registered = [] {
  for (std::size_t i = 0; i < cases().size(); ++i) {
    const auto& g = cases()[i];
    for (bool all : {false, true}) {
      const std::string t = all ? "/threads:all" : "/threads:1";
      timing(benchmark::RegisterBenchmark(("qkit_gemm/" + g.name + t).c_str(), bm_qkit, i, all),
             all);
#ifdef QKIT_HAVE_CBLAS
      timing(benchmark::RegisterBenchmark(("openblas_sgemm/" + g.name + t).c_str(), bm_openblas,
                                          i, all),
             all);
#endif
    }
    // The scalar reference only where it finishes in reasonable time.
    if (double(g.M) * double(g.N) * double(g.K) <= 300e6)
      timing(benchmark::RegisterBenchmark(("reference_gemm/" + g.name).c_str(), bm_reference, i),
             false);
  }
  for (std::size_t i = 0; i < integer_cases().size(); ++i) {
    const auto& g = integer_cases()[i];
    timing(benchmark::RegisterBenchmark(("integer_gemm_s8u8/" + g.name).c_str(), bm_integer, i), false);
    timing(benchmark::RegisterBenchmark(("integer_gemm_simd_int32/" + g.name).c_str(), bm_integer_simd, i),
           false);
    timing(benchmark::RegisterBenchmark(("integer_gemm_reference/" + g.name).c_str(),
                                        bm_integer_reference, i),
           false);
    timing(benchmark::RegisterBenchmark(("qkit_gemm_float/" + g.name).c_str(), bm_float_same_shape, i),
           false);
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
