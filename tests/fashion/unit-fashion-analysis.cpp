// QuantAnalyzer on the trained Fashion-MNIST model at W4A8 per-tensor, where min-max PTQ
// collapses to 10% (docs/ptq.md) and cross-layer equalization repairs it: the analyses must say
// that the weights are the cause, and point at the two depthwise convolutions whose per-tensor
// 4-bit grids CLE rescales (the example's --analyze run, docs/analysis.md, on 2,000 test images).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdio>

#include <qkit/analysis/quant_analyzer.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/sim/calibrate.hpp>

#include "fashion_fixture.hpp"

namespace unit_fashion_analysis {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;

TEST_CASE("QuantAnalyzer on the trained model: W4A8 per-tensor breaks in the weights of the two depthwise convs") {
  const auto& d = fashion_test::fixture();
  const data::dataset test = data::first(d.test, std::min<std::size_t>(2000, d.test.size()));
  quantsim<fashion::model_type, presets::w4a8> sim(d.model, data::first(d.calib, 1).samples());
  calibrate(sim, d.calib, d.calib.size());
  analysis::quant_analyzer_options opt;
  opt.results_dir = fashion_test::out_dir() / "quant_analyzer";
  analysis::quant_analyzer<decltype(sim)> qa(sim, [&](auto& s) { return nn::evaluate(s, test); }, opt);

  const auto s = qa.check_model_sensitivity_to_quantization();
  auto fp32_model = d.model;
  CHECK(s.fp32 == doctest::Approx(nn::evaluate(fp32_model, test)).epsilon(0.002));
  CHECK(s.weights_quantized < 0.2);          // the 4-bit weights alone break it
  CHECK(s.activations_quantized > s.fp32 - 0.01);  // 8-bit activations alone do not
  CHECK(s.quantized < 0.2);

  auto en = qa.per_layer_quant_enabled();
  REQUIRE(en.size() == 25);
  std::sort(en.begin(), en.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  for (const auto& [layer, score] : en) std::printf("analysis: only %-26s %.2f%%\n", layer.c_str(), 100 * score);
  // The two depthwise convs alone cost more than half the accuracy; any other layer alone
  // costs little.
  CHECK(((en[0].first == "features.4.dw.conv" && en[1].first == "features.2.dw.conv") ||
         (en[0].first == "features.2.dw.conv" && en[1].first == "features.4.dw.conv")));
  CHECK(en[1].second < 0.6);
  CHECK(en[2].second > s.fp32 - 0.03);
  CHECK(std::filesystem::exists(opt.results_dir / "per_layer_quant_enabled.json"));
}

}  // namespace unit_fashion_analysis
