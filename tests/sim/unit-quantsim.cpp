// QuantSim on a small synthetic network that has every structure the real one has: conv-bn-
// relu6, a residual block with a depthwise conv, add+relu, pooling and a classifier.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <qkit/nn/nn.hpp>
#include <qkit/nn/batch_norm_fold.hpp>
#include <qkit/sim/quantsim.hpp>

namespace unit_quantsim {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit;

namespace {

auto make_model(std::uint32_t seed = 7) {
  using namespace qkit::nn;
  auto m = sequential(
      conv2d(1, 8, 3, {.stride = 1, .padding = 1, .bias = false}), batch_norm(8), relu6(),
      residual(sequential(conv2d(8, 8, 1), batch_norm(8), relu(),
                          conv2d(8, 8, 3, {.padding = 1, .groups = 8}), batch_norm(8))),
      relu(), global_avg_pool(), flatten(), linear(8, 4));
  init_parameters(m, seed);
  // Non-trivial batch-norm statistics, so that folding really changes the weights.
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(0.5f, 1.5f), c(-0.3f, 0.3f);
  for_each_parameter(m, [&](const std::string& name, tensor& v, tensor*) {
    if (name.ends_with("running_var")) for (auto& x : v) x = u(rng);
    if (name.ends_with("running_mean")) for (auto& x : v) x = c(rng);
  });
  return m;
}

tensor random_input(std::size_t n, std::uint32_t seed) {
  tensor x = tensor::from_shape({n, 1, 12, 12});
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.5f, 1.0f);
  for (auto& v : x) v = d(rng);
  return x;
}

template <class Sim>
void calibrate(Sim& sim) {
  sim.compute_encodings([](auto& s) {
    for (std::uint32_t b = 0; b < 4; ++b) (void)s.forward(random_input(8, 100 + b));
  });
}

bool bit_identical(const tensor& a, const tensor& b) {
  if (a.shape() != b.shape()) return false;
  return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

fs::path out_dir() {
  fs::path d = fs::path(QKIT_TEST_OUTPUT) / "sim";
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("quantsim places quantizers by name and leaves none inside supergroups") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  const auto names = sim.quantizer_names();
  auto has = [&](const std::string& n) { return sim.has_quantizer(n); };
  CHECK(has("input"));
  CHECK(has("0.weight"));
  CHECK(has("0.bias"));  // folding gave the bias-less conv a bias
  CHECK(has("3.add"));
  CHECK(has("7.weight"));
  CHECK_FALSE(has("1"));  // folded batch norms are no nodes
  CHECK_FALSE(has("1.weight"));
  CHECK(sim.folded_batch_norms().size() == 3);

  // Conv+Clip, Conv+Relu and Add+Relu are fused: their first op's output is not quantized.
  CHECK_FALSE(sim.activation_quantizer("0").enabled());
  CHECK(sim.activation_quantizer("2").enabled());
  CHECK_FALSE(sim.activation_quantizer("3.0").enabled());
  CHECK(sim.activation_quantizer("3.3").enabled());  // dw conv feeds the add: no supergroup
  CHECK_FALSE(sim.activation_quantizer("3.add").enabled());
  CHECK(sim.activation_quantizer("4").enabled());
  CHECK(sim.activation_quantizer("7").enabled());
  CHECK(sim.activation_quantizer("input").enabled());
  // AIMET's default: weights symmetric, biases not quantized.
  CHECK(sim.param_quantizer("0.weight").enabled());
  CHECK(sim.param_quantizer("0.weight").settings().s.symmetric);
  CHECK_FALSE(sim.param_quantizer("0.bias").enabled());
  CHECK_FALSE(sim.activation_quantizer("2").settings().s.symmetric);

  CHECK_THROWS_WITH_AS(sim.param_quantizer("nope.weight"),
                       doctest::Contains("no parameter quantizer named 'nope.weight'"),
                       config_error);
}

TEST_CASE("quantsim with every quantizer off, or at 32 bits, is bit-identical to the FP32 model") {
  auto model = make_model();
  auto folded = model;
  fold_batch_norms(folded);
  const tensor x = random_input(5, 42);
  const tensor expected = nn::forward(folded, x);

  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  CHECK_FALSE(bit_identical(sim.forward(x), expected));  // W8A8 changes something
  sim.set_all_enabled(false);
  CHECK(bit_identical(sim.forward(x), expected));

  quantsim<decltype(model), presets::fp32> sim32(model, random_input(2, 1));
  calibrate(sim32);
  CHECK(bit_identical(sim32.forward(x), expected));

  // `expected` comes from the fold QuantSim itself calls, so a wrong fold would pass the checks
  // above. The unfolded model (live batch norms, computed separately) is the independent truth:
  // folding only reorders float arithmetic, so the outputs agree to float rounding (a few ulps
  // per layer; 1e-5 of the output scale is ~100x that, and any folding mistake is far larger).
  const tensor unfolded = nn::forward(model, x);
  const tensor simulated = sim32.forward(x);
  REQUIRE(simulated.shape() == unfolded.shape());
  double scale = 1.0, max_diff = 0.0;
  for (std::size_t i = 0; i < unfolded.size(); ++i) {
    scale = std::max(scale, double(std::fabs(unfolded.data()[i])));
    max_diff = std::max(max_diff, double(std::fabs(simulated.data()[i] - unfolded.data()[i])));
  }
  MESSAGE("FP32 QuantSim vs the unfolded model: max difference " << max_diff << " (scale " << scale << ")");
  CHECK(max_diff <= 1e-5 * scale);
}

TEST_CASE("quantsim W8A8 stays close to FP32 and its outputs lie on their grids") {
  auto model = make_model();
  auto folded = model;
  fold_batch_norms(folded);
  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  const tensor x = random_input(8, 43);
  const tensor ref = nn::forward(folded, x);
  const tensor y = sim.forward(x);
  const auto& e = sim.activation_quantizer("7").encodings().at(0);
  double max_err = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    max_err = std::max(max_err, std::fabs(double(y.data()[i]) - ref.data()[i]));
    const double q = double(y.data()[i]) / e.scale - double(e.offset);
    CHECK(std::fabs(q - std::round(q)) < 1e-3);
  }
  CHECK(max_err < 0.1 * (e.max - e.min));
  CHECK(max_err > 0.0);
}

TEST_CASE("quantsim per-channel preset and config overrides") {
  auto model = make_model();
  quantsim<decltype(model), presets::w8a8_per_channel> pc(model, random_input(2, 1));
  calibrate(pc);
  CHECK(pc.param_quantizer("0.weight").per_channel());
  CHECK(pc.param_quantizer("0.weight").encodings().size() == 8);
  CHECK_FALSE(pc.param_quantizer("7.weight").per_channel());  // AIMET: Gemm stays per-tensor

  const sim_config cfg = parse_sim_config_text(R"({
    "defaults": {"ops": {"is_output_quantized": "True"},
                 "params": {"is_quantized": "True", "is_symmetric": "False"},
                 "per_channel_quantization": "True"},
    "params": {"bias": {"is_quantized": "True"}},
    "op_type": {"Gemm": {"per_channel_quantization": "False"}},
    "supergroups": [],
    "model_input": {"is_input_quantized": "False"},
    "model_output": {}
  })");
  quantsim sim(model, random_input(2, 1), cfg);
  calibrate(sim);
  CHECK_FALSE(sim.activation_quantizer("input").enabled());
  CHECK(sim.activation_quantizer("0").enabled());  // no supergroups now
  CHECK(sim.param_quantizer("0.weight").per_channel());
  CHECK_FALSE(sim.param_quantizer("0.weight").settings().s.symmetric);
  CHECK(sim.param_quantizer("0.bias").enabled());
  CHECK_FALSE(sim.param_quantizer("7.weight").per_channel());

