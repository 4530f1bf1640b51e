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
//    loops over a zero-padded, stride-phased copy of each input plane;
//  - 1×1, stride 1, unpadded: the convolution is a GEMM on the tensors as they are, and the
//    weight gradient a blocked dot-product kernel;
//  - everything else: im2col (or col2im) and GEMM.
// Planes smaller than small_plane are laid side by side, a chunk of images per GEMM. Each
// output element is produced by one task with a fixed order of accumulation, so results do
// not depend on the thread count. The depthwise gradients fall back to the references when
// a weight (backward data) or an input (backward weight) is NaN or infinite, because their
// padded grids would otherwise multiply it by the zeros they compute and discard.

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

/// col[(c·KH + kh)·KW + kw][oh·OW + ow] = x[c][oh·sh − pt + kh·dh][ow·sw − pl + kw·dw] (`pad`
/// outside: 0, or an integer input's zero point), for `channels` channels of one image; rows of
/// col are ldcol apart.
template <class T>
inline void im2col(const conv2d_shape& s, std::size_t channels, const T* x, T* col,
                   std::size_t ldcol, T pad = T{}) {
  const std::size_t OH = s.OH(), OW = s.OW();
  const auto& p = s.p;
  for (std::size_t c = 0; c < channels; ++c)
    for (std::size_t kh = 0; kh < s.KH; ++kh) {
      std::size_t oh_lo, oh_hi;
      valid_output_range(s.H, OH, p.stride_h, kh * p.dilation_h, p.pad_top, oh_lo, oh_hi);
      for (std::size_t kw = 0; kw < s.KW; ++kw) {
        std::size_t ow_lo, ow_hi;
        valid_output_range(s.W, OW, p.stride_w, kw * p.dilation_w, p.pad_left, ow_lo, ow_hi);
        T* row = col + ((c * s.KH + kh) * s.KW + kw) * ldcol;
        for (std::size_t oh = 0; oh < OH; ++oh) {
          T* dst = row + oh * OW;
          if (oh < oh_lo || oh >= oh_hi) {
            std::fill(dst, dst + OW, pad);
            continue;
          }
          if (ow_lo >= ow_hi) {
            std::fill(dst, dst + OW, pad);
            continue;
          }
          const T* src = x + (c * s.H + oh * p.stride_h + kh * p.dilation_h - p.pad_top) * s.W;
          std::fill(dst, dst + ow_lo, pad);
          const std::size_t iw0 = ow_lo * p.stride_w + kw * p.dilation_w - p.pad_left;
          if (p.stride_w == 1) {
            std::copy(src + iw0, src + iw0 + (ow_hi - ow_lo), dst + ow_lo);
          } else {
            for (std::size_t ow = ow_lo, iw = iw0; ow < ow_hi; ++ow, iw += p.stride_w)
              dst[ow] = src[iw];
          }
          std::fill(dst + ow_hi, dst + OW, pad);
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

/// even[i] = src[2i], odd[i] = src[2i + 1] for i < pairs.
inline void deinterleave2(const float* src, std::size_t pairs, float* even, float* odd) {
  std::size_t i = 0;
#if XSIMD_WITH_AVX512F
  const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (; i + 16 <= pairs; i += 16) {
    const __m512 a = _mm512_loadu_ps(src + 2 * i), b = _mm512_loadu_ps(src + 2 * i + 16);
    _mm512_storeu_ps(even + i, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd + i, _mm512_permutex2var_ps(a, io, b));
  }
  if (i < pairs) {  // the last r < 16 pairs with masked loads and stores
    const std::size_t r = pairs - i;
    const __mmask16 ma = __mmask16((1u << std::min<std::size_t>(2 * r, 16)) - 1);
    const __mmask16 mb = __mmask16((1u << (2 * r > 16 ? 2 * r - 16 : 0)) - 1);
    const __mmask16 mr = __mmask16((1u << r) - 1);
    const __m512 a = _mm512_maskz_loadu_ps(ma, src + 2 * i);
    const __m512 b = _mm512_maskz_loadu_ps(mb, src + 2 * i + 16);
    _mm512_mask_storeu_ps(even + i, mr, _mm512_permutex2var_ps(a, ie, b));
    _mm512_mask_storeu_ps(odd + i, mr, _mm512_permutex2var_ps(a, io, b));
    return;
  }
#endif
  for (; i < pairs; ++i) {
    even[i] = src[2 * i];
    odd[i] = src[2 * i + 1];
  }
}

/// The inverse of deinterleave2: dst[2i] = even[i], dst[2i + 1] = odd[i].
inline void interleave2(const float* even, const float* odd, std::size_t pairs, float* dst) {
  std::size_t i = 0;
#if XSIMD_WITH_AVX512F
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (; i + 16 <= pairs; i += 16) {
    const __m512 e = _mm512_loadu_ps(even + i), o = _mm512_loadu_ps(odd + i);
    _mm512_storeu_ps(dst + 2 * i, _mm512_permutex2var_ps(e, lo, o));
    _mm512_storeu_ps(dst + 2 * i + 16, _mm512_permutex2var_ps(e, hi, o));
  }
  if (i < pairs) {
    const std::size_t r = pairs - i;
    const __mmask16 mr = __mmask16((1u << r) - 1);
    const __mmask16 ma = __mmask16((1u << std::min<std::size_t>(2 * r, 16)) - 1);
    const __mmask16 mb = __mmask16((1u << (2 * r > 16 ? 2 * r - 16 : 0)) - 1);
    const __m512 e = _mm512_maskz_loadu_ps(mr, even + i), o = _mm512_maskz_loadu_ps(mr, odd + i);
    _mm512_mask_storeu_ps(dst + 2 * i, ma, _mm512_permutex2var_ps(e, lo, o));
    _mm512_mask_storeu_ps(dst + 2 * i + 16, mb, _mm512_permutex2var_ps(e, hi, o));
    return;
  }
#endif
  for (; i < pairs; ++i) {
    dst[2 * i] = even[i];
    dst[2 * i + 1] = odd[i];
  }
}

/// A zero-padded input plane split by row and column phase (r mod sh, j mod sw), so that
/// every kernel tap reads one contiguous run: padded element (r, j) sits at
/// ((r % sh)·sw + j % sw)·Hq·Wq + (r / sh)·Wq + j / sw, and tap (kh, kw) of output (oh, ow)
/// at tap[kh·KW + kw] + oh·Wq + ow. Outputs are computed on the "wide" grid OH × Wq (the
/// columns ow ≥ OW are computed and discarded), which makes each tap a flat 1-D run of
/// OH·Wq elements whatever the stride, padding or dilation.
template <std::size_t Lanes>
struct phased_plane {
  std::size_t sh, sw, Hq, Wq, OH, OW, wide, wide_padded;
  std::vector<std::size_t> tap;

  explicit phased_plane(const conv2d_shape& s)
      : sh(s.p.stride_h),
        sw(s.p.stride_w),
        Hq((s.H + s.p.pad_top + s.p.pad_bottom + sh - 1) / sh),
        Wq((s.W + s.p.pad_left + s.p.pad_right + sw - 1) / sw),
        OH(s.OH()),
        OW(s.OW()),
        wide(OH * Wq),
        wide_padded((OH * Wq + Lanes - 1) / Lanes * Lanes),
        tap(s.KH * s.KW) {
    for (std::size_t kh = 0; kh < s.KH; ++kh)
      for (std::size_t kw = 0; kw < s.KW; ++kw) {
        const std::size_t r = kh * s.p.dilation_h, j = kw * s.p.dilation_w;
        tap[kh * s.KW + kw] = ((r % sh) * sw + j % sw) * Hq * Wq + (r / sh) * Wq + j / sw;
      }
  }
  /// Floats of a plane buffer: the phases, plus the slack that the last vector of the last
  /// tap reads past the wide grid, rounded to whole vectors (what follows stays aligned).
  std::size_t size() const { return (sh * sw * Hq * Wq + Wq + 2 * Lanes - 1) / Lanes * Lanes; }
  std::size_t offset(std::size_t r, std::size_t j) const {
    return ((r % sh) * sw + j % sw) * Hq * Wq + (r / sh) * Wq + j / sw;
  }
  /// Writes the input plane's values into their places; the padding is never written, so a
  /// buffer zeroed once can be refilled with plane after plane.
  void fill_interior(const conv2d_shape& s, const float* x, float* out) const {
    copy_interior<true>(s, x, out);
  }
  /// Reads the interior back into a dense H×W plane (the adjoint of fill_interior).
  void extract(const conv2d_shape& s, const float* in, float* dx) const {
    copy_interior<false>(s, in, dx);
  }

 private:
  // Moves values from the dense plane to the phased buffer (ToPhased) or back. Row and column
  // phases are stepped incrementally: no division per row.
  template <bool ToPhased>
  void copy_interior(const conv2d_shape& s, const float* src, float* dst) const {
    const std::size_t HqWq = Hq * Wq, pt = s.p.pad_top;
    std::size_t rp = pt % sh, rq = pt / sh;  // phase and index of padded row r = h + pt
    for (std::size_t h = 0; h < s.H; ++h) {
      copy_row<ToPhased>(s, h, rp * sw * HqWq + rq * Wq, src, dst);
      if (++rp == sh) {
        rp = 0;
        ++rq;
      }
    }
  }

  template <bool ToPhased>
  void copy_row(const conv2d_shape& s, std::size_t h, std::size_t row, const float* src,
                float* dst) const {
    const std::size_t HqWq = Hq * Wq, pl = s.p.pad_left, dense = h * s.W;
    if (sw == 2 && s.W % 2 == 0) {
      // The common stride 2: both phases in one pass, as a SIMD (de-)interleave.
      const std::size_t e = row + (pl % 2) * HqWq + pl / 2;           // even w
      const std::size_t o = row + ((pl + 1) % 2) * HqWq + (pl + 1) / 2;  // odd w
      if constexpr (ToPhased)
        deinterleave2(src + dense, s.W / 2, dst + e, dst + o);
      else
        interleave2(src + e, src + o, s.W / 2, dst + dense);
      return;
    }
    for (std::size_t w0 = 0; w0 < sw && w0 < s.W; ++w0) {
      // Input columns w ≡ w0 (mod sw) land in one phase row, consecutively.
      const std::size_t j0 = w0 + pl;
      const std::size_t phased = row + (j0 % sw) * HqWq + j0 / sw;
      const std::size_t count = (s.W - w0 + sw - 1) / sw;
      if constexpr (ToPhased) {
        if (sw == 1) std::copy(src + dense, src + dense + count, dst + phased);
        else for (std::size_t i = 0; i < count; ++i) dst[phased + i] = src[dense + w0 + i * sw];
      } else {
        if (sw == 1) std::copy(src + phased, src + phased + count, dst + dense);
        else for (std::size_t i = 0; i < count; ++i) dst[dense + w0 + i * sw] = src[phased + i];
      }
    }
  }

 public:
  /// Spreads a dense OH×OW plane onto the wide grid, zeros in the discarded columns.
  void widen(const float* dense, float* wide_out) const {
    for (std::size_t oh = 0; oh < OH; ++oh) {
      std::copy(dense + oh * OW, dense + (oh + 1) * OW, wide_out + oh * Wq);
      std::fill(wide_out + oh * Wq + OW, wide_out + (oh + 1) * Wq, 0.0f);
    }
    std::fill(wide_out + wide, wide_out + wide_padded, 0.0f);
  }
};

/// True when no value is NaN or ±Inf (x − x is 0 exactly for finite x, NaN otherwise).
template <class Arch>
inline bool all_finite(const float* v, std::size_t n) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  batch a0(0.0f), a1(0.0f);
  std::size_t i = 0;
  for (; i + 2 * Wd <= n; i += 2 * Wd) {
    const batch x0 = batch::load_unaligned(v + i), x1 = batch::load_unaligned(v + i + Wd);
    a0 += x0 - x0;
    a1 += x1 - x1;
  }
  float acc = reduce_sum(a0 + a1);
  for (; i < n; ++i) acc += v[i] - v[i];
  return acc == 0.0f;
}

template <class Arch>
inline void depthwise_forward(const conv2d_shape& s, const float* x, const float* w,
                              const float* b, float* y) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const phased_plane<Wd> pl(s);
  const std::size_t OH = pl.OH, OW = pl.OW, Og = s.outputs_per_group(), taps = pl.tap.size();
  parallel_for(0, s.N * s.C, 1, [&](std::size_t lo, std::size_t hi) {
    float* xp = scratch_buffer<2>(pl.size() + pl.wide_padded);
    float* yw = xp + pl.size();
    std::fill(xp, xp + pl.size(), 0.0f);
    std::vector<batch> wv(taps);
    for (std::size_t nc = lo; nc < hi; ++nc) {
      const std::size_t n = nc / s.C, c = nc % s.C;
      pl.fill_interior(s, x + nc * s.H * s.W, xp);
      for (std::size_t og = 0; og < Og; ++og) {
        const std::size_t o = c * Og + og;
        for (std::size_t t = 0; t < taps; ++t) wv[t] = batch(w[o * taps + t]);
        // Four vectors at a time: four independent FMA chains hide the FMA latency.
        std::size_t i = 0;
        for (; i + 4 * Wd <= pl.wide_padded; i += 4 * Wd) {
          batch a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
          for (std::size_t t = 0; t < taps; ++t) {
            const float* src = xp + pl.tap[t] + i;
            a0 = fused_multiply_add(batch::load_unaligned(src), wv[t], a0);
            a1 = fused_multiply_add(batch::load_unaligned(src + Wd), wv[t], a1);
            a2 = fused_multiply_add(batch::load_unaligned(src + 2 * Wd), wv[t], a2);
            a3 = fused_multiply_add(batch::load_unaligned(src + 3 * Wd), wv[t], a3);
          }
          a0.store_aligned(yw + i);
          a1.store_aligned(yw + i + Wd);
          a2.store_aligned(yw + i + 2 * Wd);
          a3.store_aligned(yw + i + 3 * Wd);
        }
        for (; i < pl.wide_padded; i += Wd) {
          batch acc(0.0f);
          for (std::size_t t = 0; t < taps; ++t)
            acc = fused_multiply_add(batch::load_unaligned(xp + pl.tap[t] + i), wv[t], acc);
          acc.store_aligned(yw + i);
        }
        const float bias = b ? b[o] : 0.0f;
        float* yo = y + (n * s.O + o) * OH * OW;
        for (std::size_t oh = 0; oh < OH; ++oh)
          for (std::size_t ow = 0; ow < OW; ++ow) yo[oh * OW + ow] = yw[oh * pl.Wq + ow] + bias;
      }
    }
  });
}

#if QKIT_RUNTIME_FMA
// depthwise_forward's arithmetic in AVX2+FMA, for builds without FMA on CPUs with it (see
// QKIT_RUNTIME_FMA in gemm.hpp): each output is the same chain of fused multiply-adds over the
// taps, then the bias, so it equals an FMA build's bit for bit. One plane per call: a lambda
// would not inherit the target attribute.
__attribute__((target("avx2,fma"))) inline void depthwise_plane_fma(
    const phased_plane<8>& pl, const float* xp, const float* w, std::size_t o, float bias,
    float* yw, float* yo) {
  constexpr std::size_t Wd = 8;
  const std::size_t taps = pl.tap.size();
  std::size_t i = 0;
  for (; i + 4 * Wd <= pl.wide_padded; i += 4 * Wd) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t t = 0; t < taps; ++t) {
      const __m256 wv = _mm256_set1_ps(w[o * taps + t]);
      const float* src = xp + pl.tap[t] + i;
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(src), wv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(src + Wd), wv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(src + 2 * Wd), wv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(src + 3 * Wd), wv, a3);
    }
    _mm256_store_ps(yw + i, a0);
    _mm256_store_ps(yw + i + Wd, a1);
    _mm256_store_ps(yw + i + 2 * Wd, a2);
    _mm256_store_ps(yw + i + 3 * Wd, a3);
  }
  for (; i < pl.wide_padded; i += Wd) {
    __m256 acc = _mm256_setzero_ps();
    for (std::size_t t = 0; t < taps; ++t)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp + pl.tap[t] + i), _mm256_set1_ps(w[o * taps + t]), acc);
    _mm256_store_ps(yw + i, acc);
  }
  for (std::size_t oh = 0; oh < pl.OH; ++oh)
    for (std::size_t ow = 0; ow < pl.OW; ++ow) yo[oh * pl.OW + ow] = yw[oh * pl.Wq + ow] + bias;
}

