// qkit/ptq/adaround.hpp — AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
// Post-Training Quantization"; AIMET's apply_adaround): instead of rounding every weight to the
// nearest grid point, learn per weight whether to round down or up so that the layer's output
// on calibration data stays closest to the FP32 output.
//
// Per conv/linear layer, in forward order, with AIMET's method and defaults:
//   - the weight encodings come first from the simulation's parameter range setter (or stay as
//     they are when frozen), Δ and the grid [lo, hi] per tensor or per output channel;
//   - one variable α per weight, h(α) = clamp(σ(α)(ζ − γ) + γ, 0, 1), ζ = 1.1, γ = −0.1, started
//     so that h is the fractional part of W/Δ; the soft weight is Δ·clamp(⌊W/Δ⌋ + h, lo, hi);
//   - loss = reconstruction + reg·Σ(1 − |2h − 1|^β): the reconstruction is the per-sample
//     squared norm over channels of (soft output − FP32 output), after the activation the
//     target fuses into the layer, averaged over samples and positions; the regularizer is off
//     for the first 20% of iterations, then β falls from 20 to 2 on a cosine;
//   - Adam on α (lr 1e-3), 32 random cached samples per step, 10,000 steps (15,000 when any
//     weight is under 8 bits), reg 0.01;
//   - inputs come from the simulation with the earlier layers already rounded and activation
//     quantizers off (an option keeps them on); targets from the FP32 model;
//   - finally each weight rounds up where h ≥ 0.5 (α ≥ 0), lands exactly on the grid, and the
//     weight encodings freeze, so the simulation exports them like any others.
// A layer's inputs and targets are captured once, into memory whose size is checked against a
// stated bound before any work, and the iterations run on that cache: one pass of the
// calibration data per layer, never one per iteration. Each step is the layer's own kernel
// and weight gradient plus elementwise work (no input gradient). The same seed gives the same
// weights, bit for bit, with any thread count.
#pragma once

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <numbers>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../io/atomic_file.hpp"
#include "../io/terminal.hpp"
#include "../nn/optimizer.hpp"
#include "../quant/qdq.hpp"
#include "../sim/calibrate.hpp"
#include "../sim/quantsim.hpp"
#include "../tensor/thread_pool.hpp"
#include "layer_reconstruction.hpp"
#include "pass_guard.hpp"

namespace qkit::ptq {

/// Where a rounding stands, reported every adaround_options::progress_interval iterations and
/// at the end of each layer.
struct adaround_progress {
  std::string layer;
  std::size_t layer_index = 0, layers = 0;
  std::size_t iteration = 0, iterations = 0;
  double reconstruction_loss = 0.0;  ///< on the iteration's samples, soft weights
  double rounding_loss = 0.0;        ///< reg·Σ(1 − |2h − 1|^β); 0 during the warm start
  double beta = 0.0;
};

struct adaround_options {
  /// Calibration samples whose layer inputs and targets are cached (AIMET: num_batches ×
  /// batch size; its advice is 500–2,000 images).
  std::size_t samples = 1000;
  /// Samples per optimization step (AIMET: 32).
  std::size_t batch_size = 32;
  /// Steps per layer; 0 chooses AIMET's default: 10,000, or 15,000 when any weight rounded is
  /// under 8 bits.
  std::size_t iterations = 0;
  float reg = 0.01f;
  float beta_start = 20.0f, beta_end = 2.0f;
  /// Fraction of the steps without the rounding regularizer.
  double warm_start = 0.2;
  float learning_rate = 1e-3f;
  /// Keep the activation quantizers on while rounding (AIMET turns them off): layer inputs are
  /// then the simulation's quantized activations. The simulation must have activation
  /// encodings (they are computed first if it has none).
  bool quantized_activations = false;
  /// Recompute the activation encodings afterwards on `calibration_samples` samples: the
  /// rounded weights move every range after them. Frozen weight encodings stay.
  bool recalibrate = true;
  std::size_t calibration_samples = 2000;
  /// Layers left at round-to-nearest, by name.
  std::vector<std::string> layers_to_ignore;
  /// Largest cache of one layer's inputs and targets (bytes); a layer that needs more is a
  /// config_error before anything is changed.
  std::size_t cache_bytes = std::size_t{1} << 30;
  /// Samples per forward pass while capturing.
  std::size_t capture_batch_size = 64;
  /// Fixes which samples each step draws.
  std::uint64_t seed = 0;
  /// Per-layer progress lines on stderr (one line rewritten in place on a terminal).
  bool verbose = true;
  std::size_t progress_interval = 1000;
  /// Called where a progress line is due (also when verbose is off).
  std::function<void(const adaround_progress&)> progress;
};

/// What rounding did to one layer.
struct layer_adaround {
  std::string layer;
  int bitwidth = 0;
  bool per_channel = false;
  std::size_t weights = 0, iterations = 0, samples = 0;
  /// Reconstruction loss on every cached sample with round-to-nearest weights and with the
  /// learned rounding (the same loss the optimization minimizes, without the regularizer).
  double nearest_loss = 0.0, adaround_loss = 0.0;
  /// Fraction of weights rounded to the other grid point than the nearest one.
  double flipped = 0.0;
  /// Bytes of cached inputs and targets.
  std::size_t cache_bytes = 0;
  double seconds = 0.0;
};

struct adaround_report {
  std::vector<layer_adaround> layers;
  std::vector<std::string> skipped;  ///< ignored, or weights not on an integer grid
  bool recalibrated = false;
  double seconds = 0.0;

