// QuantSim's integer target mode (sim_mode::onnxruntime_cpu) on small models: the arithmetic
// of QLinearGemm worked by hand from chosen encodings, where it differs from the float
// simulation and why, and the refusals: ops and precisions the target does not run in integer
// arithmetic, encodings its requantization cannot carry, training. The bit-for-bit comparison
// with ONNX Runtime itself is in tests/fashion (the trained model and three random variants) and
// tests/sim/unit-quantsim-onnx.cpp (QLinearAdd on every pair of inputs).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>

#include <qkit/io/encodings_file.hpp>
#include <qkit/nn/nn.hpp>
#include <qkit/sim/quantsim.hpp>

namespace unit_quantsim_integer {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit;

namespace {

template <class Model, class Preset = presets::w8a8>
using int_sim = quantsim<Model, Preset, minmax_range, minmax_range, rounding::half_even,
                         sim_mode::onnxruntime_cpu>;

fs::path out_dir() {
  fs::path d = fs::path(QKIT_TEST_OUTPUT) / "sim_integer";
  fs::create_directories(d);
  return d;
}

tensor input_2(float a, float b) {
  tensor x = tensor::from_shape({1, 2});
  x.data()[0] = a;
  x.data()[1] = b;
  return x;
}

// One linear layer y = 0.5·x0 − 0.25·x1 + bias, with encodings chosen so that the integer
// arithmetic can be followed by hand: input scale 1/64 and zero point 128, weights scale 1/128
// (0.5 → 64, −0.25 → −32), output scale 1/32 and zero point 16. The requantization multiplier is
// (1/64)(1/128)/(1/32) = 1/256 and the bias is quantized at s_x·s_w = 1/8192.
auto make_linear(float bias) {
  auto m = nn::sequential(nn::linear(2, 1));
  auto& l = std::get<0>(m.children());
  l.weight().data()[0] = 0.5f;
  l.weight().data()[1] = -0.25f;
  l.bias().data()[0] = bias;
  return m;
}

template <class Sim>
fs::path write_hand_encodings(Sim& sim, const std::string& name, double out_scale = 1.0 / 32) {
  const fs::path p = out_dir() / (name + ".encodings");
  sim.export_encodings(p);
  io::encodings_file f = io::read_encodings(p);
  auto set = [](std::vector<encoding>& e, double scale, std::int64_t offset) {
    REQUIRE(e.size() == 1);
    e[0].scale = scale;
    e[0].offset = offset;
    e[0].min = scale * double(offset);
    e[0].max = scale * (double(offset) + e[0].steps());
  };
  REQUIRE(f.activation_encodings.count("input"));
  REQUIRE(f.activation_encodings.count("0"));
  REQUIRE(f.param_encodings.count("0.weight"));
  set(f.activation_encodings["input"], 1.0 / 64, -128);
  set(f.activation_encodings["0"], out_scale, -16);
  set(f.param_encodings["0.weight"], 1.0 / 128, -128);
  io::write_encodings(f, p);
  return p;
}

template <class Sim>
void set_hand_encodings(Sim& sim, const std::string& name) {
  sim.compute_encodings([](auto& s) { (void)s.forward(input_2(1.0f, -1.0f)); });
  sim.load_encodings(write_hand_encodings(sim, name));
}

}  // namespace

TEST_CASE("integer mode: QGemm worked by hand") {
  // x = [0.25, −0.5] → uint8 144, 96 (x − z: 16, −32); bias 0.1 → round(819.2) = 819;
  // acc = 16·64 + (−32)(−32) + 819 = 2867; 2867/256 = 11.199 → 11; + 16 = 27 → (27 − 16)/32.
  auto model = make_linear(0.1f);
  int_sim<decltype(model)> sim(model, input_2(0, 0));
  set_hand_encodings(sim, "qgemm_hand");
  const tensor y = sim.forward(input_2(0.25f, -0.5f));
  CHECK(y.data()[0] == 11.0f / 32.0f);
  // Near the ends of the input grid: x = [1.9, −1.9] → 250, 6 (122, −122 after z);
  // acc = 122·64 + 122·32 + 819 = 12531 → 48.9 → 49, + 16 = 65 → 49/32.
  CHECK(sim.forward(input_2(1.9f, -1.9f)).data()[0] == 49.0f / 32.0f);
  // Saturation at the bottom of the output grid: −x gives acc = −12531 + 2·819 = −10893 → −42.6 → −43, but the grid
  // reaches only 0 − 16 = −16 steps below zero.
  CHECK(sim.forward(input_2(-1.9f, 1.9f)).data()[0] == -16.0f / 32.0f);
}

TEST_CASE("integer mode: the int32 bias rounds where the float simulation does not") {
  // bias = 128.4/8192: ORT quantizes it to 128, so at x = 0 the accumulator is 128 and
  // 128/256 = 0.5 rounds half to even: output 0. The float simulation keeps the float bias:
  // 128.4/256 = 0.5016 → 1 step, 1/32. One step of difference, which the integer mode models.
  const float bias = 128.4f / 8192.0f;
  auto model = make_linear(bias);
  int_sim<decltype(model)> sim(model, input_2(0, 0));
  set_hand_encodings(sim, "bias_round");
  CHECK(sim.forward(input_2(0.0f, 0.0f)).data()[0] == 0.0f);

  quantsim<decltype(model)> float_sim(model, input_2(0, 0));
  set_hand_encodings(float_sim, "bias_round_float");
  CHECK(float_sim.forward(input_2(0.0f, 0.0f)).data()[0] == 1.0f / 32.0f);
}

TEST_CASE("integer mode refuses what the target does not run in integer arithmetic") {
  auto small = nn::sequential(nn::conv2d(1, 4, 3, {.padding = 1}), nn::relu(), nn::global_avg_pool(),
                              nn::flatten(), nn::linear(4, 2));
  nn::init_parameters(small, 3);
  const tensor x = tensor::from_shape({1, 1, 6, 6});
  auto message_of = [](auto&& construct) -> std::string {
    try {
      construct();
    } catch (const config_error& e) {
      return e.what();
    }
    return "";
  };
  // 16-bit and float16 activations: ONNX Runtime runs those QDQ pairs in float.
  const std::string a16 = message_of([&] { int_sim<decltype(small), presets::w8a16> s(small, x); });
  CHECK(a16.find("16-bit activation") != std::string::npos);
  CHECK(a16.find("'input'") != std::string::npos);
  const std::string f16 = message_of([&] { int_sim<decltype(small), presets::fp16> s(small, x); });
  CHECK(f16.find("float16") != std::string::npos);
  // An op the mode does not simulate, named.
  auto pooled = nn::sequential(nn::conv2d(1, 4, 3, {.padding = 1}), nn::relu(),
                               nn::max_pool(2, 2), nn::flatten(), nn::linear(36, 2));
  nn::init_parameters(pooled, 4);
  const std::string mp = message_of([&] { int_sim<decltype(pooled)> s(pooled, x); });
  CHECK(mp.find("'2'") != std::string::npos);
  CHECK(mp.find("does not simulate") != std::string::npos);
  // W8A8 of the same small model is accepted.
  CHECK(message_of([&] { int_sim<decltype(small)> s(small, x); }).empty());
  // Training: QAT belongs to the float mode.
  int_sim<decltype(small)> sim(small, x);
  CHECK_THROWS_AS(sim.set_training(true), config_error);
  // No encodings yet: a clear error, not garbage.
  CHECK_THROWS_WITH_AS(sim.forward(x), doctest::Contains("no encodings yet"), config_error);
}

TEST_CASE("integer mode: encodings the requantization cannot carry are refused on load, sim unchanged") {
  auto model = make_linear(0.1f);
  int_sim<decltype(model)> sim(model, input_2(0, 0));
  set_hand_encodings(sim, "tiny_before");
  const tensor x = input_2(0.25f, -0.5f);
  const float before = sim.forward(x).data()[0];
  REQUIRE(before == 11.0f / 32.0f);
  // An output scale of 1e-41 is a float32 subnormal: the target has no positive normal float
  // for it (nor for the multiplier s_x·s_w/s_y it would divide by).
  const fs::path bad = write_hand_encodings(sim, "tiny", 1e-41);
  CHECK_THROWS_WITH_AS(sim.load_encodings(bad), doctest::Contains("'0' has scale"), config_error);
  // The failed load left the encodings that were there.
  CHECK(sim.activation_quantizer("0").encodings().at(0).scale == doctest::Approx(1.0 / 32));
  CHECK(sim.forward(x).data()[0] == before);
}

}  // namespace unit_quantsim_integer