inline void depthwise_forward_fma(const conv2d_shape& s, const float* x, const float* w,
                                  const float* b, float* y) {
  const phased_plane<8> pl(s);
  const std::size_t OH = pl.OH, OW = pl.OW, Og = s.outputs_per_group();
  parallel_for(0, s.N * s.C, 1, [&](std::size_t lo, std::size_t hi) {
    // 32-byte aligned: the buffer is 64-byte aligned and pl.size() a multiple of 8 floats.
    float* xp = scratch_buffer<2>(pl.size() + pl.wide_padded);
    float* yw = xp + pl.size();
    std::fill(xp, xp + pl.size(), 0.0f);
    for (std::size_t nc = lo; nc < hi; ++nc) {
      const std::size_t n = nc / s.C, c = nc % s.C;
      pl.fill_interior(s, x + nc * s.H * s.W, xp);
      for (std::size_t og = 0; og < Og; ++og) {
        const std::size_t o = c * Og + og;
        depthwise_plane_fma(pl, xp, w, o, b ? b[o] : 0.0f, yw, y + (n * s.O + o) * OH * OW);
      }
    }
  });
}
#endif  // QKIT_RUNTIME_FMA

/// Requires finite weights (the discarded columns contribute 0·w, which must be 0).
template <class Arch>
inline void depthwise_backward_data(const conv2d_shape& s, const float* dy, const float* w,
                                    float* dx) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const phased_plane<Wd> pl(s);
  const std::size_t OH = pl.OH, OW = pl.OW, Og = s.outputs_per_group(), taps = pl.tap.size();
  parallel_for(0, s.N * s.C, 1, [&](std::size_t lo, std::size_t hi) {
    float* dxp = scratch_buffer<2>(pl.size() + pl.wide_padded);
    float* dyw = dxp + pl.size();
    for (std::size_t nc = lo; nc < hi; ++nc) {
      const std::size_t n = nc / s.C, c = nc % s.C;
      std::fill(dxp, dxp + pl.size(), 0.0f);
      for (std::size_t og = 0; og < Og; ++og) {
        const std::size_t o = c * Og + og;
        pl.widen(dy + (n * s.O + o) * OH * OW, dyw);
        for (std::size_t t = 0; t < taps; ++t) {
          const batch wv(w[o * taps + t]);
          float* dst = dxp + pl.tap[t];
          for (std::size_t i = 0; i < pl.wide_padded; i += Wd)
            fused_multiply_add(batch::load_aligned(dyw + i), wv, batch::load_unaligned(dst + i))
                .store_unaligned(dst + i);
        }
      }
      pl.extract(s, dxp, dx + nc * s.H * s.W);
    }
  });
}