  // Runtime changes by name.
  sim.set_bitwidth("3.3", 4);
  calibrate(sim);
  CHECK(sim.activation_quantizer("3.3").encodings()[0].bitwidth == 4);
  sim.set_enabled("3.3", false);
  CHECK_FALSE(sim.activation_quantizer("3.3").enabled());
}

TEST_CASE("quantsim encodings round-trip through both AIMET formats, bit for bit") {
  auto model = make_model();
  quantsim<decltype(model), presets::w4a8_per_channel> sim(model, random_input(2, 1));
  calibrate(sim);
  const tensor x = random_input(6, 44);
  const tensor y = sim.forward(x);
  for (auto v : {io::format_version::v0_6_1, io::format_version::v1_0_0}) {
    const fs::path p = out_dir() / (std::string("enc_") + io::to_string(v) + ".json");
    sim.export_encodings(p, v);
    quantsim<decltype(model), presets::w4a8_per_channel> fresh(model, random_input(2, 1));
    fresh.load_encodings(p);
    CHECK(fresh.param_quantizer("0.weight").frozen());
    CHECK(bit_identical(fresh.forward(x), y));
    // Frozen encodings survive a later calibration.
    calibrate(fresh);
    CHECK(bit_identical(fresh.forward(x), y));
  }
}

