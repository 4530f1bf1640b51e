// examples/models/training.hpp — the example's Fashion-MNIST training recipe (the one that made
// the committed fixture weights) on the library's training loop (qkit::nn::fit), and the
// normalization its data gets. Evaluation is the library's too (qkit::nn::evaluate).
#pragma once

#include <cstddef>
#include <cstdint>

#include <qkit/data/dataset.hpp>
#include <qkit/nn/fit.hpp>
#include <qkit/nn/nn.hpp>

namespace fashion {

/// (p − mean) / std, in place.
inline void normalize(qkit::tensor& images, float mean, float std) {
  qkit::scale_shift(images.data(), images.data(), images.size(), 1.0f / std, -mean / std);
}

/// The example's training recipe: seeded initialization, then SGD (Nesterov momentum 0.9,
/// weight decay 5e-4) from learning rate 0.1 with a linear warm-up over the first 200 steps and
/// cosine decay to zero over all epochs; epoch e shuffles and augments with seed
/// seed · 1000003 + e.
struct train_recipe {
  std::size_t epochs = 12;
  std::uint32_t seed = 1;
  std::size_t batch_size = 64;
  /// Random shift by up to 2 pixels and left-right flip; fill is a black pixel, normalized.
  qkit::data::augmentation augment{.max_shift = 2, .flip = true, .fill = 0.0f};
};

/// Trains `model` from a seeded initialization with the recipe; progress bar on stderr when
/// `verbose`. Returns fit's per-epoch figures.
template <class Model>
qkit::nn::fit_result train(Model& model, const qkit::data::dataset& data, const train_recipe& r,
                           bool verbose = false) {
  qkit::nn::init_parameters(model, r.seed);
  qkit::nn::sgd opt({.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  qkit::nn::fit_options o;
  o.epochs = r.epochs;
  o.batch_size = r.batch_size;
  o.seed = r.seed;
  o.augment = r.augment;
  o.lr = {.base = 0.1f, .warmup_steps = 200};
  o.verbose = verbose;
  return qkit::nn::fit(model, opt, data, o);
}

}  // namespace fashion
