// qkit/ptq/layer_reconstruction.hpp — the ground that AdaRound and Sequential MSE stand on:
// both choose one conv/linear layer's quantized weights so that the layer's output, on cached
// calibration inputs, reconstructs the FP32 output. This header has what they share:
//   - capture: one pass of the calibration data through a simulation, keeping one layer's
//     input (as the simulation computes it, earlier layers already quantized) and one node's
//     output, in a buffer whose size is checked against a stated bound before any work;
//   - the layer's kernel with a weight of the pass's choosing (the soft-quantized weight, a
//     candidate grid) and its weight gradient, without the input gradient nobody needs;
//   - the activation that follows the layer where the target fuses it (ReLU, ReLU6, Clip), so
//     the reconstruction is measured after it, as AIMET measures it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../data/batch.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../nn/conv2d.hpp"
#include "../nn/dataflow.hpp"
#include "../nn/linear.hpp"
#include "../tensor/conv.hpp"
#include "../tensor/elementwise.hpp"
#include "../tensor/gemm.hpp"
#include "../tensor/tensor.hpp"
#include "pass_guard.hpp"

namespace qkit::ptq::detail {

/// One conv or linear layer's kernel, with the weight and bias given per call.
class layer_kernel {
 public:
  layer_kernel() = default;
  explicit layer_kernel(const nn::conv2d& c) : conv_(&c) {}
  explicit layer_kernel(const nn::linear& l) : linear_(&l) {}

  bool is_conv() const { return conv_ != nullptr; }

  /// y = layer(x) with weight w (the layer's weight shape) and bias b (nullptr: none).
  tensor forward(const tensor& x, const float* w, const float* b) const {
    tensor y;
    forward(x, w, b, y);
    return y;
  }
  /// The same into y, reusing its memory when it already has the output's shape (AdaRound's
  /// steps run the same shapes thousands of times).
  void forward(const tensor& x, const float* w, const float* b, tensor& y) const {
    if (conv_) {
      const conv2d_shape s = conv_->shape_for(x);
      reshape_for(y, {s.N, s.O, s.OH(), s.OW()});
      conv2d_forward(s, x.data(), w, b, y.data());
      return;
    }
    const std::size_t N = x.shape(0), in = linear_->in_features(), out = linear_->out_features();
    reshape_for(y, {N, out});
    gemm(transpose::no, transpose::yes, N, out, in, 1.0f, x.data(), in, w, in, 0.0f, y.data(),
         out);
    if (b)
      for (std::size_t n = 0; n < N; ++n) qkit::add(y.data() + n * out, b, y.data() + n * out, out);
  }

  /// dw = ∂(Σ dy·y)/∂w for y = layer(x) (overwrites dw, the weight's size).
  void weight_gradient(const tensor& x, const tensor& dy, float* dw) const {
    if (conv_) {
      conv2d_backward_weight(conv_->shape_for(x), x.data(), dy.data(), dw, nullptr);
      return;
    }
    const std::size_t N = x.shape(0), in = linear_->in_features(), out = linear_->out_features();
    gemm(transpose::yes, transpose::no, out, in, N, 1.0f, dy.data(), out, x.data(), in, 0.0f, dw,
         in);
  }

 private:
  static void reshape_for(tensor& y, shape_type shape) {
    if (!std::equal(y.shape().begin(), y.shape().end(), shape.begin(), shape.end()))
      y = tensor::from_shape(shape);
  }

