// tests/ptq/ptq_test_util.hpp — what the PTQ and analysis unit tests share: seeded normal data
// and the small linear → ReLU → linear model whose scores they work out by hand.
#pragma once

#include <cstdint>
#include <random>

#include <qkit/nn/nn.hpp>
#include <qkit/tensor/tensor.hpp>

namespace ptq_test {

/// A tensor of `shape` with N(0, stddev²) values from std::mt19937(seed).
inline qkit::tensor normal_tensor(qkit::shape_type shape, std::uint32_t seed, float stddev = 1.0f) {
  qkit::tensor x = qkit::tensor::from_shape(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  for (auto& v : x) v = d(rng);
  return x;
}

/// linear(4, 3) → ReLU → linear(3, 2), weights and biases uniform in ±0.8 from std::mt19937(3).
inline auto small_mlp() {
  auto m = qkit::nn::sequential(qkit::nn::linear(4, 3), qkit::nn::relu(), qkit::nn::linear(3, 2));
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-0.8f, 0.8f);
  for (auto& v : m.get<0>().weight()) v = u(rng);
  for (auto& v : m.get<0>().bias()) v = u(rng);
  for (auto& v : m.get<2>().weight()) v = u(rng);
  for (auto& v : m.get<2>().bias()) v = u(rng);
  return m;
}
using small_mlp_t = decltype(small_mlp());

}  // namespace ptq_test
