// examples/models/fashion_mobilenet.hpp — the MobileNet-style classifier of the Fashion-MNIST
// example, shared by the example, the tests and the benchmarks: a conv-bn-relu6 stem,
// depthwise-separable blocks, two inverted residual blocks (expand 1x1, depthwise 3x3, linear
// project 1x1, + skip), global average pooling and a linear classifier. ~30k parameters,
// ~3 MMAC per 28x28 image: it trains on two CPU cores in minutes.
#pragma once

#include <cstddef>

#include <qkit/nn/nn.hpp>

namespace fashion {

using namespace qkit::nn;

/// Fashion-MNIST pixel statistics (of the training set, pixels in [0, 1]); inputs are
/// normalized as (p − mean) / std before the model sees them.
inline constexpr float pixel_mean = 0.2860f;
inline constexpr float pixel_std = 0.3530f;
inline constexpr std::size_t num_classes = 10;

/// Conv (no bias: the batch norm after it has one) → BN → ReLU6.
inline auto conv_bn_relu6(std::size_t in, std::size_t out, std::size_t kernel,
                          std::size_t stride = 1, std::size_t groups = 1) {
  return sequential(
      named("conv", conv2d(in, out, kernel,
                           {.stride = stride, .padding = kernel / 2, .groups = groups, .bias = false})),
      named("bn", batch_norm(out)), named("act", relu6{}));
}

/// Depthwise 3x3 (stride s) then pointwise 1x1, each followed by BN and ReLU6.
inline auto depthwise_separable(std::size_t in, std::size_t out, std::size_t stride) {
  return sequential(named("dw", conv_bn_relu6(in, in, 3, stride, in)),
                    named("pw", conv_bn_relu6(in, out, 1)));
}

/// MobileNetV2's inverted residual: expand 1x1 → depthwise 3x3 → linear project 1x1 (no
/// activation), added to its input.
inline auto inverted_residual(std::size_t channels, std::size_t expansion) {
  const std::size_t hidden = channels * expansion;
  return residual(sequential(
      named("expand", conv_bn_relu6(channels, hidden, 1)),
      named("dw", conv_bn_relu6(hidden, hidden, 3, 1, hidden)),
      named("project", sequential(named("conv", conv2d(hidden, channels, 1, {.bias = false})),
                                  named("bn", batch_norm(channels))))));
}

/// [N, 1, 28, 28] normalized images → [N, 10] logits. Layer names look like
/// "features.3.dw.conv", "features.3.add", "classifier". `width` is the stem's channel count
/// (the blocks have 2× and 4× it); the example trains the default, other widths give
/// variants of the same architecture (and the same C++ type) for tests.
inline auto make_model(std::size_t width = 16) {
  const std::size_t w1 = width, w2 = 2 * width, w3 = 4 * width;
  return sequential(
      named("features", sequential(conv_bn_relu6(1, w1, 3),          // 0: w1 x 28 x 28
                                   depthwise_separable(w1, w2, 2),   // 1: w2 x 14 x 14
                                   inverted_residual(w2, 2),         // 2
                                   depthwise_separable(w2, w3, 2),   // 3: w3 x 7 x 7
                                   inverted_residual(w3, 2))),       // 4
      named("pool", global_avg_pool{}), named("flatten", flatten{}),
      named("classifier", linear(w3, num_classes)));
}

using model_type = decltype(make_model());

}  // namespace fashion