/// Requires finite inputs (the discarded columns contribute x·0, which must be 0).
template <class Arch>
inline void depthwise_backward_weight(const conv2d_shape& s, const float* x, const float* dy,
                                      float* dw, float* db) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const phased_plane<Wd> pl(s);
  const std::size_t OH = pl.OH, OW = pl.OW, Og = s.outputs_per_group(), taps = pl.tap.size();
  parallel_for(0, s.O, 1, [&](std::size_t lo, std::size_t hi) {
    float* xp = scratch_buffer<2>(pl.size() + pl.wide_padded);
    float* dyw = xp + pl.size();
    std::fill(xp, xp + pl.size(), 0.0f);
    // Per tap, four partial sums (by vector index mod 4) kept across the batch: independent
    // FMA chains, combined in a fixed order at the end.
    std::vector<batch> acc(4 * taps);
    for (std::size_t o = lo; o < hi; ++o) {
      const std::size_t c = o / Og;
      std::fill(acc.begin(), acc.end(), batch(0.0f));
      batch bacc(0.0f);
      for (std::size_t n = 0; n < s.N; ++n) {
        pl.fill_interior(s, x + (n * s.C + c) * s.H * s.W, xp);
        pl.widen(dy + (n * s.O + o) * OH * OW, dyw);
        for (std::size_t i = 0; i < pl.wide_padded; i += Wd) bacc += batch::load_aligned(dyw + i);
        for (std::size_t t = 0; t < taps; ++t) {
          const float* src = xp + pl.tap[t];
          batch a0 = acc[4 * t], a1 = acc[4 * t + 1], a2 = acc[4 * t + 2], a3 = acc[4 * t + 3];
          std::size_t i = 0;
          for (; i + 4 * Wd <= pl.wide_padded; i += 4 * Wd) {
            a0 = fused_multiply_add(batch::load_unaligned(src + i), batch::load_aligned(dyw + i), a0);
            a1 = fused_multiply_add(batch::load_unaligned(src + i + Wd),
                                    batch::load_aligned(dyw + i + Wd), a1);
            a2 = fused_multiply_add(batch::load_unaligned(src + i + 2 * Wd),
                                    batch::load_aligned(dyw + i + 2 * Wd), a2);
            a3 = fused_multiply_add(batch::load_unaligned(src + i + 3 * Wd),
                                    batch::load_aligned(dyw + i + 3 * Wd), a3);
          }
          for (; i < pl.wide_padded; i += Wd)
            a0 = fused_multiply_add(batch::load_unaligned(src + i), batch::load_aligned(dyw + i), a0);
          acc[4 * t] = a0;
          acc[4 * t + 1] = a1;
          acc[4 * t + 2] = a2;
          acc[4 * t + 3] = a3;
        }
      }
      for (std::size_t t = 0; t < taps; ++t)
        dw[o * taps + t] = reduce_sum((acc[4 * t] + acc[4 * t + 1]) + (acc[4 * t + 2] + acc[4 * t + 3]));
      if (db) db[o] = reduce_sum(bacc);
    }
  });
}