  std::string summary() const {
    std::ostringstream os;
    os << "adaround: " << layers.size() << " layer(s) rounded";
    if (!skipped.empty()) os << ", " << skipped.size() << " skipped";
    char buf[64];
    std::snprintf(buf, sizeof buf, " in %.1f s\n", seconds);
    os << buf;
    for (const auto& l : layers) {
      char line[256];
      std::snprintf(line, sizeof line,
                    "  %-28s int%d %-11s %6zu weights  loss %.4g -> %.4g (%.1f%% flipped)  "
                    "cache %s  %.1f s\n",
                    l.layer.c_str(), l.bitwidth, l.per_channel ? "per-channel" : "per-tensor",
                    l.weights, l.nearest_loss, l.adaround_loss, 100.0 * l.flipped,
                    detail::bytes_string(double(l.cache_bytes)).c_str(), l.seconds);
      os << line;
    }
    for (const auto& s : skipped) os << "  " << s << ": skipped\n";
    return os.str();
  }
};

namespace adaround_math {

inline constexpr float zeta = 1.1f, gamma = -0.1f;

/// h(α) = clamp(σ(α)(ζ − γ) + γ, 0, 1) and dh/dα = (ζ − γ)σ(1 − σ) where the clamp passes
/// (inclusive, as torch.clamp), 0 outside: one exp for both.
struct rectified {
  float h, dh;
};
inline rectified rectified_sigmoid_and_grad(float alpha) {
  const float s = 1.0f / (1.0f + std::exp(-alpha));
  const float raw = s * (zeta - gamma) + gamma;
  return {std::clamp(raw, 0.0f, 1.0f),
          raw >= 0.0f && raw <= 1.0f ? (zeta - gamma) * s * (1.0f - s) : 0.0f};
}
inline float rectified_sigmoid(float alpha) { return rectified_sigmoid_and_grad(alpha).h; }
inline float rectified_sigmoid_grad(float alpha) { return rectified_sigmoid_and_grad(alpha).dh; }
/// α with h(α) = r for r in [0, 1): −log((ζ − γ)/(r − γ) − 1).
inline float initial_alpha(float r) { return -std::log((zeta - gamma) / (r - gamma) - 1.0f); }

/// One weight's regularizer term 1 − |2h − 1|^β and its derivative in h.
inline float regularizer(float h, float beta) {
  return 1.0f - std::pow(std::fabs(2.0f * h - 1.0f), beta);
}
inline float regularizer_grad(float h, float beta) {
  const float d = 2.0f * h - 1.0f;
  if (d == 0.0f) return 0.0f;
  return -2.0f * beta * std::pow(std::fabs(d), beta - 1.0f) * (d > 0.0f ? 1.0f : -1.0f);
}

/// AIMET's β: 0 during the warm start (regularizer off), then start → end on a cosine.
inline float beta_at(std::size_t it, std::size_t iterations, double warm_start, float start,
                     float end) {
  const double warm = double(warm_start) * double(iterations);
  const double rel = (double(it) - warm) / (double(iterations) - warm);
  return float(end + 0.5 * (start - end) * (1.0 + std::cos(rel * std::numbers::pi)));
}
inline bool regularized(std::size_t it, std::size_t iterations, double warm_start) {
  return double(it) >= double(warm_start) * double(iterations);
}

}  // namespace adaround_math

namespace detail {

/// A grid as the qdq kernels hold it: float scale, integer range [lo, hi].
using grid_params = ::qkit::detail::qdq_params;

/// One layer's rounding problem: W, the grid per element's channel, α and its Adam state.
struct rounding_problem {
  std::size_t K = 0, channels = 1, per = 0;
  std::vector<grid_params> grid;  // per channel (or one)
  tensor floor_w, alpha, soft, dw, dalpha;
  tensor h, dh;  // h(α) and dh/dα of the current α, from soft_weight()

