// qkit/nn/loss.hpp — softmax cross-entropy, the classification loss: mean over the batch of
// −log softmax(logits)[label], with its gradient (softmax − one_hot) / N. Computed per row with
// the max subtracted, so large logits do not overflow.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

#include "../tensor/thread_pool.hpp"
#include "layer.hpp"

namespace qkit::nn {

struct cross_entropy_result {
  float loss = 0.0f;     ///< mean over the batch
  tensor grad;           ///< d loss / d logits, [N, K]
  std::size_t correct = 0;  ///< rows whose arg-max equals the label
};

/// Index of the largest logit of row n (the first one on ties).
inline std::size_t argmax_row(const tensor& logits, std::size_t n) {
  const std::size_t K = logits.shape(1);
  const float* r = logits.data() + n * K;
  std::size_t best = 0;
  for (std::size_t k = 1; k < K; ++k)
    if (r[k] > r[best]) best = k;
  return best;
}

/// logits [N, K]; labels any indexable range of N integers in [0, K).
template <class Labels>
cross_entropy_result softmax_cross_entropy(const tensor& logits, const Labels& labels) {
  QKIT_PRECONDITION(logits.dimension() == 2, shape_error,
                    "softmax_cross_entropy: logits have shape ", shape_string(logits.shape()),
                    ", expected [N, classes]");
  const std::size_t N = logits.shape(0), K = logits.shape(1);
  QKIT_PRECONDITION(std::size(labels) == N, shape_error, "softmax_cross_entropy: ",
                    std::size(labels), " labels for ", N, " rows of logits");
  for (std::size_t n = 0; n < N; ++n)
    QKIT_PRECONDITION(std::size_t(labels[n]) < K && labels[n] >= 0, config_error,
                      "softmax_cross_entropy: label ", +labels[n], " of row ", n,
                      " is outside [0, ", K, ")");
  cross_entropy_result r;
  r.grad = tensor::from_shape({N, K});
  std::vector<double> row_loss(N);
  std::vector<unsigned char> hit(N);
  // exp() makes a row cost about as much as streaming 8 elements per class.
  parallel_for(0, N, grain_for(8 * K), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t n = lo; n < hi; ++n) {
      const float* z = logits.data() + n * K;
      float* g = r.grad.data() + n * K;
      float m = z[0];
      for (std::size_t k = 1; k < K; ++k) m = std::max(m, z[k]);
      double denom = 0.0;
      for (std::size_t k = 0; k < K; ++k) denom += std::exp(double(z[k] - m));
      const std::size_t label = std::size_t(labels[n]);
      row_loss[n] = std::log(denom) - double(z[label] - m);
      for (std::size_t k = 0; k < K; ++k)
        g[k] = float((std::exp(double(z[k] - m)) / denom - (k == label ? 1.0 : 0.0)) / double(N));
      hit[n] = argmax_row(logits, n) == label;
    }
  });
  double total = 0.0;
  for (std::size_t n = 0; n < N; ++n) {
    total += row_loss[n];
    r.correct += hit[n];
  }
  r.loss = N ? float(total / double(N)) : 0.0f;
  return r;
}

}  // namespace qkit::nn
