// qkit/tensor/pool.hpp — 2-D max and average pooling (NCHW) and global average pooling, with
// their gradients. Pooling is a small share of a CNN's time, so these are plain loops split over
// (image, channel) planes; each plane is computed by one thread in a fixed order, so results do
// not depend on the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "../config.hpp"
#include "../error.hpp"
#include "elementwise.hpp"
#include "thread_pool.hpp"

namespace qkit {

/// Window, stride and per-side padding of a pooling (ONNX MaxPool / AveragePool attributes).
struct pool2d_params {
  std::size_t kernel_h = 1, kernel_w = 1;
  std::size_t stride_h = 1, stride_w = 1;
  std::size_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  /// Output size rounds up, so a last partial window is kept (it must start inside the input
  /// or the leading padding, as in PyTorch and ONNX).
  bool ceil_mode = false;
  /// Average pooling only: divide by the window size clipped to the padded input (true) or by
  /// the number of real input elements in the window (false).
  bool count_include_pad = false;
};

/// Sizes of one pooling: x is [N, C, H, W], y is [N, C, OH, OW].
struct pool2d_shape {
  std::size_t N = 0, C = 0, H = 0, W = 0;
  pool2d_params p{};

  static std::size_t out_size(std::size_t in, std::size_t k, std::size_t s, std::size_t pa,
                              std::size_t pb, bool ceil_mode) {
    const std::size_t span = in + pa + pb - k;
    std::size_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
    // A window starting in the trailing padding would see no input.
    if (ceil_mode && (out - 1) * s >= in + pa) --out;
    return out;
  }
  std::size_t OH() const {
    return out_size(H, p.kernel_h, p.stride_h, p.pad_top, p.pad_bottom, p.ceil_mode);
  }
  std::size_t OW() const {
    return out_size(W, p.kernel_w, p.stride_w, p.pad_left, p.pad_right, p.ceil_mode);
  }

  /// Throws shape_error unless sizes are positive, the window fits the padded input and every
  /// pad is smaller than the window (so every window sees at least one input element).
  void validate() const {
    QKIT_PRECONDITION(N > 0 && C > 0 && H > 0 && W > 0 && p.kernel_h > 0 && p.kernel_w > 0,
                      shape_error, "pool2d: every size must be positive, got x [", N, ", ", C,
                      ", ", H, ", ", W, "] and kernel ", p.kernel_h, "x", p.kernel_w);
    QKIT_PRECONDITION(p.stride_h > 0 && p.stride_w > 0, shape_error,
                      "pool2d: strides must be positive, got (", p.stride_h, ", ", p.stride_w,
                      ")");
    QKIT_PRECONDITION(p.pad_top < p.kernel_h && p.pad_bottom < p.kernel_h &&
                          p.pad_left < p.kernel_w && p.pad_right < p.kernel_w,
                      shape_error, "pool2d: pads (", p.pad_top, ", ", p.pad_left, ", ",
                      p.pad_bottom, ", ", p.pad_right, ") must be smaller than the kernel ",
                      p.kernel_h, "x", p.kernel_w);
    QKIT_PRECONDITION(p.kernel_h <= H + p.pad_top + p.pad_bottom &&
                          p.kernel_w <= W + p.pad_left + p.pad_right,
                      shape_error, "pool2d: kernel ", p.kernel_h, "x", p.kernel_w,
                      " is larger than the padded input ", H + p.pad_top + p.pad_bottom, "x",
                      W + p.pad_left + p.pad_right);
  }
};

namespace detail {
/// Clipped window [begin, end) along one axis for output index o, in input coordinates, plus
/// the window's extent within the padded input (for count_include_pad).
struct pool_window {
  std::size_t begin, end, padded_extent;
};
inline pool_window window_1d(std::size_t o, std::size_t k, std::size_t s, std::size_t pa,
                             std::size_t pb, std::size_t in) {
  const std::ptrdiff_t start = std::ptrdiff_t(o * s) - std::ptrdiff_t(pa);
  const std::ptrdiff_t stop = start + std::ptrdiff_t(k);
  const std::ptrdiff_t padded_stop = std::min(stop, std::ptrdiff_t(in + pb));
  pool_window w;
  w.begin = std::size_t(std::max<std::ptrdiff_t>(start, 0));
  w.end = std::size_t(std::min<std::ptrdiff_t>(stop, std::ptrdiff_t(in)));
  w.padded_extent = std::size_t(padded_stop - start);
  return w;
}
}  // namespace detail

/// y = max over each window; argmax (may be nullptr) receives the flat in-plane index of the
/// first maximum, which the backward pass routes the gradient to.
inline void max_pool2d_forward(const pool2d_shape& s, const float* x, float* y,
                               std::uint32_t* argmax) {
  s.validate();
  const std::size_t OH = s.OH(), OW = s.OW(), plane = s.H * s.W, oplane = OH * OW;
  const auto& p = s.p;
  const std::size_t grain = grain_for(plane * s.p.kernel_h * s.p.kernel_w);
  parallel_for(0, s.N * s.C, grain, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t pl = lo; pl < hi; ++pl) {
      const float* xp = x + pl * plane;
      for (std::size_t oh = 0; oh < OH; ++oh) {
        const auto wh = detail::window_1d(oh, p.kernel_h, p.stride_h, p.pad_top, p.pad_bottom, s.H);
        for (std::size_t ow = 0; ow < OW; ++ow) {
          const auto ww =
              detail::window_1d(ow, p.kernel_w, p.stride_w, p.pad_left, p.pad_right, s.W);
          float best = -std::numeric_limits<float>::infinity();
          std::size_t where = wh.begin * s.W + ww.begin;
          for (std::size_t ih = wh.begin; ih < wh.end; ++ih)
            for (std::size_t iw = ww.begin; iw < ww.end; ++iw) {
              const float v = xp[ih * s.W + iw];
              if (v > best || std::isnan(v)) {
                best = v;
                where = ih * s.W + iw;
                if (std::isnan(v)) break;
              }
            }
          y[pl * oplane + oh * OW + ow] = best;
          if (argmax) argmax[pl * oplane + oh * OW + ow] = std::uint32_t(where);
        }
      }
    }
  });
}