TEST_CASE("quantsim refuses encodings made for another model or another precision") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  const fs::path p = out_dir() / "w8a8.json";
  sim.export_encodings(p, io::format_version::v0_6_1);

  auto other = nn::sequential(nn::conv2d(1, 4, 3), nn::relu(), nn::global_avg_pool(),
                              nn::flatten(), nn::linear(4, 2));
  nn::init_parameters(other, 3);
  quantsim sim_other(other, random_input(2, 1));
  CHECK_THROWS_WITH_AS(sim_other.load_encodings(p), doctest::Contains("the model does not have (3): 3.0.weight, 3.3.weight, 7.weight"), format_error);

  quantsim<decltype(model), presets::w4a8> w4(model, random_input(2, 1));
  CHECK_THROWS_WITH_AS(w4.load_encodings(p), doctest::Contains("model expects int4"),
                       format_error);

  const fs::path bad = out_dir() / "corrupt.json";
  std::ofstream(bad) << "{\"version\": \"0.6.1\", \"param_encodings\": {";
  CHECK_THROWS_AS(sim.load_encodings(bad), format_error);
}

TEST_CASE("quantsim calibration and validation errors") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  CHECK_THROWS_WITH_AS(sim.compute_encodings([](auto&) {}),
                       doctest::Contains("saw no data"), calibration_error);
  // Forward before any encodings exist names the quantizer.
  CHECK_THROWS_AS(sim.forward(random_input(1, 2)), calibration_error);

  CHECK_THROWS_WITH_AS(quantsim(model, tensor::from_shape({2, 3, 12, 12})),
                       doctest::Contains("example input of shape [2, 3, 12, 12]"), shape_error);

  nn::relu shared;
  auto twice = nn::sequential(nn::conv2d(1, 2, 3), std::ref(shared), nn::conv2d(2, 2, 1),
                              std::ref(shared), nn::global_avg_pool(), nn::flatten());
  nn::init_parameters(twice, 1);
  CHECK_THROWS_WITH_AS(quantsim(twice, random_input(1, 1)), doctest::Contains("used 2 times"),
                       config_error);

  auto lone_bn = nn::sequential(nn::batch_norm(1), nn::conv2d(1, 2, 3), nn::global_avg_pool(),
                                nn::flatten());
  nn::init_parameters(lone_bn, 1);
  CHECK_THROWS_WITH_AS(quantsim(lone_bn, random_input(1, 1)),
                       doctest::Contains("BatchNormalization '0' cannot be folded"), config_error);
}

TEST_CASE("quantsim never touches the caller's layers and needs unique names") {
  nn::conv2d c(1, 2, 3, {.bias = false});
  nn::batch_norm bn(2);
  auto by_ref = nn::sequential(std::ref(c), std::ref(bn), nn::relu(), nn::global_avg_pool(),
                               nn::flatten());
  nn::init_parameters(by_ref, 1);
  const tensor w_before = c.weight();
  CHECK_THROWS_WITH_AS(quantsim(by_ref, random_input(1, 1)), doctest::Contains("held by std::ref"),
                       config_error);
  CHECK(c.weight() == w_before);
  CHECK_FALSE(bn.folded());

  auto dup = nn::sequential(nn::named("a", nn::conv2d(1, 2, 3)), nn::named("a", nn::relu()),
                            nn::global_avg_pool(), nn::flatten());
  nn::init_parameters(dup, 1);
  CHECK_THROWS_WITH_AS(quantsim(dup, random_input(1, 1)),
                       doctest::Contains("layer name 'a' is used by 2 layers"), config_error);

  auto reserved = nn::sequential(nn::named("input", nn::conv2d(1, 2, 3)), nn::relu(),
                                 nn::global_avg_pool(), nn::flatten());
  nn::init_parameters(reserved, 1);
  CHECK_THROWS_WITH_AS(quantsim(reserved, random_input(1, 1)),
                       doctest::Contains("layer name 'input' is reserved"), config_error);
}

