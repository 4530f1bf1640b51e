// qkit/tensor/conv.hpp — 2-D convolution (NCHW, cross-correlation as in ONNX Conv / PyTorch):
// forward, gradient with respect to the input and gradient with respect to the weights, for
// any kernel size, stride, asymmetric padding, dilation and group count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

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
// Fast kernels. Three paths, chosen by shape only (never by thread count):
//  - one input channel per group (depthwise, with or without a channel multiplier): direct SIMD
//    loops over a zero-padded copy of each input plane;
//  - 1×1, stride 1, unpadded: the convolution is a GEMM on the tensors as they are;
//  - everything else: im2col (or col2im) and GEMM.
// Each output element is produced by one task with a fixed order of accumulation, so results
// do not depend on the thread count.

namespace detail {

enum class conv_path { depthwise, pointwise, im2col };

inline conv_path choose_conv_path(const conv2d_shape& s) {
  if (s.channels_per_group() == 1) return conv_path::depthwise;
  if (s.KH == 1 && s.KW == 1 && s.p.stride_h == 1 && s.p.stride_w == 1 && s.p.pad_top == 0 &&
      s.p.pad_left == 0 && s.p.pad_bottom == 0 && s.p.pad_right == 0)
    return conv_path::pointwise;
  return conv_path::im2col;
}

/// For output row/column o and kernel tap k: the valid output range [lo, hi) whose input
/// index o·stride + k·dilation − pad lies inside [0, size).
inline void valid_output_range(std::size_t size, std::size_t out, std::size_t stride,
                               std::size_t offset /* k·dilation */, std::size_t pad,
                               std::size_t& lo, std::size_t& hi) {
  // o·stride + offset ≥ pad  and  o·stride + offset < pad + size
  lo = offset >= pad ? 0 : (pad - offset + stride - 1) / stride;
  hi = pad + size > offset ? (pad + size - offset + stride - 1) / stride : 0;
  hi = std::min(hi, out);
  lo = std::min(lo, hi);
}

/// col[(c·KH + kh)·KW + kw][oh·OW + ow] = x[c][oh·sh − pt + kh·dh][ow·sw − pl + kw·dw] (zero
/// outside), for `channels` channels of one image; rows of col are ldcol apart.
inline void im2col(const conv2d_shape& s, std::size_t channels, const float* x, float* col,
                   std::size_t ldcol) {
  const std::size_t OH = s.OH(), OW = s.OW();
  const auto& p = s.p;
  for (std::size_t c = 0; c < channels; ++c)
    for (std::size_t kh = 0; kh < s.KH; ++kh) {
      std::size_t oh_lo, oh_hi;
      valid_output_range(s.H, OH, p.stride_h, kh * p.dilation_h, p.pad_top, oh_lo, oh_hi);
      for (std::size_t kw = 0; kw < s.KW; ++kw) {
        std::size_t ow_lo, ow_hi;
        valid_output_range(s.W, OW, p.stride_w, kw * p.dilation_w, p.pad_left, ow_lo, ow_hi);
        float* row = col + ((c * s.KH + kh) * s.KW + kw) * ldcol;
        for (std::size_t oh = 0; oh < OH; ++oh) {
          float* dst = row + oh * OW;
          if (oh < oh_lo || oh >= oh_hi) {
            std::fill(dst, dst + OW, 0.0f);
            continue;
          }
          if (ow_lo >= ow_hi) {
            std::fill(dst, dst + OW, 0.0f);
            continue;
          }
          const float* src = x + (c * s.H + oh * p.stride_h + kh * p.dilation_h - p.pad_top) * s.W;
          std::fill(dst, dst + ow_lo, 0.0f);
          const std::size_t iw0 = ow_lo * p.stride_w + kw * p.dilation_w - p.pad_left;
          if (p.stride_w == 1) {
            std::copy(src + iw0, src + iw0 + (ow_hi - ow_lo), dst + ow_lo);
          } else {
            for (std::size_t ow = ow_lo, iw = iw0; ow < ow_hi; ++ow, iw += p.stride_w)
              dst[ow] = src[iw];
          }
          std::fill(dst + ow_hi, dst + OW, 0.0f);
        }
      }
    }
}

/// The adjoint of im2col: dx[c][ih][iw] += col[...] for every tap that read it, taps in
/// increasing (kh, kw, oh, ow) order. dx must be zeroed first.
inline void col2im(const conv2d_shape& s, std::size_t channels, const float* col,
                   std::size_t ldcol, float* dx) {
  const std::size_t OH = s.OH(), OW = s.OW();
  const auto& p = s.p;
  for (std::size_t c = 0; c < channels; ++c)
    for (std::size_t kh = 0; kh < s.KH; ++kh) {
      std::size_t oh_lo, oh_hi;
      valid_output_range(s.H, OH, p.stride_h, kh * p.dilation_h, p.pad_top, oh_lo, oh_hi);
      for (std::size_t kw = 0; kw < s.KW; ++kw) {
        std::size_t ow_lo, ow_hi;
        valid_output_range(s.W, OW, p.stride_w, kw * p.dilation_w, p.pad_left, ow_lo, ow_hi);
        if (ow_lo >= ow_hi) continue;
        const float* row = col + ((c * s.KH + kh) * s.KW + kw) * ldcol;
        const std::size_t iw0 = ow_lo * p.stride_w + kw * p.dilation_w - p.pad_left;
        for (std::size_t oh = oh_lo; oh < oh_hi; ++oh) {
          const float* src = row + oh * OW;
          float* dst = dx + (c * s.H + oh * p.stride_h + kh * p.dilation_h - p.pad_top) * s.W;
          for (std::size_t ow = ow_lo, iw = iw0; ow < ow_hi; ++ow, iw += p.stride_w)
            dst[iw] += src[ow];
        }
      }
    }
}

/// A zero-padded input plane stored by column phase, so that strided taps become contiguous:
/// element (r, j) of the padded plane sits at ((r·sw + j % sw)·Wq + j / sw).
struct phased_plane {
  std::size_t Hp, Wp, Wq, sw;
  explicit phased_plane(const conv2d_shape& s)
      : Hp(s.H + s.p.pad_top + s.p.pad_bottom),
        Wp(s.W + s.p.pad_left + s.p.pad_right),
        Wq((Wp + s.p.stride_w - 1) / s.p.stride_w),
        sw(s.p.stride_w) {}
  std::size_t size() const { return Hp * sw * Wq; }
  /// Offset of the padded row r at column j (any phase).
  std::size_t at(std::size_t r, std::size_t j) const { return (r * sw + j % sw) * Wq + j / sw; }