  const nn::conv2d* conv_ = nullptr;
  const nn::linear* linear_ = nullptr;
};

/// The kernel of the simulation's layer `name`; config_error if it is not a conv or linear.
template <class Sim>
layer_kernel kernel_of(Sim& sim, const std::string& name, const char* pass) {
  layer_kernel k;
  bool found = false;
  sim.with_layer(name, [&](auto& leaf) {
    using L = std::remove_cvref_t<decltype(leaf)>;
    if constexpr (std::is_same_v<L, nn::conv2d> || std::is_same_v<L, nn::linear>) {
      k = layer_kernel(leaf);
      found = true;
    }
  });
  QKIT_PRECONDITION(found, config_error, pass, ": '", name, "' is a ", sim.node(name).op_type,
                    "; only Conv and Gemm (conv2d, linear) layers can be optimized");
  return k;
}

/// The activation the target fuses into a conv/linear layer (its sole consumer, when that is a
/// ReLU, ReLU6 or Clip): reconstruction is measured after it. `node` is that activation's name
/// (empty when there is none; then lo = -inf, hi = +inf).
struct fused_activation {
  std::string node;
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
  bool present() const { return !node.empty(); }
};

inline fused_activation activation_after(const nn::dataflow& flow, const nn::dataflow_node& n) {
  fused_activation a;
  const nn::dataflow_node* next = flow.sole_consumer(n);
  if (!next) return a;
  if (next->clip_layer) {
    a.node = next->name;
    a.lo = next->clip_layer->min_value();
    a.hi = next->clip_layer->max_value();
  } else if (next->kind == nn::op_kind::relu) {
    a.node = next->name;
    a.lo = 0.0f;
  }
  return a;
}

/// Elements per sample of every node's input and output, from one sample through `sim`.
struct tensor_sizes {
  std::unordered_map<std::string, std::size_t> input, output;

  template <class L>
  void layer_input(const nn::dataflow_node& n, const L&, const tensor& x) {
    input[n.name] = x.size() / x.shape(0);
  }
  template <class L>
  void layer_output(const nn::dataflow_node& n, const L&, const tensor& y, const tensor&) {
    output[n.name] = y.size() / y.shape(0);
  }
};

template <class Sim>
tensor_sizes sizes_per_sample(Sim& sim, const data::dataset& ds) {
  tensor_sizes s;
  (void)sim.forward(data::first(ds, 1).samples(), s);
  return s;
}

/// "12.3 MiB".
inline std::string bytes_string(double b) {
  const char* unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024.0 && u < 4) {
    b /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", b, unit[u]);
  return buf;
}

/// What one layer's cache holds per sample: `inputs` copies of its input, and its output or
/// (after_activation) the output of the activation fused into it.
struct cache_layout {
  std::size_t inputs = 1;
  bool after_activation = false;
};

/// Checks, before a pass changes anything, that caching `samples` samples for each of `layers`
/// fits in `bound` bytes (config_error naming the layer and the option otherwise). Shapes do not
/// depend on quantization: the probe runs one sample with every quantizer off.
template <class Sim>
void check_cache_bounds(Sim& sim, const data::dataset& ds,
                        const std::vector<const nn::dataflow_node*>& layers, std::size_t samples,
                        std::size_t bound, cache_layout layout, const char* pass,
                        const char* option) {
  const tensor_sizes sizes = with_quantizers_off(sim, [&] { return sizes_per_sample(sim, ds); });
  for (const auto* n : layers) {
    const auto act = activation_after(sim.dataflow(), *n);
    const std::string out = layout.after_activation && act.present() ? act.node : n->name;
    const double bytes = double(layout.inputs * sizes.input.at(n->name) + sizes.output.at(out)) *
                         double(samples) * sizeof(float);
    QKIT_PRECONDITION(bytes <= double(bound), config_error, pass, ": layer '", n->name,
                      "' needs ", bytes_string(bytes), " to cache ", samples,
                      " samples' inputs and targets, over the bound of ",
                      bytes_string(double(bound)), " (", option,
                      "); use fewer samples or raise the bound");
  }
}

/// Throws calibration_error naming the first sample of ds[0, count) that holds NaN or ±Inf.
inline void check_finite_samples(const data::dataset& ds, std::size_t count, const char* pass) {
  const std::size_t per = ds.sample_size(), n = std::min(count, ds.size());
  const float* p = ds.samples().data();
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t k = 0; k < per; ++k)
      QKIT_PRECONDITION(std::isfinite(p[i * per + k]), calibration_error, pass,
                        ": calibration sample ", i, " holds ", p[i * per + k], " at element ", k,
                        " (the data must be finite)");
}