TEST_CASE("quantsim load_encodings is all or nothing") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  const tensor x = random_input(4, 9);
  const tensor before = sim.forward(x);
  auto file = sim.encodings();
  for (auto& [name, encs] : file.param_encodings)
    for (auto& e : encs) e = encoding_from_range(-2.0, 2.0, e.bitwidth, scheme::symmetric_signed);
  auto& act = file.activation_encodings.at("7");
  act.push_back(act.front());  // two encodings for a per-tensor activation: invalid
  const fs::path p = out_dir() / "half_bad.json";
  io::write_encodings(file, p, io::format_version::v0_6_1);
  CHECK_THROWS_WITH_AS(sim.load_encodings(p), doctest::Contains("activation '7' has 2 encodings"),
                       format_error);
  CHECK_FALSE(sim.param_quantizer("0.weight").frozen());
  CHECK(bit_identical(sim.forward(x), before));
}

TEST_CASE("quantsim honours AIMET's encoding_constraints") {
  auto model = make_model();
  sim_config cfg = default_sim_config();
  cfg.op_type["Gemm"].encoding_constraints = std::pair{-1.0, 1.0};
  quantsim sim(model, random_input(2, 1), cfg);
  calibrate(sim);
  const auto& q = sim.activation_quantizer("7");
  CHECK(q.frozen());
  CHECK(q.encodings()[0].min == doctest::Approx(-1.0).epsilon(0.01));
  CHECK(q.encodings()[0].max == doctest::Approx(1.0).epsilon(0.01));
  const tensor y = sim.forward(random_input(8, 3));
  for (auto v : y) CHECK(std::fabs(v) <= 1.01f);
  // Its encodings are frozen: a new bitwidth is refused rather than reported while the 8-bit
  // grid goes on quantizing (the outputs stay on 255 steps of [-1, 1]).
  CHECK_THROWS_WITH_AS(sim.set_bitwidth("7", 4), doctest::Contains("its encodings are frozen"),
                       config_error);
  CHECK(q.bitwidth() == 8);
  CHECK(q.encodings()[0].bitwidth == 8);
}

TEST_CASE("quantsim refuses a config naming an op type it does not know") {
  // "Conv2d" (PyTorch's name) matches no layer, so it would silently leave Conv's outputs
  // quantized; the config is refused when built in code too, not only when parsed.
  auto model = make_model();
  sim_config cfg = default_sim_config();
  cfg.op_type["Conv2d"].is_output_quantized = false;
  CHECK_THROWS_WITH_AS(quantsim(model, random_input(2, 1), cfg),
                       doctest::Contains("op_type.Conv2d: unknown op type 'Conv2d'"), config_error);
  cfg = default_sim_config();
  cfg.supergroups.push_back({"Conv", "BatchNorm"});
  CHECK_THROWS_WITH_AS(quantsim(model, random_input(2, 1), cfg),
                       doctest::Contains("unknown op type 'BatchNorm'"), config_error);
}

TEST_CASE("strict symmetric grids stop at their max in both rounding modes") {
  const encoding e = encoding_from_range(-1.0, 1.0, 8, scheme::strict_symmetric);
  CHECK(e.offset == -127);
  const float x[3] = {2.0f, -2.0f, 0.5f};
  float y[3];
  for (auto r : {rounding::half_even, rounding::half_away}) {
    qdq(x, y, 3, e, r);
    CHECK(y[0] == doctest::Approx(e.max));
    CHECK(y[1] == doctest::Approx(e.min));
    CHECK(std::fabs(y[0]) == doctest::Approx(std::fabs(y[1])));
  }
}

// ---- per-layer access for passes: observers, run_layer, snapshot/restore, live batch norms ----

namespace {
struct recording_observer {
  tensor x, xq;
  std::map<std::string, tensor> inputs, before, after;
  void model_input(const tensor& a, const tensor& b) {
    x = a;
    xq = b;
  }
  template <class L>
  void layer_input(const nn::dataflow_node& n, const L&, const tensor& v) {
    inputs[n.name] = v;
  }
  template <class L>
  void layer_output(const nn::dataflow_node& n, const L&, const tensor& b, const tensor& a) {
    before[n.name] = b;
    after[n.name] = a;
  }
};
}  // namespace

TEST_CASE("quantsim observer sees the model input and every layer's input and output") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  recording_observer obs;
  const tensor x = random_input(3, 50);
  const tensor y = sim.forward(x, obs);
  CHECK(bit_identical(y, sim.forward(x)));  // observing changes nothing
  CHECK(bit_identical(obs.x, x));
  CHECK_FALSE(bit_identical(obs.xq, x));  // the input quantizer is on
  // A layer's input is its producer's quantized output (the dw conv reads the ReLU).
  CHECK(bit_identical(obs.inputs.at("3.3"), obs.after.at("3.2")));
  // Output quantizer on ("2", the ReLU6): after is on its grid and differs from before; off
  // ("0", fused with its ReLU6): identical.
  CHECK_FALSE(bit_identical(obs.before.at("2"), obs.after.at("2")));
  CHECK(bit_identical(obs.before.at("0"), obs.after.at("0")));
  CHECK(bit_identical(obs.after.at("7"), y));
  CHECK(obs.after.count("1") == 0);  // a folded batch norm is no node
}

