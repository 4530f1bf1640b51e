// QuantSim exported to ONNX (QDQ) and run in ONNX Runtime: with graph optimizations disabled
// ORT computes the QDQ graph in float and must agree with the simulation to within one output
// quantization step at every precision preset.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <random>

#include <qkit/nn/nn.hpp>
#include <qkit/sim/quantsim_export.hpp>

#include "export/ort_runner.hpp"

namespace unit_quantsim_onnx {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit;

namespace {

auto make_onnx_model() {
  using namespace qkit::nn;
  auto m = sequential(
      conv2d(1, 8, 3, {.stride = 2, .padding = 1, .bias = false}), batch_norm(8), relu6(),
      residual(sequential(conv2d(8, 16, 1), batch_norm(16), relu6(),
                          conv2d(16, 16, 3, {.padding = 1, .groups = 16}), batch_norm(16), relu6(),
                          conv2d(16, 8, 1), batch_norm(8))),
      max_pool({.kernel_h = 2, .kernel_w = 2, .stride_h = 2, .stride_w = 2}),
      conv2d(8, 12, 3, {.padding = 1}), relu(), global_avg_pool(), flatten(), linear(12, 10));
  init_parameters(m, 11);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.5f, 1.5f), c(-0.2f, 0.2f);
  for_each_parameter(m, [&](const std::string& name, tensor& v, tensor*) {
    if (name.ends_with("running_var")) for (auto& x : v) x = u(rng);
    if (name.ends_with("running_mean") || name.ends_with(".bias")) for (auto& x : v) x = c(rng);
  });
  return m;
}

tensor images(std::size_t n, std::uint32_t seed) {
  tensor x = tensor::from_shape({n, 1, 16, 16});
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(0.0f, 1.0f);
  for (auto& v : x) v = d(rng);
  return x;
}

template <class Preset>
void check_export(const char* label) {
  const std::string tag = label;
  CAPTURE(tag);
  auto model = make_onnx_model();
  quantsim<decltype(model), Preset> sim(model, images(2, 1));
  sim.compute_encodings([](auto& s) {
    for (std::uint32_t b = 0; b < 4; ++b) (void)s.forward(images(16, 200 + b));
  });
  const fs::path dir = fs::path(QKIT_TEST_OUTPUT) / "sim_onnx";
  fs::create_directories(dir);
  const fs::path path = dir / (std::string(label) + ".onnx");
  export_onnx(sim, path);
  REQUIRE(fs::exists(path));

  const tensor x = images(64, 77);
  const tensor y = sim.forward(x);
  std::vector<float> in(x.begin(), x.end()), out;
  REQUIRE(qkit_test::run_ort(path, in, {64, 1, 16, 16}, out, "disabled"));
  REQUIRE(out.size() == y.size());

  const auto& q = sim.activation_quantizer("8");
  const double step = q.settings().dtype == dtype::floating ? 0.0 : q.encodings()[0].scale;
  double max_diff = 0;
  std::size_t agree = 0;
  for (std::size_t i = 0; i < 64; ++i) {
    std::size_t a = 0, b = 0;
    for (std::size_t k = 0; k < 10; ++k) {
      const double d = std::fabs(double(out[i * 10 + k]) - y.data()[i * 10 + k]);
      max_diff = std::max(max_diff, d);
      if (out[i * 10 + k] > out[i * 10 + a]) a = k;
      if (y.data()[i * 10 + k] > y.data()[i * 10 + b]) b = k;
    }
    agree += a == b;
  }
  MESSAGE(label << ": max |ORT - QuantSim| = " << max_diff << " (output step " << step
                << "), top-1 agreement " << agree << "/64");
  // At 8 bits ORT and QuantSim agree to the step. At 16 bits a step is 256x finer while both
  // still sum convolutions in float in different orders; a value that lands within float
  // rounding of a grid midpoint upstream can move the logits by a few of these tiny steps.
  const double allowed_steps = q.bitwidth() > 8 ? 4.0 : 1.0;
  if (step > 0) CHECK(max_diff <= step * allowed_steps * 1.0001);
  else CHECK(max_diff <= 1e-2);  // fp16: a few half-precision ulps of the logits
  CHECK(agree >= 63);
}

}  // namespace

TEST_CASE("quantsim exports to ONNX QDQ that ONNX Runtime runs like the simulation") {
  check_export<presets::w8a8>("w8a8");
  check_export<presets::w8a8_per_channel>("w8a8_pc");
  check_export<presets::w4a8_per_channel>("w4a8_pc");
  check_export<presets::w8a16>("w8a16");
  check_export<presets::w16a16>("w16a16");
  check_export<presets::fp16>("fp16");
}

