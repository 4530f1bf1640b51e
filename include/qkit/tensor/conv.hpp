// qkit/tensor/conv.hpp — 2-D convolution (NCHW, cross-correlation as in ONNX Conv / PyTorch):
// forward, gradient with respect to the input and gradient with respect to the weights, for
// any kernel size, stride, asymmetric padding, dilation and group count.
#pragma once

#include <cstddef>

#include "../config.hpp"
#include "../error.hpp"
#include "gemm.hpp"
#include "thread_pool.hpp"

namespace qkit {

/// Hyper-parameters of a 2-D convolution. Padding is per side because ONNX allows
/// asymmetric pads (and "SAME_UPPER" produces them).
struct conv2d_params {
  std::size_t stride_h = 1, stride_w = 1;
  std::size_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  std::size_t dilation_h = 1, dilation_w = 1;
  std::size_t groups = 1;
};

/// Sizes of one convolution: x is [N, C, H, W], w is [O, C/groups, KH, KW], y is
/// [N, O, OH, OW], b (optional) is [O].
struct conv2d_shape {
  std::size_t N = 0, C = 0, H = 0, W = 0, O = 0, KH = 0, KW = 0;
  conv2d_params p{};

  std::size_t OH() const {
    return (H + p.pad_top + p.pad_bottom - p.dilation_h * (KH - 1) - 1) / p.stride_h + 1;
  }
  std::size_t OW() const {
    return (W + p.pad_left + p.pad_right - p.dilation_w * (KW - 1) - 1) / p.stride_w + 1;
  }
  std::size_t channels_per_group() const { return C / p.groups; }
  std::size_t outputs_per_group() const { return O / p.groups; }