  void fill(const conv2d_shape& s, const float* x, float* out) const {
    std::fill(out, out + size(), 0.0f);
    for (std::size_t h = 0; h < s.H; ++h)
      for (std::size_t w = 0; w < s.W; ++w)
        out[at(h + s.p.pad_top, w + s.p.pad_left)] = x[h * s.W + w];
  }
  void extract(const conv2d_shape& s, const float* in, float* dx) const {
    for (std::size_t h = 0; h < s.H; ++h)
      for (std::size_t w = 0; w < s.W; ++w)
        dx[h * s.W + w] = in[at(h + s.p.pad_top, w + s.p.pad_left)];
  }
};

template <class Arch>
inline void depthwise_forward(const conv2d_shape& s, const float* x, const float* w,
                              const float* b, float* y) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const std::size_t OH = s.OH(), OW = s.OW(), Og = s.outputs_per_group(), taps = s.KH * s.KW;
  const std::size_t ow_vec = OW - OW % Wd;
  const phased_plane pl(s);
  const auto& p = s.p;
  parallel_for(0, s.N * s.C, 1, [&](std::size_t lo, std::size_t hi) {
    float* xp = scratch_buffer<2>(pl.size());
    for (std::size_t nc = lo; nc < hi; ++nc) {
      const std::size_t n = nc / s.C, c = nc % s.C;
      pl.fill(s, x + nc * s.H * s.W, xp);
      for (std::size_t og = 0; og < Og; ++og) {
        const std::size_t o = c * Og + og;
        const float* wo = w + o * taps;
        const float bias = b ? b[o] : 0.0f;
        float* yo = y + (n * s.O + o) * OH * OW;
        for (std::size_t oh = 0; oh < OH; ++oh) {
          float* yrow = yo + oh * OW;
          for (std::size_t ow = 0; ow < ow_vec; ow += Wd) {
            batch acc(0.0f);
            for (std::size_t kh = 0; kh < s.KH; ++kh) {
              const std::size_t r = oh * p.stride_h + kh * p.dilation_h;
              for (std::size_t kw = 0; kw < s.KW; ++kw) {
                const float* src = xp + pl.at(r, ow * p.stride_w + kw * p.dilation_w);
                acc = fused_multiply_add(batch::load_unaligned(src), batch(wo[kh * s.KW + kw]),
                                         acc);
              }
            }
            (acc + batch(bias)).store_unaligned(yrow + ow);
          }
          for (std::size_t ow = ow_vec; ow < OW; ++ow) {
            float acc = 0.0f;
            for (std::size_t kh = 0; kh < s.KH; ++kh) {
              const std::size_t r = oh * p.stride_h + kh * p.dilation_h;
              for (std::size_t kw = 0; kw < s.KW; ++kw)
                acc = std::fma(xp[pl.at(r, ow * p.stride_w + kw * p.dilation_w)],
                               wo[kh * s.KW + kw], acc);
            }
            yrow[ow] = acc + bias;
          }
        }
      }
    }
  });
}