/// Output planes smaller than this make per-image GEMMs too narrow to run at full speed; such
/// layers lay a chunk of images side by side and run one GEMM for the chunk.
inline constexpr std::size_t small_plane = 256;

/// 1×1 layers whose planes have at least this many elements compute dw with the blocked dot
/// kernel; smaller planes leave too little work per block and image, and use the GEMM.
inline constexpr std::size_t pointwise_dot_min_plane = 128;

/// Images per chunk when a batch is laid side by side, for a budget of floats: a function of
/// the shape only.
inline std::size_t images_per_chunk(const conv2d_shape& s, std::size_t floats_per_image,
                                    std::size_t budget) {
  return std::clamp<std::size_t>(budget / std::max<std::size_t>(floats_per_image, 1), 1, s.N);
}

/// y = conv(x, w) + b with col = [Kg × images·P] for a chunk of images, one GEMM per group and
/// chunk into a staging buffer, then scattered to NCHW with the bias added.
inline void forward_batched(const conv2d_shape& s, const float* x, const float* w,
                            const float* b, float* y) {
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW;
  // A chunk's col and staged output stay within L2 (1 MiB) while the GEMM reads them.
  const std::size_t chunk = images_per_chunk(s, (Kg + Og) * P, std::size_t{1} << 18);
  float* col = scratch_buffer<1>(Kg * chunk * P);
  float* staged = scratch_buffer<2>(Og * chunk * P);
  for (std::size_t g = 0; g < G; ++g)
    for (std::size_t n0 = 0; n0 < s.N; n0 += chunk) {
      const std::size_t nb = std::min(chunk, s.N - n0), ld = nb * P;
      parallel_for(0, nb, 1, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i)
          im2col(s, Cg, x + ((n0 + i) * s.C + g * Cg) * s.H * s.W, col + i * P, ld);
      });
      gemm(transpose::no, transpose::no, Og, ld, Kg, 1.0f, w + g * Og * Kg, Kg, col, ld, 0.0f,
           staged, ld);
      parallel_for(0, nb, 1, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i)
          for (std::size_t o = 0; o < Og; ++o) {
            const float* src = staged + o * ld + i * P;
            float* dst = y + ((n0 + i) * s.O + g * Og + o) * P;
            const float bias = b ? b[g * Og + o] : 0.0f;
            for (std::size_t p = 0; p < P; ++p) dst[p] = src[p] + bias;
          }
      });
    }
}