  /// Throws shape_error unless every size is positive, the groups divide C and O, and the
  /// dilated kernel fits inside the padded input.
  void validate() const {
    QKIT_PRECONDITION(N > 0 && C > 0 && H > 0 && W > 0 && O > 0 && KH > 0 && KW > 0, shape_error,
                      "conv2d: every size must be positive, got x [", N, ", ", C, ", ", H, ", ",
                      W, "] and w [", O, ", ", C, "/groups, ", KH, ", ", KW, "]");
    QKIT_PRECONDITION(p.stride_h > 0 && p.stride_w > 0, shape_error,
                      "conv2d: strides must be positive, got (", p.stride_h, ", ", p.stride_w,
                      ")");
    QKIT_PRECONDITION(p.dilation_h > 0 && p.dilation_w > 0, shape_error,
                      "conv2d: dilations must be positive, got (", p.dilation_h, ", ",
                      p.dilation_w, ")");
    QKIT_PRECONDITION(p.groups > 0 && C % p.groups == 0 && O % p.groups == 0, shape_error,
                      "conv2d: groups (", p.groups, ") must divide input channels (", C,
                      ") and output channels (", O, ")");
    QKIT_PRECONDITION(p.dilation_h * (KH - 1) + 1 <= H + p.pad_top + p.pad_bottom &&
                          p.dilation_w * (KW - 1) + 1 <= W + p.pad_left + p.pad_right,
                      shape_error, "conv2d: kernel ", KH, "x", KW, " with dilation (",
                      p.dilation_h, ", ", p.dilation_w, ") is larger than the padded input ",
                      H + p.pad_top + p.pad_bottom, "x", W + p.pad_left + p.pad_right);
  }
};

// ---------------------------------------------------------------------------------------------
// Scalar references: the obvious loops, the definition the fast kernels are tested against.

/// y = conv(x, w) + b; accumulation over (input channel, kh, kw) in increasing order, then + b.
inline void conv2d_forward_reference(const conv2d_shape& s, const float* x, const float* w,
                                     const float* b, float* y) {
  s.validate();
  const std::size_t OH = s.OH(), OW = s.OW(), Cg = s.channels_per_group(),
                    Og = s.outputs_per_group();
  const auto& p = s.p;
  for (std::size_t n = 0; n < s.N; ++n)
    for (std::size_t o = 0; o < s.O; ++o) {
      const std::size_t g = o / Og;
      for (std::size_t oh = 0; oh < OH; ++oh)
        for (std::size_t ow = 0; ow < OW; ++ow) {
          float acc = 0.0f;
          for (std::size_t ic = 0; ic < Cg; ++ic) {
            const std::size_t c = g * Cg + ic;
            for (std::size_t kh = 0; kh < s.KH; ++kh) {
              const std::ptrdiff_t ih = std::ptrdiff_t(oh * p.stride_h + kh * p.dilation_h) -
                                        std::ptrdiff_t(p.pad_top);
              if (ih < 0 || ih >= std::ptrdiff_t(s.H)) continue;
              for (std::size_t kw = 0; kw < s.KW; ++kw) {
                const std::ptrdiff_t iw = std::ptrdiff_t(ow * p.stride_w + kw * p.dilation_w) -
                                          std::ptrdiff_t(p.pad_left);
                if (iw < 0 || iw >= std::ptrdiff_t(s.W)) continue;
                acc += x[((n * s.C + c) * s.H + std::size_t(ih)) * s.W + std::size_t(iw)] *
                       w[((o * Cg + ic) * s.KH + kh) * s.KW + kw];
              }
            }
          }
          y[((n * s.O + o) * OH + oh) * OW + ow] = acc + (b ? b[o] : 0.0f);
        }
    }
}

/// dx = conv^T(dy, w): the gradient of the forward with respect to x (overwrites dx).
inline void conv2d_backward_data_reference(const conv2d_shape& s, const float* dy,
                                           const float* w, float* dx) {
  s.validate();
  const std::size_t OH = s.OH(), OW = s.OW(), Cg = s.channels_per_group(),
                    Og = s.outputs_per_group();
  const auto& p = s.p;
  for (std::size_t i = 0; i < s.N * s.C * s.H * s.W; ++i) dx[i] = 0.0f;
  for (std::size_t n = 0; n < s.N; ++n)
    for (std::size_t o = 0; o < s.O; ++o) {
      const std::size_t g = o / Og;
      for (std::size_t oh = 0; oh < OH; ++oh)
        for (std::size_t ow = 0; ow < OW; ++ow) {
          const float d = dy[((n * s.O + o) * OH + oh) * OW + ow];
          for (std::size_t ic = 0; ic < Cg; ++ic) {
            const std::size_t c = g * Cg + ic;
            for (std::size_t kh = 0; kh < s.KH; ++kh) {
              const std::ptrdiff_t ih = std::ptrdiff_t(oh * p.stride_h + kh * p.dilation_h) -
                                        std::ptrdiff_t(p.pad_top);
              if (ih < 0 || ih >= std::ptrdiff_t(s.H)) continue;
              for (std::size_t kw = 0; kw < s.KW; ++kw) {
                const std::ptrdiff_t iw = std::ptrdiff_t(ow * p.stride_w + kw * p.dilation_w) -
                                          std::ptrdiff_t(p.pad_left);
                if (iw < 0 || iw >= std::ptrdiff_t(s.W)) continue;
                dx[((n * s.C + c) * s.H + std::size_t(ih)) * s.W + std::size_t(iw)] +=
                    d * w[((o * Cg + ic) * s.KH + kh) * s.KW + kw];
              }
            }
          }
        }
    }
}

/// dw = sum over the batch of x (*) dy (overwrites dw); db = sum of dy over N, OH, OW
/// (overwrites db; db may be nullptr).
inline void conv2d_backward_weight_reference(const conv2d_shape& s, const float* x,
                                             const float* dy, float* dw, float* db) {
  s.validate();
  const std::size_t OH = s.OH(), OW = s.OW(), Cg = s.channels_per_group(),
                    Og = s.outputs_per_group();
  const auto& p = s.p;
  for (std::size_t o = 0; o < s.O; ++o) {
    const std::size_t g = o / Og;
    for (std::size_t ic = 0; ic < Cg; ++ic) {
      const std::size_t c = g * Cg + ic;
      for (std::size_t kh = 0; kh < s.KH; ++kh)
        for (std::size_t kw = 0; kw < s.KW; ++kw) {
          float acc = 0.0f;
          for (std::size_t n = 0; n < s.N; ++n)
            for (std::size_t oh = 0; oh < OH; ++oh) {
              const std::ptrdiff_t ih = std::ptrdiff_t(oh * p.stride_h + kh * p.dilation_h) -
                                        std::ptrdiff_t(p.pad_top);
              if (ih < 0 || ih >= std::ptrdiff_t(s.H)) continue;
              for (std::size_t ow = 0; ow < OW; ++ow) {
                const std::ptrdiff_t iw = std::ptrdiff_t(ow * p.stride_w + kw * p.dilation_w) -
                                          std::ptrdiff_t(p.pad_left);
                if (iw < 0 || iw >= std::ptrdiff_t(s.W)) continue;
                acc += x[((n * s.C + c) * s.H + std::size_t(ih)) * s.W + std::size_t(iw)] *
                       dy[((n * s.O + o) * OH + oh) * OW + ow];
              }
            }
          dw[((o * Cg + ic) * s.KH + kh) * s.KW + kw] = acc;
        }
    }
  }
  if (db) {
    for (std::size_t o = 0; o < s.O; ++o) {
      float acc = 0.0f;
      for (std::size_t n = 0; n < s.N; ++n)
        for (std::size_t i = 0; i < OH * OW; ++i) acc += dy[(n * s.O + o) * OH * OW + i];
      db[o] = acc;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fast kernels (same contracts as the references; results may differ by rounding only and
// never depend on the thread count).

/// y = conv(x, w) + b (b may be nullptr).
inline void conv2d_forward(const conv2d_shape& s, const float* x, const float* w, const float* b,
                           float* y) {
  conv2d_forward_reference(s, x, w, b, y);
}

/// dx = conv^T(dy, w) (overwrites dx).
inline void conv2d_backward_data(const conv2d_shape& s, const float* dy, const float* w,
                                 float* dx) {
  conv2d_backward_data_reference(s, dy, w, dx);
}

/// dw = sum over the batch of x (*) dy (overwrites dw); db = sum of dy over N, OH, OW
/// (overwrites; db may be nullptr).
inline void conv2d_backward_weight(const conv2d_shape& s, const float* x, const float* dy,
                                   float* dw, float* db) {
  conv2d_backward_weight_reference(s, x, dy, dw, db);
}

}  // namespace qkit