  const grid_params& grid_of(std::size_t k) const { return grid[channels == 1 ? 0 : k / per]; }

  void init(const tensor& w, std::vector<grid_params> g) {
    grid = std::move(g);
    channels = grid.size();
    K = w.size();
    per = K / channels;
    floor_w = tensor::from_shape(w.shape());
    alpha = floor_w;
    soft = floor_w;
    h = floor_w;
    dh = floor_w;
    dw = floor_w;
    dalpha = floor_w;
    for (std::size_t k = 0; k < K; ++k) {
      const grid_params& p = grid_of(k);
      const float t = w.data()[k] / p.scale;
      const float f = std::floor(t);
      floor_w.data()[k] = f;
      alpha.data()[k] = adaround_math::initial_alpha(t - f);
    }
  }

  /// soft = Δ·clamp(⌊W/Δ⌋ + h(α), lo, hi); keeps h and dh/dα for alpha_gradient.
  void soft_weight() {
    parallel_for(0, K, 4096, [&](std::size_t lo, std::size_t hi) {
      for (std::size_t k = lo; k < hi; ++k) {
        const grid_params& p = grid_of(k);
        const auto r = adaround_math::rectified_sigmoid_and_grad(alpha.data()[k]);
        h.data()[k] = r.h;
        dh.data()[k] = r.dh;
        soft.data()[k] = p.scale * std::clamp(floor_w.data()[k] + r.h, p.lo, p.hi);
      }
    });
  }

  /// dα from dw (the reconstruction's weight gradient) and the regularizer at β (if on), for
  /// the α soft_weight() last saw.
  void alpha_gradient(bool reg_on, float reg, float beta) {
    parallel_for(0, K, 4096, [&](std::size_t lo, std::size_t hi) {
      for (std::size_t k = lo; k < hi; ++k) {
        const grid_params& p = grid_of(k);
        const float hk = h.data()[k];
        const float t = floor_w.data()[k] + hk;
        float g = t >= p.lo && t <= p.hi ? dw.data()[k] * p.scale : 0.0f;
        if (reg_on) g += reg * adaround_math::regularizer_grad(hk, beta);
        dalpha.data()[k] = g * dh.data()[k];
      }
    });
  }

  double rounding_loss(float reg, float beta) const {
    double s = 0.0;
    for (std::size_t k = 0; k < K; ++k)
      s += adaround_math::regularizer(adaround_math::rectified_sigmoid(alpha.data()[k]), beta);
    return double(reg) * s;
  }

