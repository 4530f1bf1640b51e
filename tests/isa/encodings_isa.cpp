// tests/isa/encodings_isa.cpp — writes, as exact hex floats, the encodings every range setter
// computes from one fixed data set (per tensor and per channel on both channel layouts, exact
// and AIMET-parity histograms, several bitwidths and schemes) and those of a small calibrated
// QuantSim. isa_tests.cmake compiles this file for baseline x86-64, with qkit::optimize, and
// with a bare -march=native (the compiler's default FMA contraction on), and checks that all
// three files are byte-identical: encodings must not depend on the instruction set.
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <qkit/calib/entropy.hpp>
#include <qkit/calib/minmax.hpp>
#include <qkit/calib/mse.hpp>
#include <qkit/calib/percentile.hpp>
#include <qkit/calib/tf_enhanced.hpp>
#include <qkit/config.hpp>
#include <qkit/nn/activation.hpp>
#include <qkit/nn/batch_norm.hpp>
#include <qkit/nn/conv2d.hpp>
#include <qkit/nn/flatten.hpp>
#include <qkit/nn/linear.hpp>
#include <qkit/nn/pooling.hpp>
#include <qkit/sim/quantizer.hpp>
#include <qkit/sim/quantsim.hpp>

namespace {

// Data from a fixed integer recurrence, not <random>: only the code under test may differ
// between the three builds.
struct lcg {
  std::uint64_t s;
  float uniform() {  // [-1, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<std::int32_t>(s >> 32)) * 0x1p-31f;
  }
  // Roughly normal (Irwin-Hall of 4), with a rare outlier so the histogram setters clip.
  // Scales are powers of two, so `v * scale + shift` rounds once whether or not this file's
  // compiler contracts it into an FMA: the data are the same in every build.
  float value(float scale, float shift) {
    float v = (uniform() + uniform() + uniform() + uniform()) * 0.5f;
    if ((s >> 20) % 997 == 0) v *= 8.0f;
    return v * scale + shift;
  }
};

std::vector<float> make_data(std::size_t n, std::uint64_t seed, float scale, float shift) {
  lcg g{seed};
  std::vector<float> v(n);
  for (auto& x : v) x = g.value(scale, shift);
  return v;
}

void put(std::FILE* f, const std::string& what, const qkit::encoding& e) {
  std::fprintf(f, "%s bw=%d scale=%a offset=%lld min=%a max=%a sym=%d\n", what.c_str(), e.bitwidth,
               e.scale, static_cast<long long>(e.offset), e.min, e.max, e.symmetric ? 1 : 0);
}

struct named_scheme {
  const char* name;
  qkit::scheme s;
};
const named_scheme schemes[] = {{"asym", qkit::scheme::asymmetric},
                                {"sym", qkit::scheme::symmetric_signed},
                                {"strict", qkit::scheme::strict_symmetric},
                                {"usym", qkit::scheme::unsigned_symm}};
const int bitwidths[] = {4, 8, 16};

// One range setter, per tensor: three batches (the last big enough for the threaded kernels)
// and also non-negative data (unsigned symmetric matters there).
template <class R>
void per_tensor(std::FILE* f, const std::string& name, const R& proto) {
  for (int pos = 0; pos < 2; ++pos) {
    R r = proto;
    const float shift = pos ? 2.5f : 0.3f;
    for (std::size_t b = 0; b < 3; ++b) {
      const auto x = make_data(b == 2 ? 300000 : 4099, 17 + b, 2.0f, shift);
      r.observe(x.data(), x.size());
    }
    for (int bw : bitwidths)
      for (const auto& sc : schemes)
        put(f, name + " tensor " + (pos ? "pos " : "mixed ") + sc.name, r.compute_encoding(bw, sc.s));
  }
}

// The same setter inside a per-channel quantizer, on contiguous channels (weights, axis 0) and
// on interleaved ones (activations NCHW, axis 1).
template <class R>
void per_channel(std::FILE* f, const std::string& name, const R& proto) {
  struct layout {
    const char* name;
    std::vector<std::size_t> shape;
    int axis;
  };
  const layout layouts[] = {{"axis0", {6, 3, 5, 7}, 0}, {"axis1", {4, 5, 9, 11}, 1}};
  for (const auto& l : layouts) {
    std::size_t n = 1;
    for (auto d : l.shape) n *= d;
    for (int bw : {4, 8}) {
      for (const auto& sc : schemes) {
        qkit::quantizer_settings st;
        st.bitwidth = bw;
        st.s = sc.s;
        st.channel_axis = l.axis;
        qkit::quantizer<R> q(name, st, proto);
        for (std::uint64_t b = 0; b < 2; ++b) {
          const auto x = make_data(n, 101 + b, 0.5f, 0.1f);
          q.observe(x.data(), l.shape);
        }
        q.compute_encodings();
        for (std::size_t c = 0; c < q.encodings().size(); ++c)
          put(f, name + " channel " + l.name + " " + sc.name + " c" + std::to_string(c),
              q.encodings()[c]);
      }
    }
  }
}

template <class R>
void both(std::FILE* f, const std::string& name, const R& proto) {
  per_tensor(f, name, proto);
  per_channel(f, name, proto);
}

// A small model through QuantSim: the SIMD convolutions and GEMM, the batch-norm fold and the
// calibration kernels together, as a user gets them.
template <class Preset, class P, class A>
void sim(std::FILE* f, const std::string& name) {
  using namespace qkit::nn;
  // im2col + GEMM, a depthwise (direct) conv, a pointwise (GEMM) conv and a linear layer.
  auto model = sequential(conv2d(2, 8, 3, {.padding = 1}), batch_norm(8), relu{},
                          conv2d(8, 8, 3, {.stride = 2, .padding = 1, .groups = 8}), relu{},
                          conv2d(8, 5, 1), relu{}, global_avg_pool{}, flatten{}, linear(5, 3));
  // Parameters from the recurrence too (the layers' own initialisers are not under test).
  lcg g{7};
  qkit::nn::for_each_parameter(model, [&](const std::string& n, qkit::tensor& p, qkit::tensor*) {
    const bool var = n.ends_with("running_var");
    for (auto& v : p) v = var ? 0.5f + 0.25f * (g.uniform() + 1.0f) : g.uniform() * 0.5f;
  });
  const auto xs = make_data(16 * 2 * 12 * 12, 3, 1.0f, 0.0f);
  qkit::tensor x(qkit::shape_type{16, 2, 12, 12});
  std::copy(xs.begin(), xs.end(), x.begin());
  qkit::quantsim<decltype(model), Preset, P, A> s(model, x);
  s.compute_encodings([&](auto& m) { (void)m.forward(x); });
  const qkit::io::encodings_file e = s.encodings();
  for (const auto* section : {&e.activation_encodings, &e.param_encodings})
    for (const auto& [tensor, encs] : *section)
      for (std::size_t c = 0; c < encs.size(); ++c)
        put(f, name + " sim " + tensor + " c" + std::to_string(c), encs[c]);
  // And its output on the same data, so a kernel difference cannot hide behind calibration.
  const qkit::tensor y = s.forward(x);
  for (std::size_t i = 0; i < y.size(); ++i) std::fprintf(f, "%s y%zu=%a\n", name.c_str(), i, y.data()[i]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT\n", argv[0]);
    return 2;
  }
  std::FILE* f = std::fopen(argv[1], "w");
  if (!f) return 2;
  using qkit::histogram_mode;
  both(f, "minmax", qkit::minmax_range{});
  both(f, "tfe-exact", qkit::tf_enhanced_range{histogram_mode::exact});
  both(f, "tfe-aimet", qkit::tf_enhanced_range{histogram_mode::aimet_parity});
  both(f, "percentile-exact", qkit::percentile_range{99.9, histogram_mode::exact});
  both(f, "percentile-aimet", qkit::percentile_range{99.9, histogram_mode::aimet_parity});
  both(f, "mse-exact", qkit::mse_range{histogram_mode::exact});
  both(f, "mse-aimet", qkit::mse_range{histogram_mode::aimet_parity});
  both(f, "entropy", qkit::entropy_range{});
  sim<qkit::presets::w8a8, qkit::minmax_range, qkit::minmax_range>(f, "w8a8-minmax");
  sim<qkit::presets::w4a8_per_channel, qkit::minmax_range, qkit::tf_enhanced_range>(f, "w4a8pc-tfe");
  sim<qkit::presets::w8a8_per_channel, qkit::mse_range, qkit::percentile_range>(f, "w8a8pc-mse");
  return std::fclose(f) == 0 ? 0 : 1;
}
