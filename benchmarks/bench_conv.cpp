// bench_conv — qkit's conv2d kernels (forward, backward data, backward weight) at the layer
// shapes of a small MobileNet-style Fashion-MNIST network (28×28 inputs, batch 64), beside the
// scalar references and, for the GEMM-based layers, im2col + OpenBLAS cblas_sgemm.
// Counters: GFLOP/s (2·N·O·OH·OW·(C/groups)·KH·KW per call), items = output elements. Also the
// integer depthwise convolution of the target-exact simulation (qkit::integer::depthwise_u8,
// one image, uint8 input, int32 accumulators) beside its scalar reference and the float
// depthwise forward of the same image, single-threaded.
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <thread>
#include <vector>

#include <qkit/tensor/conv.hpp>
#include <qkit/tensor/integer.hpp>

#ifdef QKIT_HAVE_CBLAS
#include <cblas.h>
// Declared here too: a netlib cblas.h (the other Debian alternative) lacks it.
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

struct layer {
  std::string name;
  qkit::conv2d_shape s;
};

qkit::conv2d_shape shape(std::size_t C, std::size_t HW, std::size_t O, std::size_t k,
                         std::size_t stride, std::size_t groups, std::size_t batch = 64) {
  qkit::conv2d_shape s;
  s.N = batch; s.C = C; s.H = s.W = HW; s.O = O; s.KH = s.KW = k;
  s.p.stride_h = s.p.stride_w = stride;
  s.p.pad_top = s.p.pad_left = s.p.pad_bottom = s.p.pad_right = k / 2;
  s.p.groups = groups;
  return s;
}

const std::vector<layer>& layers() {
  static const std::vector<layer> l{
      {"stem3x3_1to16_28x28", shape(1, 28, 16, 3, 1, 1)},
      {"dw3x3_16_28x28", shape(16, 28, 16, 3, 1, 16)},
      {"pw1x1_16to32_28x28", shape(16, 28, 32, 1, 1, 1)},
      {"dw3x3_s2_32_28to14", shape(32, 28, 32, 3, 2, 32)},
      {"pw1x1_32to64_14x14", shape(32, 14, 64, 1, 1, 1)},
      {"conv3x3_32to64_14x14", shape(32, 14, 64, 3, 1, 1)},
      {"conv3x3_s2_16to32_28to14", shape(16, 28, 32, 3, 2, 1)},
      {"dw3x3_s2_64_14to7", shape(64, 14, 64, 3, 2, 64)},
      {"pw1x1_64to128_7x7", shape(64, 7, 128, 1, 1, 1)},
      {"conv3x3_64to64_7x7", shape(64, 7, 64, 3, 1, 1)},
      {"conv3x3_32to64_14x14_batch1", shape(32, 14, 64, 3, 1, 1, 1)},
  };
  return l;
}

struct operands {
  std::vector<float> x, w, b, y, dy, dx, dw, db;
  explicit operands(const qkit::conv2d_shape& s) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    auto fill = [&](std::vector<float>& v, std::size_t n) {
      v.resize(n);
      for (auto& e : v) e = d(rng);
    };
    fill(x, s.N * s.C * s.H * s.W);
    fill(w, s.O * (s.C / s.p.groups) * s.KH * s.KW);
    fill(b, s.O);
    fill(dy, s.N * s.O * s.OH() * s.OW());
    y.resize(dy.size());
    dx.resize(x.size());
    dw.resize(w.size());
    db.resize(s.O);
  }
};

enum class pass { forward, backward_data, backward_weight };
const char* pass_name(pass p) {
  return p == pass::forward ? "forward" : p == pass::backward_data ? "backward_data"
                                                                    : "backward_weight";
}

void set_counters(benchmark::State& state, const qkit::conv2d_shape& s) {
  const double flops = 2.0 * double(s.N * s.O * s.OH() * s.OW()) *
                       double(s.C / s.p.groups * s.KH * s.KW);
  state.counters["GFLOP/s"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * std::int64_t(s.N * s.O * s.OH() * s.OW()));
}

std::size_t thread_count(bool all) {
  return all ? std::max(1u, std::thread::hardware_concurrency()) : 1;
}