template <class Arch>
inline void depthwise_backward_data(const conv2d_shape& s, const float* dy, const float* w,
                                    float* dx) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const std::size_t OH = s.OH(), OW = s.OW(), Og = s.outputs_per_group(), taps = s.KH * s.KW;
  const std::size_t ow_vec = OW - OW % Wd;
  const phased_plane pl(s);
  const auto& p = s.p;
  parallel_for(0, s.N * s.C, 1, [&](std::size_t lo, std::size_t hi) {
    float* dxp = scratch_buffer<2>(pl.size());
    for (std::size_t nc = lo; nc < hi; ++nc) {
      const std::size_t n = nc / s.C, c = nc % s.C;
      std::fill(dxp, dxp + pl.size(), 0.0f);
      for (std::size_t og = 0; og < Og; ++og) {
        const std::size_t o = c * Og + og;
        const float* wo = w + o * taps;
        const float* dyo = dy + (n * s.O + o) * OH * OW;
        for (std::size_t oh = 0; oh < OH; ++oh) {
          const float* dyrow = dyo + oh * OW;
          for (std::size_t kh = 0; kh < s.KH; ++kh) {
            const std::size_t r = oh * p.stride_h + kh * p.dilation_h;
            for (std::size_t kw = 0; kw < s.KW; ++kw) {
              const float wt = wo[kh * s.KW + kw];
              const batch wv(wt);
              float* dst = dxp + pl.at(r, kw * p.dilation_w);
              for (std::size_t ow = 0; ow < ow_vec; ow += Wd)
                fused_multiply_add(batch::load_unaligned(dyrow + ow), wv,
                                   batch::load_unaligned(dst + ow))
                    .store_unaligned(dst + ow);
              for (std::size_t ow = ow_vec; ow < OW; ++ow)
                dst[ow] = std::fma(dyrow[ow], wt, dst[ow]);
            }
          }
        }
      }
      pl.extract(s, dxp, dx + nc * s.H * s.W);
    }
  });
}

