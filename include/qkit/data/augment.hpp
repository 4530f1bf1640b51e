// qkit/data/augment.hpp — training batches of an image data set in a shuffled order, with the
// random augmentation image classifiers train with (left-right flip, shift by a few pixels).
// The random generator is the caller's, so a seed decides the order and every augmentation.
#pragma once

#include <algorithm>
#include <cstddef>
#include <random>
#include <span>
#include <vector>

#include "../error.hpp"
#include "../tensor/tensor.hpp"
#include "dataset.hpp"

namespace qkit::data {

/// Random augmentation of [N, C, H, W] images.
struct augmentation {
  int max_shift = 0;   ///< shift by up to this many pixels in each direction (0: none)
  bool flip = false;   ///< flip left-right with probability 1/2
  float fill = 0.0f;   ///< the value uncovered border pixels take (a black pixel's, normalized)
  bool any() const { return flip || max_shift > 0; }
};

/// Copies samples[indices[begin..end)] into one batch. With `rng` (and `a` asking for any), each
/// image is flipped with probability 1/2 and shifted by up to a.max_shift pixels, drawing from
/// rng in that order per image (flip bit, then y and x shift).
inline tensor gather_batch(const tensor& samples, std::span<const std::size_t> indices,
                           std::size_t begin, std::size_t end, std::mt19937* rng = nullptr,
                           const augmentation& a = {}) {
  QKIT_PRECONDITION(begin <= end && end <= indices.size(), data_error, "gather_batch: rows [",
                    begin, ", ", end, ") are outside the ", indices.size(), " indices");
  QKIT_PRECONDITION(!(rng && a.any()) || samples.dimension() == 4, shape_error,
                    "gather_batch: augmentation needs [N, C, H, W] images, the samples have shape ",
                    shape_string(samples.shape()));
  shape_type shape(samples.shape().begin(), samples.shape().end());
  shape[0] = end - begin;
  tensor batch = tensor::from_shape(shape);
  const std::size_t per = samples.shape(0) ? samples.size() / samples.shape(0) : 0;
  for (std::size_t b = 0; b < end - begin; ++b) {
    QKIT_PRECONDITION(indices[begin + b] < samples.shape(0), data_error, "gather_batch: index ",
                      indices[begin + b], " is outside the ", samples.shape(0), " samples");
    const float* src = samples.data() + indices[begin + b] * per;
    float* dst = batch.data() + b * per;
    if (!rng || !a.any()) {
      std::copy(src, src + per, dst);
      continue;
    }
    const std::size_t C = samples.shape(1), H = samples.shape(2), W = samples.shape(3);
    const bool flip = a.flip && ((*rng)() & 1u) != 0;
    std::uniform_int_distribution<int> shift(-a.max_shift, a.max_shift);
    const int dy = shift(*rng), dx = shift(*rng);
    for (std::size_t c = 0; c < C; ++c)
      for (std::size_t y = 0; y < H; ++y)
        for (std::size_t x = 0; x < W; ++x) {
          const int sy = int(y) - dy;
          int sx = int(x) - dx;
          if (flip) sx = int(W) - 1 - sx;
          dst[(c * H + y) * W + x] = (sy < 0 || sy >= int(H) || sx < 0 || sx >= int(W))
                                         ? a.fill
                                         : src[(c * H + std::size_t(sy)) * W + std::size_t(sx)];
        }
  }
  return batch;
}

/// labels[indices[begin..end)] as ints.
inline std::vector<int> gather_labels(std::span<const label_type> labels,
                                      std::span<const std::size_t> indices, std::size_t begin,
                                      std::size_t end) {
  std::vector<int> out(end - begin);
  for (std::size_t b = begin; b < end; ++b) out[b - begin] = int(labels[indices[b]]);
  return out;
}

}  // namespace qkit::data