TEST_CASE("ONNX export refuses a grid whose zero point its storage cannot hold") {
  io::export_graph g;
  g.name = "zp";
  g.input_name = "x";
  g.input_shape = {-1, 4};
  g.output_name = "y";
  g.output_shape = {-1, 4};
  g.nodes.push_back({"Relu", "relu", {"x"}, {"y"}, {}});
  // AIMET's rule gives [0.5, 1.5] at 8 bits offset +128: zero point -128, not a uint8.
  g.quantized["x"] = {{encoding_from_range(0.5, 1.5, 8, scheme::asymmetric)}, -1};
  const fs::path path = fs::path(QKIT_TEST_OUTPUT) / "sim_onnx" / "zp.onnx";
  fs::create_directories(path.parent_path());
  CHECK_THROWS_WITH_AS(io::write_onnx(g, path), doctest::Contains("outside its 8-bit unsigned storage"),
                       config_error);
  CHECK_FALSE(fs::exists(path));
}
// The integer mode's QLinearAdd against ONNX Runtime's: a QDQ Add of an input holding every
// uint8 a (256 times) and a constant holding every uint8 b, which ORT's default optimization
// level fuses into QLinearAdd, checked on all 65,536 pairs for grid triples drawn at random.
// The textbook (s_a(a − z_a) + s_b(b − z_b)) / s_c disagrees with ORT on up to a few pairs per
// triple; integer::qlinear_add must agree on every one.
TEST_CASE("integer mode: QLinearAdd equals ONNX Runtime's on every pair of uint8 inputs") {
  std::mt19937 rng(2026);
  std::uniform_real_distribution<double> log2_scale(-7.0, -2.0), mantissa(1.0, 2.0);
  std::uniform_int_distribution<int> zp(0, 255);
  const fs::path dir = fs::path(QKIT_TEST_OUTPUT) / "sim_onnx";
  fs::create_directories(dir);
  constexpr std::size_t n = 65536;
  std::size_t textbook_differs = 0;
  for (int t = 0; t < 6; ++t) {
    integer::grid g[3];
    for (auto& x : g) {
      x.scale = static_cast<float>(std::exp2(log2_scale(rng)) * mantissa(rng));
      x.zero_point = zp(rng);
    }
    auto enc = [](const integer::grid& x) {
      encoding e;
      e.bitwidth = 8;
      e.scale = x.scale;
      e.offset = -x.zero_point;
      e.min = e.scale * double(e.offset);
      e.max = e.scale * (double(e.offset) + 255.0);
      return e;
    };
    tensor a_real = tensor::from_shape({n}), b_real = tensor::from_shape({n});
    for (std::size_t i = 0; i < n; ++i) {
      a_real.data()[i] = g[0].scale * static_cast<float>(int(i / 256) - g[0].zero_point);
      b_real.data()[i] = g[1].scale * static_cast<float>(int(i % 256) - g[1].zero_point);
    }
    io::export_graph eg;
    eg.name = "qlinear_add";
    eg.input_name = "a";
    eg.input_shape = {std::int64_t(n)};
    eg.output_name = "c";
    eg.output_shape = {std::int64_t(n)};
    eg.nodes.push_back({"Add", "add", {"a", "b"}, {"c"}, {}});
    eg.initializers.emplace_back("b", b_real);
    eg.quantized["a"] = {{enc(g[0])}, -1};
    eg.quantized["b"] = {{enc(g[1])}, -1};
    eg.quantized["c"] = {{enc(g[2])}, -1};
    const fs::path path = dir / ("qlinear_add_" + std::to_string(t) + ".onnx");
    io::write_onnx(eg, path);
    std::vector<float> out;
    REQUIRE(qkit_test::run_ort(path, std::vector<float>(a_real.begin(), a_real.end()),
                               {std::int64_t(n)}, out, "all"));
    REQUIRE(out.size() == n);
    integer::add_step step;
    step.a = g[0];
    step.b = g[1];
    step.out = g[2];
    integer::qlinear_add_parameters(step);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto a = static_cast<std::uint8_t>(i / 256), b = static_cast<std::uint8_t>(i % 256);
      const float ort = std::nearbyint(out[i] / g[2].scale) + float(g[2].zero_point);
      differ += float(integer::qlinear_add(a, b, step)) != ort;
      const float va = g[0].scale * float(int(a) - g[0].zero_point);
      const float vb = g[1].scale * float(int(b) - g[1].zero_point);
      volatile float sum = va + vb;  // each operation rounded on its own
      const float textbook = std::clamp(std::nearbyint(sum / g[2].scale) + float(g[2].zero_point), 0.0f, 255.0f);
      textbook_differs += textbook != ort;
    }
    INFO("grid triple " << t << ": s = " << g[0].scale << ", " << g[1].scale << ", " << g[2].scale
                        << ", z = " << g[0].zero_point << ", " << g[1].zero_point << ", " << g[2].zero_point);
    CHECK(differ == 0);
  }
  MESSAGE("QLinearAdd: the textbook formula differs from ONNX Runtime on " << textbook_differs
          << " of " << 6 * n << " pairs; qkit's on none");
}
}  // namespace unit_quantsim_onnx