/// dx = conv^T(dy, w) for small planes: dy of a chunk of images side by side, one GEMM per
/// group and chunk into col = [Kg × images·P], then col2im per image.
inline void backward_data_batched(const conv2d_shape& s, const float* dy, const float* w,
                                  float* dx) {
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW, HW = s.H * s.W;
  const std::size_t chunk = images_per_chunk(s, (Kg + Og) * P, std::size_t{1} << 18);
  float* col = scratch_buffer<1>(Kg * chunk * P);
  float* staged = scratch_buffer<2>(Og * chunk * P);
  for (std::size_t g = 0; g < G; ++g)
    for (std::size_t n0 = 0; n0 < s.N; n0 += chunk) {
      const std::size_t nb = std::min(chunk, s.N - n0), ld = nb * P;
      parallel_for(0, nb, 1, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i)
          for (std::size_t o = 0; o < Og; ++o) {
            const float* src = dy + ((n0 + i) * s.O + g * Og + o) * P;
            std::copy(src, src + P, staged + o * ld + i * P);
          }
      });
      gemm(transpose::yes, transpose::no, Kg, ld, Og, 1.0f, w + g * Og * Kg, Kg, staged, ld,
           0.0f, col, ld);
      parallel_for(0, nb, 1, [&](std::size_t lo, std::size_t hi) {
        for (std::size_t i = lo; i < hi; ++i) {
          float* dxg = dx + ((n0 + i) * s.C + g * Cg) * HW;
          std::fill(dxg, dxg + Cg * HW, 0.0f);
          col2im(s, Cg, col + i * P, ld, dxg);
        }
      });
    }
}