TEST_CASE("quantsim run_layer computes one layer with the simulation's quantizers") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  recording_observer obs;
  (void)sim.forward(random_input(3, 51), obs);
  // The same layer on the same input: the same bits as inside the full forward.
  CHECK(bit_identical(sim.run_layer("3.3", obs.inputs.at("3.3")), obs.after.at("3.3")));
  CHECK(bit_identical(sim.run_layer("2", obs.inputs.at("2"), false), obs.before.at("2")));
  // Its weights are the quantized ones: the float layer gives another result.
  tensor wq = sim.quantized_parameter("3.3.weight");
  CHECK_FALSE(bit_identical(wq, sim.model().get<3>().body().get<3>().weight()));
  CHECK_THROWS_WITH_AS((void)sim.run_layer("3.add", obs.inputs.at("3.add")),
                       doctest::Contains("takes two inputs"), config_error);
  CHECK_THROWS_WITH_AS((void)sim.run_layer("nope", obs.inputs.at("2")),
                       doctest::Contains("no layer named 'nope'"), config_error);
  bool typed = false;
  sim.with_layer("3.3", [&](auto& layer) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(layer)>, nn::conv2d>)
      typed = layer.is_depthwise();
  });
  CHECK(typed);
  CHECK(sim.node("3.3").kind == nn::op_kind::depthwise_conv);
  CHECK_THROWS_WITH_AS((void)sim.node("1"), doctest::Contains("'1' is a batch norm folded into '0'"),
                       config_error);
}

TEST_CASE("quantsim snapshot and restore bring back every quantizer's state") {
  auto model = make_model();
  quantsim sim(model, random_input(2, 1));
  calibrate(sim);
  const tensor x = random_input(4, 52);
  const tensor y0 = sim.forward(x);
  const auto saved = sim.snapshot();
  sim.set_bitwidth("0.weight", 4);
  sim.compute_param_encodings();
  sim.set_enabled("2", false);
  sim.activation_quantizer("7").freeze();
  CHECK_FALSE(bit_identical(sim.forward(x), y0));
  sim.restore(saved);
  CHECK(bit_identical(sim.forward(x), y0));
  CHECK(sim.param_quantizer("0.weight").bitwidth() == 8);
  CHECK(sim.activation_quantizer("2").enabled());
  CHECK_FALSE(sim.activation_quantizer("7").frozen());
}

TEST_CASE("quantsim can keep batch norms live; the validator follows") {
  auto model = make_model();
  const quantsim_options keep{batch_norm_mode::keep};
  quantsim<decltype(model)> sim(model, random_input(2, 1), presets::w8a8::default_config(), {}, {},
                                keep);
  CHECK(sim.folded_batch_norms().empty());
  CHECK(sim.has_quantizer("1"));             // the batch norm is a node
  CHECK_FALSE(sim.activation_quantizer("0").enabled());  // conv + live BN are fused
  // and Conv+Clip / Conv+Relu fuse through the live batch norm, as through a folded one.
  CHECK_FALSE(sim.activation_quantizer("1").enabled());
  CHECK(sim.activation_quantizer("2").enabled());
  CHECK_FALSE(sim.activation_quantizer("3.1").enabled());
  CHECK(sim.activation_quantizer("3.4").enabled());  // the body's last BN feeds the add
  CHECK(sim.node("1").kind == nn::op_kind::batch_norm);
  // All quantizers off: exactly the unfolded model.
  sim.set_all_enabled(false);
  const tensor x = random_input(3, 53);
  nn::set_training(model, false);
  CHECK(bit_identical(sim.forward(x), nn::forward(model, x)));

  // A batch norm with nothing to fold into is fine when kept, an error when folded.
  auto lone = nn::sequential(nn::batch_norm(1), nn::conv2d(1, 2, 3), nn::global_avg_pool(),
                         nn::flatten());
  CHECK_NOTHROW(quantsim<decltype(lone)>(lone, random_input(1, 2),
                                         presets::w8a8::default_config(), {}, {}, keep));
  CHECK_THROWS_WITH_AS(quantsim<decltype(lone)>(lone, random_input(1, 2)),
                       doctest::Contains("cannot be folded"), config_error);
}

