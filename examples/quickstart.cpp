// The README's quickstart: build a small network, simulate it at W8A8, calibrate, export.
#include <qkit/qkit.hpp>

#include <cstdio>
#include <random>

int main() {
  using namespace qkit;
  using namespace qkit::nn;

  auto model = sequential(conv2d(1, 8, 3, {.padding = 1}), batch_norm(8), relu6(),
                          global_avg_pool(), flatten(), linear(8, 10));
  init_parameters(model, /*seed=*/1);

  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  auto images = [&](std::size_t n) {
    tensor x = tensor::from_shape({n, 1, 28, 28});
    for (auto& v : x) v = normal(rng);
    return x;
  };

  // W8A8 with AIMET's default config: batch norms folded, supergroups fused, quantizers placed.
  quantsim<decltype(model), presets::w8a8> sim(model, images(16));
  // Calibrate on 128 samples, forwarded in batches of 16.
  const data::dataset calibration(images(128));
  calibrate(sim, calibration, calibration.size(), 16);

  const tensor logits = sim.forward(images(16));
  std::printf("logits shape [%zu, %zu]\n%s", logits.shape(0), logits.shape(1),
              sim.summary().c_str());
  sim.export_encodings("quickstart_encodings.json");  // AIMET's 1.0.0 format
  return 0;
}