template <class Arch>
inline void depthwise_backward_weight(const conv2d_shape& s, const float* x, const float* dy,
                                      float* dw, float* db) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const std::size_t OH = s.OH(), OW = s.OW(), Og = s.outputs_per_group(), taps = s.KH * s.KW;
  const std::size_t ow_vec = OW - OW % Wd;
  const phased_plane pl(s);
  const auto& p = s.p;
  parallel_for(0, s.O, 1, [&](std::size_t lo, std::size_t hi) {
    float* xp = scratch_buffer<2>(pl.size());
    std::vector<batch> acc(taps);
    std::vector<float> tail(taps);
    for (std::size_t o = lo; o < hi; ++o) {
      const std::size_t c = o / Og;
      std::fill(acc.begin(), acc.end(), batch(0.0f));
      std::fill(tail.begin(), tail.end(), 0.0f);
      batch bacc(0.0f);
      float btail = 0.0f;
      for (std::size_t n = 0; n < s.N; ++n) {
        pl.fill(s, x + (n * s.C + c) * s.H * s.W, xp);
        const float* dyo = dy + (n * s.O + o) * OH * OW;
        for (std::size_t oh = 0; oh < OH; ++oh) {
          const float* dyrow = dyo + oh * OW;
          for (std::size_t ow = 0; ow < ow_vec; ow += Wd) {
            const batch d = batch::load_unaligned(dyrow + ow);
            bacc += d;
            for (std::size_t kh = 0; kh < s.KH; ++kh) {
              const std::size_t r = oh * p.stride_h + kh * p.dilation_h;
              for (std::size_t kw = 0; kw < s.KW; ++kw) {
                const float* src = xp + pl.at(r, ow * p.stride_w + kw * p.dilation_w);
                batch& a = acc[kh * s.KW + kw];
                a = fused_multiply_add(batch::load_unaligned(src), d, a);
              }
            }
          }
          for (std::size_t ow = ow_vec; ow < OW; ++ow) {
            const float d = dyrow[ow];
            btail += d;
            for (std::size_t kh = 0; kh < s.KH; ++kh) {
              const std::size_t r = oh * p.stride_h + kh * p.dilation_h;
              for (std::size_t kw = 0; kw < s.KW; ++kw) {
                float& a = tail[kh * s.KW + kw];
                a = std::fma(xp[pl.at(r, ow * p.stride_w + kw * p.dilation_w)], d, a);
              }
            }
          }
        }
      }
      for (std::size_t t = 0; t < taps; ++t) dw[o * taps + t] = reduce_sum(acc[t]) + tail[t];
      if (db) db[o] = reduce_sum(bacc) + btail;
    }
  });
}

/// Adds b[o] to every element of the O planes (HW elements each) of every image.
inline void add_channel_bias(const conv2d_shape& s, const float* b, float* y) {
  const std::size_t plane = s.OH() * s.OW();
  parallel_for(0, s.N * s.O, 16, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t i = lo; i < hi; ++i) {
      const float bias = b[i % s.O];
      float* row = y + i * plane;
      for (std::size_t j = 0; j < plane; ++j) row[j] += bias;
    }
  });
}

}  // namespace detail

/// y = conv(x, w) + b (b may be nullptr).
inline void conv2d_forward(const conv2d_shape& s, const float* x, const float* w, const float* b,
                           float* y) {
  s.validate();
  using arch = xsimd::default_arch;
  const auto path = detail::choose_conv_path(s);
  if (path == detail::conv_path::depthwise) {
    detail::depthwise_forward<arch>(s, x, w, b, y);
    return;
  }
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW;
  // Images in parallel (each one's GEMMs run on its thread); a single image lets the GEMM
  // use the threads instead.
  parallel_for(0, s.N, 1, [&](std::size_t lo, std::size_t hi) {
    float* col = path == detail::conv_path::im2col ? detail::scratch_buffer<1>(Kg * P) : nullptr;
    for (std::size_t n = lo; n < hi; ++n)
      for (std::size_t g = 0; g < G; ++g) {
        const float* xg = x + (n * s.C + g * Cg) * s.H * s.W;
        float* yg = y + (n * s.O + g * Og) * P;
        if (path == detail::conv_path::im2col) detail::im2col(s, Cg, xg, col, P);
        gemm(transpose::no, transpose::no, Og, P, Kg, 1.0f, w + g * Og * Kg, Kg,
             path == detail::conv_path::im2col ? col : xg, P, 0.0f, yg, P);
      }
  });
  if (b) detail::add_channel_bias(s, b, y);
}