TEST_CASE("quantsim: a batch rejected during calibration leaves every statistic untouched") {
  // The callback catches the error and goes on, as a user skipping a bad sample would. The
  // encodings must be those of the good batches alone; for the input quantizer that is known
  // independently: min-max of data drawn in [0, 1] gives an encoding ending at most 1.
  auto good = [](std::uint32_t seed) {
    tensor x = tensor::from_shape({4, 1, 4, 4});
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    for (auto& v : x) v = u(rng);
    return x;
  };
  auto make = [] {
    auto m = nn::sequential(nn::conv2d(1, 2, 3, {.padding = 1}), nn::relu(), nn::flatten(),
                            nn::linear(32, 3));
    nn::init_parameters(m, 3);
    return m;
  };
  auto model = make();
  quantsim reference(model, good(1));
  reference.compute_encodings([&](auto& s) {
    (void)s.forward(good(10));
    (void)s.forward(good(11));
  });
  CHECK(reference.activation_quantizer("input").encodings().at(0).max <= 1.0 + 1e-6);

  // Rejected at the first layer (2 channels into a 1-channel conv), after the input quantizer
  // saw it; and rejected at the last layer (5x5 images flatten to 50, not 32), after the input
  // and the conv+relu output saw it. Both batches hold values 100 times the good range.
  tensor wrong_channels = tensor::from_shape({2, 2, 4, 4});
  tensor wrong_size = tensor::from_shape({2, 1, 5, 5});
  for (auto& v : wrong_channels) v = 100.0f;
  for (auto& v : wrong_size) v = 100.0f;
  quantsim sim(model, good(1));
  int rejected = 0;
  sim.compute_encodings([&](auto& s) {
    (void)s.forward(good(10));
    for (const tensor* bad : {&wrong_channels, &wrong_size}) {
      try {
        (void)s.forward(*bad);
      } catch (const error&) {
        ++rejected;
      }
    }
    (void)s.forward(good(11));
  });
  CHECK(rejected == 2);
  for (const char* name : {"input", "1", "3"}) {
    CAPTURE(name);
    CHECK(sim.activation_quantizer(name).encodings() == reference.activation_quantizer(name).encodings());
  }
  CHECK(sim.activation_quantizer("input").encodings().at(0).max <= 1.0 + 1e-6);
  const tensor x = good(20);
  CHECK(bit_identical(sim.forward(x), reference.forward(x)));
}

TEST_CASE("quantsim: compute_encodings and forward are bit-identical for 1 and 2 threads and run to run") {
  // Each run builds the model and the data from the same seeds; runs 0 and 2 use one thread,
  // run 1 two. Batches of 32 images of 24x24 are large enough for the kernels to split work.
  auto input = [](std::size_t n, std::uint32_t seed) {
    tensor x = tensor::from_shape({n, 1, 24, 24});
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.5f, 1.0f);
    for (auto& v : x) v = d(rng);
    return x;
  };
  struct result {
    std::vector<std::vector<encoding>> encodings;
    tensor y_minmax, y_tfe;
  };
  auto run = [&](std::size_t threads) {
    set_num_threads(threads);
    result r;
    auto model = make_model(7);
    auto collect = [&](auto& sim) {
      sim.compute_encodings([&](auto& s) {
        for (std::uint32_t b = 0; b < 3; ++b) (void)s.forward(input(32, 200 + b));
      });
      for (const auto& name : sim.quantizer_names())
        sim.with_quantizer(name, [&](auto& q) { r.encodings.push_back(q.encodings()); });
      return sim.forward(input(32, 300));
    };
    quantsim<decltype(model), presets::w8a8_per_channel> mm(model, input(2, 1));
    r.y_minmax = collect(mm);
    quantsim<decltype(model), presets::w8a8, minmax_range, tf_enhanced_range> tfe(model, input(2, 1));
    r.y_tfe = collect(tfe);
    return r;
  };
  const std::size_t before = get_num_threads();
  const result runs[3] = {run(1), run(2), run(1)};
  set_num_threads(before);
  for (int i : {1, 2}) {
    CAPTURE(i);
    CHECK(runs[i].encodings == runs[0].encodings);
    CHECK(bit_identical(runs[i].y_minmax, runs[0].y_minmax));
    CHECK(bit_identical(runs[i].y_tfe, runs[0].y_tfe));
  }
  CHECK(runs[0].encodings.size() > 10);
}
}  // namespace unit_quantsim