  /// Δ·(⌊W/Δ⌋ + [α ≥ 0]): the learned rounding (to be put exactly on the grid by the quantizer).
  tensor hard_weight() const {
    tensor w = tensor::from_shape(floor_w.shape());
    for (std::size_t k = 0; k < K; ++k)
      w.data()[k] = grid_of(k).scale * (floor_w.data()[k] + (alpha.data()[k] >= 0.0f ? 1.0f : 0.0f));
    return w;
  }
};

/// Reconstruction loss Σ(a − y)² / (B·P) of z (before the fused activation) against target y,
/// P = positions per channel (1 for linear).
inline double reconstruction(const tensor& z, const tensor& y, const fused_activation& act) {
  const std::size_t B = z.shape(0), O = z.shape(1), n = z.size();
  const double norm = double(B) * double(n / (B * O));
  const bool clip = act.present();
  double s = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = z.data()[i];
    const double d = double(clip ? std::clamp(v, act.lo, act.hi) : v) - double(y.data()[i]);
    s += d * d;
  }
  return s / norm;
}

/// One step's reconstruction, fused: z (before the fused activation, for the B samples whose
/// targets are rows idx of `targets`) is overwritten by the gradient of the loss in z; returns
/// the loss when want_loss (reconstruction()'s arithmetic, without copying targets).
inline double reconstruction_step(tensor& z, const tensor& targets, const std::size_t* idx,
                                  const fused_activation& act, bool want_loss) {
  const std::size_t B = z.shape(0), O = z.shape(1), n = z.size(), per = n / B;
  const double norm = double(B) * double(n / (B * O));
  const float lo = act.lo, hi = act.hi, scale = float(2.0 / norm);
  const bool clip = act.present();
  double s = 0.0;
  if (want_loss)
    for (std::size_t r = 0; r < B; ++r) {
      const float* zr = z.data() + r * per;
      const float* yr = targets.data() + idx[r] * per;
      for (std::size_t i = 0; i < per; ++i) {
        const double d = double(clip ? std::clamp(zr[i], lo, hi) : zr[i]) - double(yr[i]);
        s += d * d;
      }
    }
  parallel_for(0, B, 1, [&](std::size_t b0, std::size_t b1) {
    for (std::size_t r = b0; r < b1; ++r) {
      float* zr = z.data() + r * per;
      const float* yr = targets.data() + idx[r] * per;
      if (!clip) {
        for (std::size_t i = 0; i < per; ++i) zr[i] = scale * (zr[i] - yr[i]);
        continue;
      }
      // Branch-free (the mask is data-dependent, ~half the values): vectorizes.
      for (std::size_t i = 0; i < per; ++i) {
        const float v = zr[i];
        const float pass = float(v > lo) * float(v < hi);
        zr[i] = pass * (scale * (v - yr[i]));
      }
    }
  });
  return want_loss ? s / norm : 0.0;
}

/// The loss of weight w over every cached sample, in batches.
inline double cached_loss(const layer_kernel& k, const tensor& inputs, const tensor& targets,
                          const float* w, const float* b, const fused_activation& act,
                          std::size_t batch) {
  const std::size_t N = inputs.shape(0);
  double total = 0.0;
  for (std::size_t first = 0; first < N; first += batch) {
    const std::size_t n = std::min(batch, N - first);
    const tensor z = k.forward(slice_rows(inputs, first, n), w, b);
    total += reconstruction(z, slice_rows(targets, first, n), act) * double(n);
  }
  return total / double(N);
}

/// One layer's optimization: the cached inputs and targets, α and its Adam state, and the
/// sampling of each step's batch. step() is one AdaRound iteration.
class layer_rounding {
 public:
  layer_rounding(layer_kernel kernel, fused_activation act, const tensor& weight,
                 std::vector<grid_params> grid, const float* bias, const tensor& inputs,
                 const tensor& targets, const adaround_options& o, std::size_t iterations,
                 std::uint64_t seed)
      : kernel_(kernel), act_(std::move(act)), bias_(bias), inputs_(inputs), targets_(targets),
        o_(o), iterations_(iterations), opt_({.lr = o.learning_rate}), rng_(seed),
        order_(inputs.shape(0)), batch_(std::min(o.batch_size, inputs.shape(0))) {
    rp_.init(weight, std::move(grid));
    std::iota(order_.begin(), order_.end(), std::size_t{0});
  }