/// dw[o][c] = Σ_n Σ_p dy[n][o][p]·x[n][c][p] for a 1×1 stride-1 unpadded layer, where x is its
/// own im2col: a product with a long reduction (N·H·W) into a small result, which a GEMM would
/// have to pack (transpose) both operands for. Instead, 4×4 blocks of dw hold 16 vector
/// accumulators and read the rows of each image in place; each thread owns whole blocks and
/// walks the images in order, and a row's last P mod W values go through one zero-padded
/// vector, so the order of every sum is fixed by the shape.
template <class Arch>
inline void pointwise_backward_weight(const conv2d_shape& s, const float* x, const float* dy,
                                      float* dw, float* db) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size, B = 4;
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.H * s.W, pv = P - P % Wd, tail = P % Wd;
  const std::size_t o_blocks = (Og + B - 1) / B, c_blocks = (Cg + B - 1) / B;
  const std::vector<float> zeros(P, 0.0f);  // stands in for rows past the last channel
  parallel_for(0, G * o_blocks * c_blocks, 1, [&](std::size_t lo, std::size_t hi) {
    // Per block: 16 accumulators for dw, then 4 for db (used by the blocks at c0 == 0, while
    // their dy rows are still in L1).
    constexpr std::size_t per_block = B * B + B;
    std::vector<batch> acc((hi - lo) * per_block, batch(0.0f));
    alignas(64) float ta[B][Wd], tb[B][Wd];
    for (std::size_t n = 0; n < s.N; ++n)
      for (std::size_t blk = lo; blk < hi; ++blk) {
        const std::size_t g = blk / (o_blocks * c_blocks), r = blk % (o_blocks * c_blocks);
        const std::size_t o0 = (r / c_blocks) * B, c0 = (r % c_blocks) * B;
        const float* a[B];
        const float* b[B];
        for (std::size_t i = 0; i < B; ++i) {
          a[i] = o0 + i < Og ? dy + (n * s.O + g * Og + o0 + i) * P : zeros.data();
          b[i] = c0 + i < Cg ? x + (n * s.C + g * Cg + c0 + i) * P : zeros.data();
        }
        batch* ab = acc.data() + (blk - lo) * per_block;
        batch r00 = ab[0], r01 = ab[1], r02 = ab[2], r03 = ab[3], r10 = ab[4], r11 = ab[5],
              r12 = ab[6], r13 = ab[7], r20 = ab[8], r21 = ab[9], r22 = ab[10], r23 = ab[11],
              r30 = ab[12], r31 = ab[13], r32 = ab[14], r33 = ab[15];
        auto step = [&](const batch& a0, const batch& a1, const batch& a2, const batch& a3,
                        const batch& b0, const batch& b1, const batch& b2, const batch& b3) {
          r00 = fused_multiply_add(a0, b0, r00); r01 = fused_multiply_add(a0, b1, r01);
          r02 = fused_multiply_add(a0, b2, r02); r03 = fused_multiply_add(a0, b3, r03);
          r10 = fused_multiply_add(a1, b0, r10); r11 = fused_multiply_add(a1, b1, r11);
          r12 = fused_multiply_add(a1, b2, r12); r13 = fused_multiply_add(a1, b3, r13);
          r20 = fused_multiply_add(a2, b0, r20); r21 = fused_multiply_add(a2, b1, r21);
          r22 = fused_multiply_add(a2, b2, r22); r23 = fused_multiply_add(a2, b3, r23);
          r30 = fused_multiply_add(a3, b0, r30); r31 = fused_multiply_add(a3, b1, r31);
          r32 = fused_multiply_add(a3, b2, r32); r33 = fused_multiply_add(a3, b3, r33);
        };
        for (std::size_t k = 0; k < pv; k += Wd)
          step(batch::load_unaligned(a[0] + k), batch::load_unaligned(a[1] + k),
               batch::load_unaligned(a[2] + k), batch::load_unaligned(a[3] + k),
               batch::load_unaligned(b[0] + k), batch::load_unaligned(b[1] + k),
               batch::load_unaligned(b[2] + k), batch::load_unaligned(b[3] + k));
        if (tail) {
          for (std::size_t i = 0; i < B; ++i)
            for (std::size_t j = 0; j < Wd; ++j) {
              ta[i][j] = j < tail ? a[i][pv + j] : 0.0f;
              tb[i][j] = j < tail ? b[i][pv + j] : 0.0f;
            }
          step(batch::load_aligned(ta[0]), batch::load_aligned(ta[1]), batch::load_aligned(ta[2]),
               batch::load_aligned(ta[3]), batch::load_aligned(tb[0]), batch::load_aligned(tb[1]),
               batch::load_aligned(tb[2]), batch::load_aligned(tb[3]));
        }
        ab[0] = r00; ab[1] = r01; ab[2] = r02; ab[3] = r03; ab[4] = r10; ab[5] = r11;
        ab[6] = r12; ab[7] = r13; ab[8] = r20; ab[9] = r21; ab[10] = r22; ab[11] = r23;
        ab[12] = r30; ab[13] = r31; ab[14] = r32; ab[15] = r33;
        if (db && c0 == 0)
          for (std::size_t i = 0; i < B; ++i) {
            batch sum = ab[B * B + i];
            for (std::size_t k = 0; k < pv; k += Wd) sum += batch::load_unaligned(a[i] + k);
            if (tail) sum += batch::load_aligned(ta[i]);
            ab[B * B + i] = sum;
          }
      }
    for (std::size_t blk = lo; blk < hi; ++blk) {
      const std::size_t g = blk / (o_blocks * c_blocks), r = blk % (o_blocks * c_blocks);
      const std::size_t o0 = (r / c_blocks) * B, c0 = (r % c_blocks) * B;
      const batch* ab = acc.data() + (blk - lo) * per_block;
      for (std::size_t i = 0; i < B && o0 + i < Og; ++i) {
        for (std::size_t j = 0; j < B && c0 + j < Cg; ++j)
          dw[(g * Og + o0 + i) * Cg + c0 + j] = reduce_sum(ab[i * B + j]);
        if (db && c0 == 0) db[g * Og + o0 + i] = reduce_sum(ab[B * B + i]);
      }
    }
  });
}

