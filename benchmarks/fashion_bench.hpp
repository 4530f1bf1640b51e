// benchmarks/fashion_bench.hpp — what the benchmarks on the Fashion-MNIST model share: the first
// training images, normalized as the example normalizes them, and the model with seeded
// weights (timing does not depend on the weights' values, so it is not trained).
#pragma once

#include <cstddef>
#include <map>

#include <qkit/data/dataset.hpp>
#include <qkit/io/idx.hpp>

#include "../examples/models/fashion_mobilenet.hpp"
#include "../examples/models/training.hpp"

namespace fashion_bench {

/// The first `n` training images, loaded once per count.
inline const qkit::data::dataset& training_images(std::size_t n) {
  static std::map<std::size_t, qkit::data::dataset> cache;
  auto it = cache.find(n);
  if (it == cache.end()) {
    auto d = qkit::io::load_fashion_mnist(QKIT_FASHION_MNIST, true, n);
    fashion::normalize(d.images, fashion::pixel_mean, fashion::pixel_std);
    it = cache.emplace(n, qkit::data::dataset(std::move(d.images))).first;
  }
  return it->second;
}

inline fashion::model_type seeded_model() {
  auto m = fashion::make_model();
  qkit::nn::init_parameters(m, 1);
  return m;
}

}  // namespace fashion_bench