  /// Iteration `it` (of `iterations`): returns the reconstruction loss when want_loss.
  double step(std::size_t it, bool want_loss) {
    // batch_ distinct samples: a partial Fisher-Yates shuffle of the running order.
    const std::size_t n = order_.size();
    for (std::size_t k = 0; k < batch_; ++k) std::swap(order_[k], order_[k + rng_() % (n - k)]);
    gather_rows(inputs_, order_.data(), batch_, xb_);
    rp_.soft_weight();
    kernel_.forward(xb_, rp_.soft.data(), bias_, z_);
    const double recon = reconstruction_step(z_, targets_, order_.data(), act_, want_loss);
    kernel_.weight_gradient(xb_, z_, rp_.dw.data());  // z_ now holds the loss's gradient
    const bool reg_on = adaround_math::regularized(it, iterations_, o_.warm_start);
    rp_.alpha_gradient(reg_on, o_.reg, reg_on ? beta(it) : 0.0f);
    opt_.step("alpha", rp_.alpha, rp_.dalpha);
    return recon;
  }

  /// β at iteration `it` (0 during the warm start).
  float beta(std::size_t it) const {
    if (!adaround_math::regularized(it, iterations_, o_.warm_start)) return 0.0f;
    return adaround_math::beta_at(it, iterations_, o_.warm_start, o_.beta_start, o_.beta_end);
  }
  double rounding_loss(std::size_t it) const {
    return adaround_math::regularized(it, iterations_, o_.warm_start)
               ? rp_.rounding_loss(o_.reg, beta(it))
               : 0.0;
  }
  const rounding_problem& problem() const { return rp_; }

 private:
  layer_kernel kernel_;
  fused_activation act_;
  const float* bias_;
  const tensor& inputs_;
  const tensor& targets_;
  adaround_options o_;
  std::size_t iterations_;
  rounding_problem rp_;
  nn::adam opt_;
  std::mt19937_64 rng_;
  std::vector<std::size_t> order_;
  std::size_t batch_;
  tensor xb_, z_;  // reused every step: same shapes
};

inline void print_progress(const adaround_progress& p, bool final_line) {
  char line[256];
  std::snprintf(line, sizeof line, "adaround [%zu/%zu] %-28s it %6zu/%zu  recon %.4g  round %.4g  beta %.2f",
                p.layer_index + 1, p.layers, p.layer.c_str(), p.iteration, p.iterations,
                p.reconstruction_loss, p.rounding_loss, p.beta);
  io::progress_line(line, final_line);
}

}  // namespace detail

