// AdaRound and Sequential MSE on the trained Fashion-MNIST model (10,000 test images): the
// targets of docs/ptq.md, asserted here with fewer AdaRound steps than AIMET's default (CI
// time; the full-default figures are in the docs, from the example). Encodings come from
// 2,000 training images; AdaRound caches 1,000 of them per layer.
#include <doctest/doctest.h>

#include <cstdio>

#include <qkit/nn/evaluate.hpp>

#include "../../examples/models/ptq_pipeline.hpp"
#include "fashion_fixture.hpp"

using namespace qkit;

namespace {

// Steps per layer in CI (AIMET: 10,000, or 15,000 under 8 bits).
constexpr std::size_t ci_iterations = 2000;

template <class Preset>
double repaired(const fashion::repair& r) {
  const auto& d = fashion_test::fixture();
  fashion::repair_settings s;
  s.adaround_iterations = ci_iterations;
  const auto res = fashion::simulate_repaired<Preset>(d.model, r, d.calib, d.test, s);
  std::printf("adaround: %-44s %.2f%% (%.1f s)\n", res.label.c_str(), 100 * res.accuracy,
              res.calibration_seconds);
  std::fflush(stdout);
  return res.accuracy;
}

double fp32() {
  auto m = fashion_test::fixture().model;
  return nn::evaluate(m, fashion_test::fixture().test);
}

}  // namespace

TEST_CASE("AdaRound on the trained model: W4A8 per-channel within 0.7% of FP32") {
  const double f = fp32();
  CHECK(repaired<presets::w4a8_per_channel>({.adaround = true}) >= f - 0.007);
}

TEST_CASE("AdaRound on the trained model: W4A8 per-tensor after CLE within 1.5% of FP32") {
  const double f = fp32();
  CHECK(repaired<presets::w4a8>({.cle = true, .adaround = true}) >= f - 0.015);
}

TEST_CASE("AdaRound on the trained model: W8A8 per-tensor within 0.2% of FP32") {
  const double f = fp32();
  CHECK(repaired<presets::w8a8>({.adaround = true}) >= f - 0.002);
}
