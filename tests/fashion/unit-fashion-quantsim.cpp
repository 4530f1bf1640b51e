// QuantSim on the trained Fashion-MNIST model (the committed weights of tests/fashion/data/):
// the FP32 check, accuracy per precision, and the exported ONNX model run in ONNX Runtime on
// all 10,000 test images.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>

#include <qkit/data/dataset.hpp>
#include <qkit/io/idx.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/sim/calibrate.hpp>

#include "../../examples/models/fashion_mobilenet.hpp"
#include "../../examples/models/quantize_pipeline.hpp"
#include "../../examples/models/training.hpp"
#include "export/ort_runner.hpp"

namespace fs = std::filesystem;
using namespace qkit;

namespace {

data::dataset load_split(bool train) {
  auto d = io::load_fashion_mnist(QKIT_FASHION_MNIST, train);
  fashion::normalize(d.images, fashion::pixel_mean, fashion::pixel_std);
  return data::dataset(std::move(d.images), d.labels);
}

struct fashion_data {
  fashion::model_type model = fashion::make_model();
  data::dataset test, calib;  // the example's calibration set, from the training images
  fashion_data() : test(load_split(false)), calib(fashion::calibration_set(load_split(true))) {
    nn::load_weights(model, QKIT_FASHION_MODEL);
  }
};

const fashion_data& fixture() {
  static const fashion_data d;
  return d;
}

tensor first_images(std::size_t n) { return data::first(fixture().test, n).samples(); }

bool bit_identical(const tensor& a, const tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

fs::path out_dir() {
  const fs::path d = fs::path(QKIT_TEST_OUTPUT) / "fashion";
  fs::create_directories(d);
  return d;
}

}  // namespace

TEST_CASE("trained model: QuantSim with quantizers off or at 32 bits is bit-identical to FP32") {
  auto folded = fixture().model;
  fold_batch_norms(folded);
  const tensor x = first_images(500);
  const tensor expected = nn::forward(folded, x);

  quantsim<fashion::model_type, presets::w8a8> sim(fixture().model, first_images(1));
  calibrate(sim, fixture().calib, 1000);
  CHECK_FALSE(bit_identical(sim.forward(x), expected));
  sim.set_all_enabled(false);
  CHECK(bit_identical(sim.forward(x), expected));

  quantsim<fashion::model_type, presets::fp32> sim32(fixture().model, first_images(1));
  calibrate(sim32, fixture().calib, 1000);
  CHECK(bit_identical(sim32.forward(x), expected));
}

TEST_CASE("trained model: accuracy per precision") {
  auto& d = fixture();
  auto model = d.model;
  const double fp32 = nn::evaluate(model, d.test);
  CHECK(fp32 >= 0.90);
  auto run = [&](auto preset_tag) {
    using P = decltype(preset_tag);
    const auto r = fashion::simulate_precision<P>(d.model, d.calib, d.test);
    MESSAGE(r.label << ": " << 100.0 * r.accuracy << "% (FP32 " << 100.0 * fp32 << "%)");
    return r.accuracy;
  };
  // 16-bit and float16 lose nothing that matters; 8 bits little; 4-bit weights need per-channel.
  CHECK(run(presets::w16a16{}) >= fp32 - 0.002);
  CHECK(run(presets::fp16{}) >= fp32 - 0.002);
  CHECK(run(presets::w8a16{}) >= fp32 - 0.01);
  CHECK(run(presets::w8a8{}) >= fp32 - 0.015);
  CHECK(run(presets::w8a8_per_channel{}) >= fp32 - 0.015);
  CHECK(run(presets::w4a8_per_channel{}) >= fp32 - 0.08);
}

namespace {

// Exports `sim`, runs the 10,000 test images through ONNX Runtime at `opt`, and compares the
// logits with QuantSim's: top-1 agreement and the largest difference in output steps.
template <class Sim>
void compare_with_ort(Sim& sim, const std::string& name, const std::string& opt,
                      double min_agreement, double max_steps) {
  const fs::path path = out_dir() / (name + ".onnx");
  export_onnx(sim, path);
  const tensor& x = fixture().test.samples();
  const tensor y = sim.forward(x);
  std::vector<float> in(x.begin(), x.end()), out;
  REQUIRE(qkit_test::run_ort(path, in, {std::int64_t(x.shape(0)), 1, 28, 28}, out, opt));
  REQUIRE(out.size() == y.size());
  const std::size_t N = x.shape(0), K = y.shape(1);
  const double step = sim.activation_quantizer("classifier").encodings().at(0).scale;
  std::size_t agree = 0;
  double max_diff = 0;
  for (std::size_t i = 0; i < N; ++i) {
    std::size_t a = 0, b = 0;
    for (std::size_t k = 0; k < K; ++k) {
      max_diff = std::max(max_diff, std::fabs(double(out[i * K + k]) - y.data()[i * K + k]));
      if (out[i * K + k] > out[i * K + a]) a = k;
      if (y.data()[i * K + k] > y.data()[i * K + b]) b = k;
    }
    agree += a == b;
  }
  const double agreement = double(agree) / double(N);
  MESSAGE(name << " in ONNX Runtime (optimizations " << opt << "): top-1 agreement "
               << 100.0 * agreement << "% of " << N << ", max logit difference "
               << max_diff / step << " output steps");
  CHECK(agreement >= min_agreement);
  CHECK(max_diff <= max_steps * step * 1.0001);
}

}  // namespace

TEST_CASE("trained model: exported QDQ ONNX runs in ONNX Runtime like QuantSim") {
  auto& d = fixture();
  {
    quantsim<fashion::model_type, presets::w8a8> sim(d.model, first_images(1));
    calibrate(sim, d.calib, 1000);
    compare_with_ort(sim, "fashion_w8a8", "disabled", 0.999, 1.0);
    // ORT's default level fuses QDQ into integer kernels (QLinearConv...), whose requantization
    // a float simulation does not reproduce exactly: agreement is lower, differences larger.
    compare_with_ort(sim, "fashion_w8a8", "all", 0.98, 1e9);
  }
  {
    quantsim<fashion::model_type, presets::w4a8_per_channel> sim(d.model, first_images(1));
    calibrate(sim, d.calib, 1000);
    compare_with_ort(sim, "fashion_w4a8_pc", "disabled", 0.999, 1.0);
  }
}