/// Appends rows of [B, ...] batches into one [N, ...] buffer allocated at the first batch.
struct row_buffer {
  tensor rows;
  std::size_t filled = 0, total = 0;

  void append(const tensor& x) {
    const std::size_t B = x.shape(0);
    if (rows.dimension() == 0 || rows.size() == 0) {
      shape_type shape(x.shape().begin(), x.shape().end());
      shape[0] = total;
      rows = tensor::from_shape(shape);
    }
    const std::size_t per = x.size() / B, take = std::min(B, total - filled);
    std::copy_n(x.data(), take * per, rows.data() + filled * per);
    filled += take;
  }
};

/// Keeps the input of layer `input_of` and/or the output (before its output quantizer) of node
/// `output_of`, for `total` samples.
struct capture_observer {
  std::string input_of, output_of;
  row_buffer in, out;

  template <class L>
  void layer_input(const nn::dataflow_node& n, const L&, const tensor& x) {
    if (n.name == input_of) in.append(x);
  }
  template <class L>
  void layer_output(const nn::dataflow_node& n, const L&, const tensor& before, const tensor&) {
    if (n.name == output_of) out.append(before);
  }
};

/// Runs ds[0, count) through sim in batches and returns {input of `input_of`, output of
/// `output_of`} (an empty name: not captured). Non-finite values are a calibration_error naming
/// the layer: a NaN that reaches it would poison every reconstruction loss after it.
template <class Sim>
std::pair<tensor, tensor> capture(Sim& sim, const data::dataset& ds, std::size_t count,
                                  std::size_t batch_size, const std::string& input_of,
                                  const std::string& output_of, const char* pass) {
  capture_observer obs;
  obs.input_of = input_of;
  obs.output_of = output_of;
  const std::size_t n = std::min(count, ds.size());
  obs.in.total = obs.out.total = n;
  for (const data::batch& b : data::batches(ds, batch_size, n)) (void)sim.forward(b.samples, obs);
  const auto check = [&](const row_buffer& r, const std::string& name, const char* what) {
    if (name.empty()) return;
    QKIT_PRECONDITION(r.filled == n, error, pass, ": layer '", name, "' saw ", r.filled,
                      " of ", n, " samples");
    const float* p = r.rows.data();
    for (std::size_t i = 0; i < r.rows.size(); ++i)
      QKIT_PRECONDITION(std::isfinite(p[i]), calibration_error, pass, ": the ", what, " of '",
                        name, "' holds ", p[i], " (sample ", i / (r.rows.size() / n),
                        "): the calibration data or the layers before give non-finite values");
  };
  check(obs.in, input_of, "input");
  check(obs.out, output_of, "output");
  return {std::move(obs.in.rows), std::move(obs.out.rows)};
}

/// Rows `idx` of a [N, ...] buffer as one [count, ...] batch, into `b` (reusing its memory when
/// the shape is the same).
inline void gather_rows(const tensor& rows, const std::size_t* idx, std::size_t count, tensor& b) {
  shape_type shape(rows.shape().begin(), rows.shape().end());
  const std::size_t per = rows.size() / shape[0];
  shape[0] = count;
  if (!std::equal(b.shape().begin(), b.shape().end(), shape.begin(), shape.end()))
    b = tensor::from_shape(shape);
  for (std::size_t i = 0; i < count; ++i)
    std::copy_n(rows.data() + idx[i] * per, per, b.data() + i * per);
}
inline tensor gather_rows(const tensor& rows, const std::size_t* idx, std::size_t count) {
  tensor b;
  gather_rows(rows, idx, count, b);
  return b;
}

/// Rows [first, first + count) of a [N, ...] buffer.
inline tensor slice_rows(const tensor& rows, std::size_t first, std::size_t count) {
  shape_type shape(rows.shape().begin(), rows.shape().end());
  const std::size_t per = rows.size() / shape[0];
  shape[0] = count;
  tensor b = tensor::from_shape(shape);
  std::copy_n(rows.data() + first * per, count * per, b.data());
  return b;
}

}  // namespace qkit::ptq::detail
