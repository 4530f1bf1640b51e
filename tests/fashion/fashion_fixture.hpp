// tests/fashion/fashion_fixture.hpp — the shared fixture of the Fashion-MNIST suite: the trained
// model (the committed weights, QKIT_FASHION_MODEL), the 10,000 normalized test images and
// 2,000 training images for calibration, loaded once per test executable; and the check that an
// exported simulation runs in ONNX Runtime as it runs in qkit.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <qkit/data/dataset.hpp>
#include <qkit/io/idx.hpp>
#include <qkit/nn/nn.hpp>
#if defined(QKIT_WITH_ONNX)
#include <qkit/sim/quantsim_export.hpp>
#endif

#include "../../examples/models/fashion_mobilenet.hpp"
#include "../../examples/models/ptq_pipeline.hpp"
#include "../../examples/models/training.hpp"
#include "export/ort_runner.hpp"

namespace fashion_test {

inline qkit::data::dataset load_split(bool train) {
  auto d = qkit::io::load_fashion_mnist(QKIT_FASHION_MNIST, train);
  fashion::normalize(d.images, fashion::pixel_mean, fashion::pixel_std);
  return qkit::data::dataset(std::move(d.images), d.labels);
}

#ifndef QKIT_FASHION_TEST_IMAGES
#define QKIT_FASHION_TEST_IMAGES 0
#endif
// 0 compiles out the accuracy studies (fixtures.cmake says which and why).
#ifndef QKIT_FASHION_ACCURACY_STUDIES
#define QKIT_FASHION_ACCURACY_STUDIES 1
#endif
/// The test split, or its first QKIT_FASHION_TEST_IMAGES images (set by the sanitizer build,
/// where evaluating all 10,000 several times per test is too slow; fixtures.cmake).
inline qkit::data::dataset load_test_split() {
  qkit::data::dataset d = load_split(false);
  if (QKIT_FASHION_TEST_IMAGES > 0 && static_cast<std::size_t>(QKIT_FASHION_TEST_IMAGES) < d.size())
    return qkit::data::first(d, static_cast<std::size_t>(QKIT_FASHION_TEST_IMAGES));
  return d;
}

struct fashion_data {
  fashion::model_type model = fashion::make_model();
  qkit::data::dataset test;
  /// 2,000 training images in a seeded random order (AIMET's default calibration size); its
  /// first 1,000 are the example's calibration set (the same seed and shuffle).
  qkit::data::dataset calib;
  fashion_data() : test(load_test_split()), calib(fashion::repair_calibration_set(load_split(true))) {
    qkit::nn::load_weights(model, QKIT_FASHION_MODEL);
  }
};

inline const fashion_data& fixture() {
  static const fashion_data d;
  return d;
}

inline std::filesystem::path out_dir() {
  const std::filesystem::path d = std::filesystem::path(QKIT_TEST_OUTPUT) / "fashion";
  std::filesystem::create_directories(d);
  return d;
}

// Without qkit::onnx (the default configure) nothing is exported: the suite's accuracy and PTQ
// tests still run, its ONNX Runtime comparisons are compiled out.
#if defined(QKIT_WITH_ONNX)
// Exports `sim`, runs the 10,000 test images through ONNX Runtime at `opt`, and compares the
// logits with QuantSim's: top-1 agreement and the largest difference in output steps.
template <class Sim>
void compare_with_ort(Sim& sim, const std::string& name, const std::string& opt,
                      double min_agreement, double max_steps) {
  const std::filesystem::path path = out_dir() / (name + ".onnx");
  export_onnx(sim, path);
  const qkit::tensor& x = fixture().test.samples();
  const qkit::tensor y = sim.forward(x);
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

#endif  // QKIT_WITH_ONNX

}  // namespace fashion_test
