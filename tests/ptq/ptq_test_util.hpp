// tests/ptq/ptq_test_util.hpp — what the PTQ unit tests share: seeded normal data.
#pragma once

#include <cstdint>
#include <random>

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

}  // namespace ptq_test