/// dx = dy routed to each window's argmax (overwrites dx; overlapping windows accumulate).
inline void max_pool2d_backward(const pool2d_shape& s, const float* dy,
                                const std::uint32_t* argmax, float* dx) {
  s.validate();
  const std::size_t plane = s.H * s.W, oplane = s.OH() * s.OW();
  const std::size_t grain = grain_for(plane * s.p.kernel_h * s.p.kernel_w);
  parallel_for(0, s.N * s.C, grain, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t pl = lo; pl < hi; ++pl) {
      float* dxp = dx + pl * plane;
      for (std::size_t i = 0; i < plane; ++i) dxp[i] = 0.0f;
      for (std::size_t o = 0; o < oplane; ++o) dxp[argmax[pl * oplane + o]] += dy[pl * oplane + o];
    }
  });
}

/// y = mean over each window (the divisor follows p.count_include_pad).
inline void avg_pool2d_forward(const pool2d_shape& s, const float* x, float* y) {
  s.validate();
  const std::size_t OH = s.OH(), OW = s.OW(), plane = s.H * s.W, oplane = OH * OW;
  const auto& p = s.p;
  const std::size_t grain = grain_for(plane * s.p.kernel_h * s.p.kernel_w);
  parallel_for(0, s.N * s.C, grain, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t pl = lo; pl < hi; ++pl) {
      const float* xp = x + pl * plane;
      for (std::size_t oh = 0; oh < OH; ++oh) {
        const auto wh = detail::window_1d(oh, p.kernel_h, p.stride_h, p.pad_top, p.pad_bottom, s.H);
        for (std::size_t ow = 0; ow < OW; ++ow) {
          const auto ww =
              detail::window_1d(ow, p.kernel_w, p.stride_w, p.pad_left, p.pad_right, s.W);
          float acc = 0.0f;
          for (std::size_t ih = wh.begin; ih < wh.end; ++ih)
            for (std::size_t iw = ww.begin; iw < ww.end; ++iw) acc += xp[ih * s.W + iw];
          const std::size_t count = p.count_include_pad
                                        ? wh.padded_extent * ww.padded_extent
                                        : (wh.end - wh.begin) * (ww.end - ww.begin);
          y[pl * oplane + oh * OW + ow] = acc / float(count);
        }
      }
    }
  });
}

/// dx = each output's gradient spread evenly over its window (overwrites dx).
inline void avg_pool2d_backward(const pool2d_shape& s, const float* dy, float* dx) {
  s.validate();
  const std::size_t OH = s.OH(), OW = s.OW(), plane = s.H * s.W, oplane = OH * OW;
  const auto& p = s.p;
  const std::size_t grain = grain_for(plane * s.p.kernel_h * s.p.kernel_w);
  parallel_for(0, s.N * s.C, grain, [&](std::size_t lo, std::size_t hi) {
    for (std::size_t pl = lo; pl < hi; ++pl) {
      float* dxp = dx + pl * plane;
      for (std::size_t i = 0; i < plane; ++i) dxp[i] = 0.0f;
      for (std::size_t oh = 0; oh < OH; ++oh) {
        const auto wh = detail::window_1d(oh, p.kernel_h, p.stride_h, p.pad_top, p.pad_bottom, s.H);
        for (std::size_t ow = 0; ow < OW; ++ow) {
          const auto ww =
              detail::window_1d(ow, p.kernel_w, p.stride_w, p.pad_left, p.pad_right, s.W);
          const std::size_t count = p.count_include_pad
                                        ? wh.padded_extent * ww.padded_extent
                                        : (wh.end - wh.begin) * (ww.end - ww.begin);
          const float g = dy[pl * oplane + oh * OW + ow] / float(count);
          for (std::size_t ih = wh.begin; ih < wh.end; ++ih)
            for (std::size_t iw = ww.begin; iw < ww.end; ++iw) dxp[ih * s.W + iw] += g;
        }
      }
    }
  });
}

/// y[plane] = mean of each of `planes` contiguous planes of `plane_size` elements.
inline void global_avg_pool_forward(std::size_t planes, std::size_t plane_size, const float* x,
                                    float* y) {
  parallel_for(0, planes, grain_for(plane_size), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t pl = lo; pl < hi; ++pl)
      y[pl] = sum(x + pl * plane_size, plane_size) / float(plane_size);
  });
}

/// dx[plane][i] = dy[plane] / plane_size (overwrites dx).
inline void global_avg_pool_backward(std::size_t planes, std::size_t plane_size, const float* dy,
                                     float* dx) {
  parallel_for(0, planes, grain_for(plane_size), [&](std::size_t lo, std::size_t hi) {
    for (std::size_t pl = lo; pl < hi; ++pl) {
      const float g = dy[pl] / float(plane_size);
      float* d = dx + pl * plane_size;
      for (std::size_t i = 0; i < plane_size; ++i) d[i] = g;
    }
  });
}

}  // namespace qkit