/// db[o] = sum of dy over N, OH, OW: images in order, four fixed vector partial sums.
template <class Arch>
inline void sum_channels(const conv2d_shape& s, const float* dy, float* db) {
  using batch = xsimd::batch<float, Arch>;
  constexpr std::size_t Wd = batch::size;
  const std::size_t P = s.OH() * s.OW();
  parallel_for(0, s.O, 1, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t o = lo; o < hi; ++o) {
      batch a0(0.0f), a1(0.0f), a2(0.0f), a3(0.0f);
      float tail = 0.0f;
      for (std::size_t n = 0; n < s.N; ++n) {
        const float* src = dy + (n * s.O + o) * P;
        std::size_t i = 0;
        for (; i + 4 * Wd <= P; i += 4 * Wd) {
          a0 += batch::load_unaligned(src + i);
          a1 += batch::load_unaligned(src + i + Wd);
          a2 += batch::load_unaligned(src + i + 2 * Wd);
          a3 += batch::load_unaligned(src + i + 3 * Wd);
        }
        for (; i + Wd <= P; i += Wd) a0 += batch::load_unaligned(src + i);
        for (; i < P; ++i) tail += src[i];
      }
      db[o] = reduce_sum((a0 + a1) + (a2 + a3)) + tail;
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
#if QKIT_RUNTIME_FMA
    if (detail::cpu_has_avx2_fma()) {
      detail::depthwise_forward_fma(s, x, w, b, y);
      return;
    }
#endif
    detail::depthwise_forward<arch>(s, x, w, b, y);
    return;
  }
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW;
  if (s.N > 1 && P < detail::small_plane) {
    detail::forward_batched(s, x, w, b, y);
    return;
  }
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
    if (detail::all_finite<arch>(w, s.O * s.KH * s.KW))
      detail::depthwise_backward_data<arch>(s, dy, w, dx);
    else
      conv2d_backward_data_reference(s, dy, w, dx);
    return;
  }
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW, HW = s.H * s.W;
  // (1×1 layers are left per image: their GEMM writes dx directly, with no col2im to pay.)
  if (path == detail::conv_path::im2col && s.N > 1 && P < detail::small_plane) {
    detail::backward_data_batched(s, dy, w, dx);
    return;
  }
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
    if (detail::all_finite<arch>(x, s.N * s.C * s.H * s.W))
      detail::depthwise_backward_weight<arch>(s, x, dy, dw, db);
    else
      conv2d_backward_weight_reference(s, x, dy, dw, db);
    return;
  }
  const std::size_t G = s.p.groups, Cg = s.channels_per_group(), Og = s.outputs_per_group();
  const std::size_t P = s.OH() * s.OW(), Kg = Cg * s.KH * s.KW;
  if (path == detail::conv_path::pointwise && P >= detail::pointwise_dot_min_plane) {
    detail::pointwise_backward_weight<arch>(s, x, dy, dw, db);
    return;
  }
  // dw_g = dy_g · col^T with the batch laid side by side along K, so that one large GEMM
  // (split over dw's tiles only) does the reduction. The batch is taken in chunks of a size
  // that depends on the shape alone (a chunk's im2col stays within L2, 1 MiB, while it is
  // packed); chunks accumulate in order with beta = 1.
  const std::size_t chunk = detail::images_per_chunk(s, Kg * P, std::size_t{1} << 18);
  float* col = detail::scratch_buffer<1>(Kg * chunk * P);
  float* dyc = detail::scratch_buffer<2>(Og * chunk * P);
  // The micro-kernel's tile is MR×NR; when Og is narrow (a 1×1 layer with few outputs), the
  // transposed product dw_gᵀ = col · dy_gᵀ fills the tiles better.
  using tile = detail::gemm_tile<arch>;
  auto fill_ratio = [](std::size_t m, std::size_t n) {
    return double(m) / double((m + tile::MR - 1) / tile::MR * tile::MR) * double(n) /
           double((n + tile::NR - 1) / tile::NR * tile::NR);
  };
  const bool transposed = fill_ratio(Kg, Og) > 1.25 * fill_ratio(Og, Kg);
  float* dwt = transposed ? detail::scratch_buffer<3>(Kg * Og) : nullptr;
  for (std::size_t g = 0; g < G; ++g) {
    float* dwg = dw + g * Og * Kg;
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
      const float beta = n0 == 0 ? 0.0f : 1.0f;
      if (transposed)
        gemm(transpose::no, transpose::yes, Kg, Og, ld, 1.0f, col, ld, dyc, ld, beta, dwt, Og);
      else
        gemm(transpose::no, transpose::yes, Og, Kg, ld, 1.0f, dyc, ld, col, ld, beta, dwg, Kg);
    }
    if (transposed)
      for (std::size_t o = 0; o < Og; ++o)
        for (std::size_t k = 0; k < Kg; ++k) dwg[o * Kg + k] = dwt[k * Og + o];
  }
  if (db) detail::sum_channels<arch>(s, dy, db);
}

}  // namespace qkit