/// dx = conv^T(dy, w) (overwrites dx).
inline void conv2d_backward_data(const conv2d_shape& s, const float* dy, const float* w,
                                 float* dx) {
  s.validate();
  using arch = xsimd::default_arch;
  const auto path = detail::choose_conv_path(s);
  if (path == detail::conv_path::depthwise) {
    detail::depthwise_backward_data<arch>(s, dy, w, dx);
    return;
  }
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW, HW = s.H * s.W;
  parallel_for(0, s.N, 1, [&](std::size_t lo, std::size_t hi) {
    float* col = path == detail::conv_path::im2col ? detail::scratch_buffer<1>(Kg * P) : nullptr;
    for (std::size_t n = lo; n < hi; ++n)
      for (std::size_t g = 0; g < G; ++g) {
        const float* dyg = dy + (n * s.O + g * Og) * P;
        float* dxg = dx + (n * s.C + g * Cg) * HW;
        if (path == detail::conv_path::pointwise) {
          gemm(transpose::yes, transpose::no, Cg, P, Og, 1.0f, w + g * Og * Kg, Kg, dyg, P, 0.0f,
               dxg, P);
        } else {
          gemm(transpose::yes, transpose::no, Kg, P, Og, 1.0f, w + g * Og * Kg, Kg, dyg, P,
               0.0f, col, P);
          std::fill(dxg, dxg + Cg * HW, 0.0f);
          detail::col2im(s, Cg, col, P, dxg);
        }
      }
  });
}

/// dw = sum over the batch of x (*) dy (overwrites dw); db = sum of dy over N, OH, OW
/// (overwrites; db may be nullptr).
inline void conv2d_backward_weight(const conv2d_shape& s, const float* x, const float* dy,
                                   float* dw, float* db) {
  s.validate();
  using arch = xsimd::default_arch;
  const auto path = detail::choose_conv_path(s);
  if (path == detail::conv_path::depthwise) {
    detail::depthwise_backward_weight<arch>(s, x, dy, dw, db);
    return;
  }
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW;
  // dw_g = dy_g · col^T with the batch laid side by side along K, so that one large GEMM
  // (split over dw's tiles only) does the reduction. The batch is taken in chunks of a size
  // that depends on the shape alone; chunks accumulate in order with beta = 1.
  const std::size_t budget = std::size_t{1} << 22;  // floats of im2col per chunk (16 MiB)
  const std::size_t chunk = std::clamp<std::size_t>(budget / std::max<std::size_t>(Kg * P, 1),
                                                    1, s.N);
  float* col = detail::scratch_buffer<1>(Kg * chunk * P);
  float* dyc = detail::scratch_buffer<2>(Og * chunk * P);
  for (std::size_t g = 0; g < G; ++g)
    for (std::size_t n0 = 0; n0 < s.N; n0 += chunk) {
      const std::size_t nb = std::min(chunk, s.N - n0), ld = nb * P;
      parallel_for(0, nb, 1, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i) {
          const float* xg = x + ((n0 + i) * s.C + g * Cg) * s.H * s.W;
          detail::im2col(s, Cg, xg, col + i * P, ld);
          for (std::size_t o = 0; o < Og; ++o) {
            const float* src = dy + ((n0 + i) * s.O + g * Og + o) * P;
            std::copy(src, src + P, dyc + o * ld + i * P);
          }
        }
      });
      gemm(transpose::no, transpose::yes, Og, Kg, ld, 1.0f, dyc, ld, col, ld,
           n0 == 0 ? 0.0f : 1.0f, dw + g * Og * Kg, Kg);
    }
  if (db) {
    parallel_for(0, s.O, 1, [&](std::size_t lo, std::size_t hi) {
      for (std::size_t o = lo; o < hi; ++o) {
        float acc = 0.0f;
        for (std::size_t n = 0; n < s.N; ++n) {
          const float* src = dy + (n * s.O + o) * P;
          for (std::size_t i = 0; i < P; ++i) acc += src[i];
        }
        db[o] = acc;
      }
    });
  }
}

}  // namespace qkit