/// Rounds the weights of every conv/linear layer of `sim` (a qkit::quantsim whose batch norms
/// are folded) with AdaRound on the first options.samples of `data`, in forward order, and
/// freezes their encodings; then (options.recalibrate) computes the activation encodings on the
/// first options.calibration_samples. Errors: no data or NaN in it (calibration_error), an
/// ignored layer that is not a conv/linear or a layer whose cache would exceed the bound
/// (config_error), a frozen per-channel weight encoding whose channel count differs from the
/// layer's (shape_error). On any failure the weights and quantizers are as they were.
template <class Sim>
adaround_report adaround(Sim& sim, const data::dataset& data, const adaround_options& options = {}) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  QKIT_PRECONDITION(!data.empty() && options.samples > 0, calibration_error,
                    "adaround needs calibration data: ",
                    data.empty() ? "the data set is empty" : "options.samples is 0");
  QKIT_PRECONDITION(options.batch_size > 0 && options.capture_batch_size > 0 &&
                        options.calibration_samples > 0,
                    config_error, "adaround: batch sizes and calibration_samples must be positive");
  QKIT_PRECONDITION(options.warm_start >= 0.0 && options.warm_start < 1.0, config_error,
                    "adaround: warm_start ", options.warm_start, " must lie in [0, 1)");
  QKIT_PRECONDITION(sim.options().batch_norms == batch_norm_mode::fold, config_error,
                    "adaround: the simulation keeps its batch norms live; AdaRound rounds the "
                    "weights the target runs, so build the QuantSim with batch_norm_mode::fold");
  detail::check_finite_samples(data, options.samples, "adaround");

  // A frozen weight encoding (loaded, or set by hand) must fit its layer.
  const auto check_channels = [](const auto& q, const std::string& name, std::size_t O) {
    const std::size_t n = q.encodings().size();
    QKIT_PRECONDITION(q.per_channel() ? n == O : n == 1, shape_error, "adaround: '", name,
                      "' has ", n, q.per_channel() ? " per-channel" : "", " encoding(s), the layer has ",
                      O, " output channels");
  };
  adaround_report report;
  const std::vector<const nn::dataflow_node*> candidates =
      detail::correctable_layers(sim, options.layers_to_ignore, report.skipped, "adaround");
  // Only weights on an integer grid are rounded (float16 and 32-bit weights pass through).
  std::vector<const nn::dataflow_node*> layers;
  int lowest_bits = 32;
  for (const auto* n : candidates) {
    const auto& q = sim.param_quantizer(n->name + ".weight");
    if (!q.enabled() || q.settings().dtype != dtype::integer || q.bitwidth() >= 32) {
      report.skipped.push_back(n->name);
      continue;
    }
    (void)detail::kernel_of(sim, n->name, "adaround");  // config_error for other layer types
    if (q.frozen()) check_channels(q, n->name + ".weight", n->weighted->output_channels());
    layers.push_back(n);
    lowest_bits = std::min(lowest_bits, q.bitwidth());
  }
  const std::size_t iterations =
      options.iterations ? options.iterations : (lowest_bits < 8 ? 15000 : 10000);
  const std::size_t samples = std::min(options.samples, data.size());

  detail::check_cache_bounds(sim, data, layers, samples, options.cache_bytes,
                             {.inputs = 1, .after_activation = true}, "adaround",
                             "adaround_options::cache_bytes");

  detail::all_or_nothing(sim, [&] {
    // Every layer after the one being rounded still quantizes with its encodings.
    sim.compute_param_encodings();
    if (options.quantized_activations && detail::needs_calibration(sim))
      qkit::calibrate(sim, data, options.calibration_samples, options.capture_batch_size);

    // Activation quantizers off while rounding (unless asked), as AIMET has them.
    std::optional<detail::activations_off<Sim>> acts_off;
    if (!options.quantized_activations) acts_off.emplace(sim);

    // The FP32 weights, for the targets (the simulation's own weights are rounded as we go).
    std::vector<std::pair<nn::weighted_layer*, tensor>> fp32_weights;
    for (const auto& n : sim.dataflow().nodes)
      if (n.weighted) fp32_weights.emplace_back(n.weighted, n.weighted->weight());

    for (std::size_t li = 0; li < layers.size(); ++li) {
      const auto t_layer = clock::now();
      const nn::dataflow_node& node = *layers[li];
      const std::string wname = node.name + ".weight";
      auto& wq = sim.param_quantizer(wname);
      nn::weighted_layer& layer = *node.weighted;
      const detail::layer_kernel kernel = detail::kernel_of(sim, node.name, "adaround");
      const auto act = detail::activation_after(sim.dataflow(), node);

      // Encodings from the range setter first (kept as they are if frozen), then the grid.
      if (!wq.frozen()) sim.compute_param_encodings(wname);
      const auto& encs = wq.encodings();
      check_channels(wq, wname, layer.output_channels());
      std::vector<detail::grid_params> grid;
      for (const auto& e : encs) grid.push_back(::qkit::detail::params_of(e));

      // Inputs as the simulation computes them now; targets from the FP32 model.
      tensor inputs = detail::capture(sim, data, samples, options.capture_batch_size, node.name,
                                      {}, "adaround").first;
      // The FP32 weights swapped in for the capture and back out, also if it throws.
      struct weight_swap {
        decltype(fp32_weights)& w;
        explicit weight_swap(decltype(fp32_weights)& v) : w(v) { swap(); }
        ~weight_swap() { swap(); }
        void swap() {
          for (auto& [l, t] : w) std::swap(l->weight(), t);
        }
      };
      const tensor targets = [&] {
        const weight_swap fp32(fp32_weights);
        return detail::with_quantizers_off(sim, [&] {
          return detail::capture(sim, data, samples, options.capture_batch_size, {},
                                 act.present() ? act.node : node.name, "adaround").second;
        });
      }();

      const std::string bname = node.name + ".bias";
      const tensor bias = !layer.has_bias()          ? tensor()
                          : sim.has_quantizer(bname) ? sim.quantized_parameter(bname)
                                                     : layer.bias();
      const float* b = layer.has_bias() ? bias.data() : nullptr;
      const tensor nearest = sim.quantized_parameter(wname);

      detail::layer_rounding lr(kernel, act, layer.weight(), std::move(grid), b, inputs, targets,
                                options, iterations, options.seed + 0x9E3779B97F4A7C15ull * (li + 1));
      adaround_progress prog;
      prog.layer = node.name;
      prog.layer_index = li;
      prog.layers = layers.size();
      prog.iterations = iterations;
      const bool report_progress = options.verbose || bool(options.progress);
      for (std::size_t it = 0; it < iterations; ++it) {
        const bool last = it + 1 == iterations;
        const bool due = report_progress && options.progress_interval &&
                         ((it + 1) % options.progress_interval == 0 || last);
        const double recon = lr.step(it, due);
        if (due) {
          prog.iteration = it + 1;
          prog.reconstruction_loss = recon;
          prog.beta = lr.beta(it);
          prog.rounding_loss = lr.rounding_loss(it);
          if (options.progress) options.progress(prog);
          if (options.verbose) detail::print_progress(prog, last);
        }
      }
      const detail::rounding_problem& rp = lr.problem();

      // The learned rounding, put exactly on the grid by the quantizer itself; then frozen.
      const tensor hard = rp.hard_weight();
      tensor rounded = tensor::from_shape(hard.shape());
      wq.qdq(hard.data(), rounded.data(),
             std::span<const std::size_t>(hard.shape().data(), hard.shape().size()));
      layer_adaround line;
      line.layer = node.name;
      line.bitwidth = wq.bitwidth();
      line.per_channel = wq.per_channel();
      line.weights = rp.K;
      line.iterations = iterations;
      line.samples = samples;
      line.cache_bytes = (inputs.size() + targets.size()) * sizeof(float);
      line.nearest_loss = detail::cached_loss(kernel, inputs, targets, nearest.data(), b, act,
                                              options.capture_batch_size);
      line.adaround_loss = detail::cached_loss(kernel, inputs, targets, rounded.data(), b, act,
                                               options.capture_batch_size);
      std::size_t flipped = 0;
      for (std::size_t k = 0; k < rp.K; ++k) flipped += rounded.data()[k] != nearest.data()[k];
      line.flipped = double(flipped) / double(rp.K);
      layer.weight() = std::move(rounded);
      wq.freeze();
      line.seconds = std::chrono::duration<double>(clock::now() - t_layer).count();
      report.layers.push_back(line);
    }

    if (acts_off) acts_off->restore();
    if (options.recalibrate) {
      qkit::calibrate(sim, data, options.calibration_samples, options.capture_batch_size);
      report.recalibrated = true;
    }
  });
  report.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  return report;
}

/// AIMET's apply_adaround: builds a QuantSim of `model` at Preset with ParamRange (AIMET's
/// defaults: 4-bit weights, TF-Enhanced), rounds it, and returns the rounded model (batch norms
/// folded, weights on the grid); the weight encodings go to `<dir>/<prefix>.encodings` (AIMET
/// 1.0.0 format), written atomically, for a fresh QuantSim of the returned model to load with
/// set_and_freeze_param_encodings before computing its activation encodings.
template <class Preset = presets::w4a8, class ParamRange = tf_enhanced_range, class Model>
Model apply_adaround(const Model& model, const tensor& example_input, const data::dataset& data,
                     const std::filesystem::path& dir, const std::string& prefix,
                     adaround_options options = {}, adaround_report* report = nullptr) {
  quantsim<Model, Preset, ParamRange> sim(model, example_input);
  options.recalibrate = false;
  options.quantized_activations = false;
  const auto r = adaround(sim, data, options);
  if (report) *report = r;
  io::encodings_file f = sim.encodings();
  f.activation_encodings.clear();
  std::filesystem::create_directories(dir);
  io::write_encodings(f, dir / (prefix + ".encodings"));
  return sim.model();
}

}  // namespace qkit::ptq
