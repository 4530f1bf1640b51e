// Quantize-dequantize bandwidth: qkit's SIMD kernels against their scalar references and
// against memcpy of the same bytes (the bound a streaming kernel can reach), per tensor and per
// channel, out of place, one thread. Sizes are bytes of float input, 4 KiB .. 64 MiB.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include <qkit/quant/fp16.hpp>
#include <qkit/quant/qdq.hpp>

namespace {

std::vector<float> random_input(std::size_t n) {
  std::mt19937 rng(17);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

const qkit::encoding& per_tensor_encoding() {
  static const qkit::encoding e = qkit::encoding_from_range(-3.0, 3.5, 8);
  return e;
}

/// 64 output channels (a conv weight's axis 0 or an activation's channel axis); each channel
/// is a contiguous run of n / 64 floats.
constexpr std::size_t kChannels = 64;
const std::vector<qkit::encoding>& channel_encodings() {
  static const std::vector<qkit::encoding> encs = [] {
    std::vector<qkit::encoding> v;
    for (std::size_t c = 0; c < kChannels; ++c)
      v.push_back(qkit::encoding_from_range(-1.0 - 0.05 * c, 1.0 + 0.03 * c, 8, qkit::scheme::symmetric_signed));
    return v;
  }();
  return encs;
}

struct memcpy_kernel {
  static void run(const float* in, float* out, std::size_t n) { std::memcpy(out, in, n * sizeof(float)); }
};
template <qkit::rounding R>
struct qdq_kernel {
  static void run(const float* in, float* out, std::size_t n) { qkit::qdq(in, out, n, per_tensor_encoding(), R); }
};
template <qkit::rounding R>
struct qdq_reference_kernel {
  static void run(const float* in, float* out, std::size_t n) {
    qkit::qdq_reference(in, out, n, per_tensor_encoding(), R);
  }
};
struct qdq_per_channel_kernel {
  static void run(const float* in, float* out, std::size_t n) {
    qkit::qdq_per_channel(in, out, 1, kChannels, n / kChannels, channel_encodings().data());
  }
};
struct qdq_per_channel_reference_kernel {
  static void run(const float* in, float* out, std::size_t n) {
    qkit::qdq_per_channel_reference(in, out, 1, kChannels, n / kChannels, channel_encodings().data());
  }
};
struct fp16_kernel {
  static void run(const float* in, float* out, std::size_t n) { qkit::fp16_qdq(in, out, n); }
};
struct fp16_reference_kernel {
  static void run(const float* in, float* out, std::size_t n) { qkit::fp16_qdq_reference(in, out, n); }
};

template <class Kernel>
void BM_stream(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)) / sizeof(float);
  const std::vector<float> in = random_input(n);
  std::vector<float> out(n, 1.0f);  // touched, so page faults stay out of the timing
  for (auto _ : state) {
    Kernel::run(in.data(), out.data(), n);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  // Bytes of input processed per second; memcpy moves the same bytes.
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n * sizeof(float)));
}

void sizes(benchmark::internal::Benchmark* b) { b->RangeMultiplier(4)->Range(4 << 10, 64 << 20); }

}  // namespace

BENCHMARK_TEMPLATE(BM_stream, memcpy_kernel)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, qdq_kernel<qkit::rounding::half_even>)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, qdq_reference_kernel<qkit::rounding::half_even>)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, qdq_kernel<qkit::rounding::half_away>)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, qdq_reference_kernel<qkit::rounding::half_away>)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, qdq_per_channel_kernel)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, qdq_per_channel_reference_kernel)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, fp16_kernel)->Apply(sizes);
BENCHMARK_TEMPLATE(BM_stream, fp16_reference_kernel)->Apply(sizes);

BENCHMARK_MAIN();
