// examples/models/training.hpp — the pieces of a training loop over an in-memory image
// classification data set (qkit::data::dataset) that the examples and tests share:
// normalization, batch assembly in a shuffled order with optional flip/shift augmentation, and
// one training epoch with a progress callback. Evaluation is the library's (qkit::nn::evaluate).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include <qkit/data/dataset.hpp>
#include <qkit/nn/nn.hpp>

namespace fashion {

/// (p − mean) / std, in place.
inline void normalize(qkit::tensor& images, float mean, float std) {
  qkit::scale_shift(images.data(), images.data(), images.size(), 1.0f / std, -mean / std);
}

/// Copies images[indices[begin..end)] into one [B, C, H, W] batch. With `rng`, each image is
/// flipped left-right with probability 1/2 and shifted by up to `max_shift` pixels (the
/// uncovered border takes `fill`, the normalized value of a black pixel).
inline qkit::tensor gather_batch(const qkit::tensor& images, const std::vector<std::size_t>& indices,
                                 std::size_t begin, std::size_t end, std::mt19937* rng = nullptr,
                                 int max_shift = 0, float fill = 0.0f, bool flip_lr = true) {
  const std::size_t C = images.shape(1), H = images.shape(2), W = images.shape(3), per = C * H * W;
  qkit::tensor batch = qkit::tensor::from_shape({end - begin, C, H, W});
  for (std::size_t b = 0; b < end - begin; ++b) {
    const float* src = images.data() + indices[begin + b] * per;
    float* dst = batch.data() + b * per;
    if (!rng) {
      std::copy(src, src + per, dst);
      continue;
    }
    const bool flip = flip_lr && ((*rng)() & 1u) != 0;
    std::uniform_int_distribution<int> shift(-max_shift, max_shift);
    const int dy = shift(*rng), dx = shift(*rng);
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t y = 0; y < H; ++y)
        for (std::size_t x = 0; x < W; ++x) {
          const int sy = int(y) - dy;
          int sx = int(x) - dx;
          if (flip) sx = int(W) - 1 - sx;
          dst[(c * H + y) * W + x] = (sy < 0 || sy >= int(H) || sx < 0 || sx >= int(W))
                                         ? fill
                                         : src[(c * H + std::size_t(sy)) * W + std::size_t(sx)];
        }
  }
  return batch;
}

template <class Labels>
std::vector<int> gather_labels(const Labels& labels, const std::vector<std::size_t>& indices,
                               std::size_t begin, std::size_t end) {
  std::vector<int> out(end - begin);
  for (std::size_t b = begin; b < end; ++b) out[b - begin] = int(labels[indices[b]]);
  return out;
}

/// Progress of a training epoch, reported after every batch.
struct epoch_progress {
  std::size_t epoch = 0, epochs = 0, seen = 0, total = 0;
  double loss = 0.0, accuracy = 0.0, images_per_second = 0.0;
};

struct train_settings {
  std::size_t batch_size = 64;
  int max_shift = 2;         ///< augmentation: random shift in pixels (0: none)
  bool flip = true;          ///< augmentation: random left-right flip
  float fill = 0.0f;         ///< normalized value of a black pixel
};

/// One pass over the data in a seeded random order; lr_at(step within the epoch) sets the
/// learning rate of each step. Returns the epoch's mean loss and running accuracy.
template <class Model, class Optimizer>
epoch_progress train_epoch(Model& model, Optimizer& opt, const qkit::data::dataset& data,
                           const train_settings& s, std::uint32_t seed,
                           const std::function<float(std::size_t)>& lr_at,
                           const std::function<void(const epoch_progress&)>& report) {
  QKIT_PRECONDITION(data.has_labels(), qkit::data_error, "train_epoch: the data set has no labels");
  qkit::nn::set_training(model, true);
  const qkit::tensor& images = data.samples();
  const auto labels = data.labels();
  const std::size_t N = data.size();
  std::vector<std::size_t> order(N);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::mt19937 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  epoch_progress p;
  p.total = N;
  double loss_sum = 0.0;
  std::size_t correct = 0, step = 0;
  const auto start = std::chrono::steady_clock::now();
  for (std::size_t b = 0; b < N; b += s.batch_size, ++step) {
    const std::size_t e = std::min(N, b + s.batch_size);
    std::mt19937* aug = (s.flip || s.max_shift > 0) ? &rng : nullptr;
    qkit::tensor x = gather_batch(images, order, b, e, aug, s.max_shift, s.fill, s.flip);
    const auto y = gather_labels(labels, order, b, e);
    opt.set_lr(lr_at(step));
    qkit::nn::zero_grad(model);
    auto r = qkit::nn::softmax_cross_entropy(qkit::nn::forward(model, x), y);
    (void)qkit::nn::backward(model, r.grad);
    opt.step(model);
    loss_sum += double(r.loss) * double(e - b);
    correct += r.correct;
    p.seen = e;
    p.loss = loss_sum / double(e);
    p.accuracy = double(correct) / double(e);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    p.images_per_second = secs > 0 ? double(e) / secs : 0.0;
    if (report) report(p);
  }
  return p;
}

/// The example's training recipe: seeded initialization, then SGD (Nesterov momentum 0.9,
/// weight decay 5e-4) from learning rate 0.1 with a linear warm-up over the first 200 steps and
/// cosine decay to zero over all epochs; epoch e shuffles and augments with seed
/// seed · 1000003 + e.
struct train_recipe {
  std::size_t epochs = 12;
  std::uint32_t seed = 1;
  train_settings batches;
};

template <class Model>
void train(Model& model, const qkit::data::dataset& data, const train_recipe& r,
           const std::function<void(const epoch_progress&)>& report = nullptr) {
  qkit::nn::init_parameters(model, r.seed);
  qkit::nn::sgd opt({.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f, .nesterov = true});
  const train_settings& s = r.batches;
  const std::size_t steps_per_epoch = (data.size() + s.batch_size - 1) / s.batch_size;
  const std::size_t total_steps = steps_per_epoch * r.epochs;
  const float base_lr = 0.1f;
  for (std::size_t epoch = 0; epoch < r.epochs; ++epoch) {
    const auto lr_at = [&](std::size_t step) {
      const std::size_t global = epoch * steps_per_epoch + step;
      const float warm = std::min(1.0f, float(global + 1) / 200.0f);
      return warm * qkit::nn::cosine_lr(base_lr, global, total_steps);
    };
    train_epoch(model, opt, data, s, r.seed * 1000003u + std::uint32_t(epoch), lr_at,
                [&](epoch_progress p) {
                  p.epoch = epoch + 1;
                  p.epochs = r.epochs;
                  if (report) report(p);
                });
  }
}

}  // namespace fashion