void bm_qkit(benchmark::State& state, std::size_t index, pass p, bool all_threads) {
  const auto& s = layers()[index].s;
  operands o(s);
  qkit::set_num_threads(thread_count(all_threads));
  for (auto _ : state) {
    if (p == pass::forward)
      qkit::conv2d_forward(s, o.x.data(), o.w.data(), o.b.data(), o.y.data());
    else if (p == pass::backward_data)
      qkit::conv2d_backward_data(s, o.dy.data(), o.w.data(), o.dx.data());
    else
      qkit::conv2d_backward_weight(s, o.x.data(), o.dy.data(), o.dw.data(), o.db.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}

void bm_reference(benchmark::State& state, std::size_t index, pass p) {
  const auto& s = layers()[index].s;
  operands o(s);
  for (auto _ : state) {
    if (p == pass::forward)
      qkit::conv2d_forward_reference(s, o.x.data(), o.w.data(), o.b.data(), o.y.data());
    else if (p == pass::backward_data)
      qkit::conv2d_backward_data_reference(s, o.dy.data(), o.w.data(), o.dx.data());
    else
      qkit::conv2d_backward_weight_reference(s, o.x.data(), o.dy.data(), o.dw.data(),
                                             o.db.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}

// The depthwise layers at batch 1 (the integer mode runs one image per thread).
struct integer_dw_operands {
  std::vector<std::uint8_t> x;
  std::vector<std::int32_t> w, acc;
  explicit integer_dw_operands(const qkit::conv2d_shape& s) {
    std::mt19937 rng(1);
    std::uniform_int_distribution<int> dx(0, 255), dw(-127, 127);
    x.resize(s.C * s.H * s.W);
    w.resize(s.C * s.KH * s.KW);
    acc.resize(s.C * s.OH() * s.OW());
    for (auto& v : x) v = static_cast<std::uint8_t>(dx(rng));
    for (auto& v : w) v = dw(rng);
  }
};

qkit::conv2d_shape one_image(qkit::conv2d_shape s) {
  s.N = 1;
  return s;
}

void bm_integer_depthwise(benchmark::State& state, std::size_t index, bool reference) {
  const auto s = one_image(layers()[index].s);
  integer_dw_operands o(s);
  for (auto _ : state) {
    if (reference) qkit::integer::depthwise_u8_reference(s, o.x.data(), 128, o.w.data(), o.acc.data());
    else qkit::integer::depthwise_u8(s, o.x.data(), 128, o.w.data(), o.acc.data());
    benchmark::DoNotOptimize(o.acc.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}

void bm_float_depthwise_one_image(benchmark::State& state, std::size_t index) {
  const auto s = one_image(layers()[index].s);
  operands o(s);
  qkit::set_num_threads(1);
  for (auto _ : state) {
    qkit::conv2d_forward(s, o.x.data(), o.w.data(), o.b.data(), o.y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}

#ifdef QKIT_HAVE_CBLAS
// The textbook baseline: im2col per image, then OpenBLAS's SGEMM (groups == 1 layers only).
void bm_openblas_im2col(benchmark::State& state, std::size_t index, bool all_threads) {
  const auto& s = layers()[index].s;
  operands o(s);
  openblas_set_num_threads(int(thread_count(all_threads)));
  const std::size_t P = s.OH() * s.OW(), K = s.C * s.KH * s.KW;
  std::vector<float> col(K * P);
  for (auto _ : state) {
    for (std::size_t n = 0; n < s.N; ++n) {
      qkit::detail::im2col(s, s.C, o.x.data() + n * s.C * s.H * s.W, col.data(), P);
      float* yn = o.y.data() + n * s.O * P;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(s.O), int(P), int(K), 1.0f,
                  o.w.data(), int(K), col.data(), int(P), 0.0f, yn, int(P));
      for (std::size_t c = 0; c < s.O; ++c)
        for (std::size_t i = 0; i < P; ++i) yn[c * P + i] += o.b[c];
    }
    benchmark::ClobberMemory();
  }
  set_counters(state, s);
}
#endif

// Single-threaded runs are timed by the benchmark thread's CPU time, which the other jobs on
// a shared machine disturb least; all-thread runs by wall time, the only fair measure there.
benchmark::internal::Benchmark* timing(benchmark::internal::Benchmark* b, bool all_threads) {
  b->Unit(benchmark::kMicrosecond);
  if (all_threads) b->UseRealTime();
  return b;
}

const bool registered = [] {
  for (std::size_t i = 0; i < layers().size(); ++i) {
    const auto& l = layers()[i];
    for (pass p : {pass::forward, pass::backward_data, pass::backward_weight}) {
      for (bool all : {false, true}) {
        const std::string t = all ? "/threads:all" : "/threads:1";
        timing(benchmark::RegisterBenchmark(
                   ("qkit_conv2d_" + std::string(pass_name(p)) + "/" + l.name + t).c_str(),
                   bm_qkit, i, p, all),
               all);
      }
      timing(benchmark::RegisterBenchmark(
                 ("reference_conv2d_" + std::string(pass_name(p)) + "/" + l.name).c_str(),
                 bm_reference, i, p),
             false);
    }
    if (l.s.p.groups == l.s.C && l.s.O == l.s.C) {
      timing(benchmark::RegisterBenchmark(("integer_depthwise_u8/" + l.name + "/batch1").c_str(),
                                          bm_integer_depthwise, i, false), false);
      timing(benchmark::RegisterBenchmark(("integer_depthwise_reference/" + l.name + "/batch1").c_str(),
                                          bm_integer_depthwise, i, true), false);
      timing(benchmark::RegisterBenchmark(("qkit_conv2d_forward_float/" + l.name + "/batch1").c_str(),
                                          bm_float_depthwise_one_image, i), false);
    }
#ifdef QKIT_HAVE_CBLAS
    if (l.s.p.groups == 1)
      for (bool all : {false, true})
        timing(benchmark::RegisterBenchmark(
                   ("openblas_im2col_forward/" + l.name + (all ? "/threads:all" : "/threads:1"))
                       .c_str(),
                   bm_openblas_im2col, i, all),
               all);
#endif
  }
  return true;
}();

}  // namespace

BENCHMARK_MAIN();
