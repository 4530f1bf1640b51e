// qkit/ptq/sequential_mse.hpp — Sequential MSE (AIMET's apply_seq_mse): choose each conv/linear
// layer's weight range, per output channel, by how well the layer's output is reconstructed
// rather than by the weights' own min and max.
//
// AIMET's method: activation quantizers off; for each conv/linear layer in forward order whose
// weights have at most 4 bits (by default), candidate ranges [min, max]·(i + 1)/N for
// i = 0 … N − 1 (N = num_candidates, 20) per output channel, from the channel's own min and max
// (so the last candidate is the min-max range); each scored by the reconstruction loss (mse,
// l1 or sqnr) of the layer's output over num_batches batches of calibration data, with the
// earlier layers already quantized with their chosen ranges; the best candidate per channel is
// frozen (per-tensor quantizers: the best over the summed loss). Which inputs meet which
// weights is AIMET's inp_symmetry: symqt (default: both the quantized and the FP32 weight see
// the simulation's input), asym (quantized weights see the simulation's input, FP32 weights the
// FP32 model's), symfp (both see the FP32 model's input). Activations are calibrated afterwards.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../quant/encoding.hpp"
#include "../quant/qdq.hpp"
#include "../sim/calibrate.hpp"
#include "../sim/quantsim.hpp"
#include "layer_reconstruction.hpp"
#include "pass_guard.hpp"

namespace qkit::ptq {

enum class reconstruction_loss { mse, l1, sqnr };
/// AIMET's inp_symmetry.
enum class input_symmetry { symqt, asym, symfp };

inline const char* to_string(reconstruction_loss l) {
  return l == reconstruction_loss::mse ? "mse" : l == reconstruction_loss::l1 ? "l1" : "sqnr";
}

struct sequential_mse_options {
  /// Batches of calibration data scored per candidate (AIMET's num_batches) and their size.
  std::size_t num_batches = 20, batch_size = 32;
  std::size_t num_candidates = 20;
  reconstruction_loss loss = reconstruction_loss::mse;
  input_symmetry inputs = input_symmetry::symqt;
  /// Layers whose weights have more bits are left to the range setter (AIMET: 4).
  int max_bitwidth = 4;
  std::vector<std::string> layers_to_ignore;
  /// Recompute the activation encodings afterwards on calibration_samples samples.
  bool recalibrate = true;
  std::size_t calibration_samples = 2000;
  /// Largest cache of one layer's inputs and targets (bytes).
  std::size_t cache_bytes = std::size_t{1} << 30;
  /// A line per layer on stderr.
  bool verbose = false;
  std::function<void(const std::string& layer, std::size_t index, std::size_t total)> progress;
};

struct layer_sequential_mse {
  std::string layer;
  int bitwidth = 0;
  bool per_channel = false;
  /// The chosen range as a fraction of the min-max range, averaged over channels.
  double mean_fraction = 1.0;
  /// Reconstruction loss (the chosen kind, summed over channels) of the min-max range and of
  /// the chosen ranges.
  double minmax_loss = 0.0, chosen_loss = 0.0;
  /// The loss per channel and candidate, [channel][candidate] (for per-tensor: one row).
  std::vector<std::vector<double>> candidate_losses;
  std::vector<std::size_t> chosen;  ///< candidate index per channel (or one)
};

struct sequential_mse_report {
  std::vector<layer_sequential_mse> layers;
  std::vector<std::string> skipped;
  bool recalibrated = false;
  double seconds = 0.0;

  std::string summary() const {
    std::ostringstream os;
    char buf[256];
    std::snprintf(buf, sizeof buf, "sequential MSE: %zu layer(s), %zu skipped, %.1f s\n",
                  layers.size(), skipped.size(), seconds);
    os << buf;
    for (const auto& l : layers) {
      std::snprintf(buf, sizeof buf, "  %-28s int%d %-11s range %.2f x min-max  loss %.4g -> %.4g\n",
                    l.layer.c_str(), l.bitwidth, l.per_channel ? "per-channel" : "per-tensor",
                    l.mean_fraction, l.minmax_loss, l.chosen_loss);
      os << buf;
    }
    for (const auto& s : skipped) os << "  " << s << ": skipped\n";
    return os.str();
  }
};

namespace detail {

/// Per-channel sums of one batch's reconstruction error: Σd², Σ|d|, Σy² over (N, positions).
struct channel_error_sums {
  std::vector<double> sq, abs, signal;
  std::size_t count = 0;  // values per channel

  void add(const tensor& z, const tensor& y) {
    const std::size_t N = z.shape(0), C = z.shape(1), P = z.size() / (N * C);
    if (sq.empty()) sq.assign(C, 0.0), abs.assign(C, 0.0), signal.assign(C, 0.0);
    for (std::size_t n = 0; n < N; ++n)
      for (std::size_t c = 0; c < C; ++c) {
        const float* a = z.data() + (n * C + c) * P;
        const float* b = y.data() + (n * C + c) * P;
        double s2 = 0.0, s1 = 0.0, sy = 0.0;
        for (std::size_t i = 0; i < P; ++i) {
          const double d = double(a[i]) - double(b[i]);
          s2 += d * d;
          s1 += std::fabs(d);
          sy += double(b[i]) * double(b[i]);
        }
        sq[c] += s2;
        abs[c] += s1;
        signal[c] += sy;
      }
    count += N * P;
  }

  /// The loss of channel c, or of all channels together (c = npos).
  double loss(reconstruction_loss kind, std::size_t c = std::size_t(-1)) const {
    double s2 = 0.0, s1 = 0.0, sy = 0.0, n = double(count);
    if (c == std::size_t(-1)) {
      for (std::size_t k = 0; k < sq.size(); ++k) s2 += sq[k], s1 += abs[k], sy += signal[k];
    } else {
      s2 = sq[c], s1 = abs[c], sy = signal[c];
    }
    switch (kind) {
      case reconstruction_loss::mse: return s2 / n;
      case reconstruction_loss::l1: return s1 / n;
      case reconstruction_loss::sqnr:
        // −SQNR in dB (lower is better); a perfect reconstruction is −inf.
        if (s2 <= 0.0) return -std::numeric_limits<double>::infinity();
        return -10.0 * std::log10(std::max(sy, std::numeric_limits<double>::min()) / s2);
    }
    return 0.0;
  }
};

}  // namespace detail

/// Chooses the weight ranges of every conv/linear layer of `sim` (a qkit::quantsim whose batch
/// norms are folded) with Sequential MSE on the first num_batches × batch_size samples of
/// `data`, in forward order, and freezes them; then (options.recalibrate) computes the
/// activation encodings. Errors as AdaRound's; on any failure the simulation is as it was.
template <class Sim>
sequential_mse_report apply_sequential_mse(Sim& sim, const data::dataset& data,
                                           const sequential_mse_options& options = {}) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const std::size_t wanted = options.num_batches * options.batch_size;
  QKIT_PRECONDITION(!data.empty() && wanted > 0, calibration_error,
                    "sequential MSE needs calibration data: ",
                    data.empty() ? "the data set is empty" : "num_batches × batch_size is 0");
  QKIT_PRECONDITION(options.num_candidates > 0 && options.calibration_samples > 0, config_error,
                    "sequential MSE: num_candidates and calibration_samples must be positive");
  QKIT_PRECONDITION(sim.options().batch_norms == batch_norm_mode::fold, config_error,
                    "sequential MSE: the simulation keeps its batch norms live; build the QuantSim "
                    "with batch_norm_mode::fold");
  const std::size_t samples = std::min(wanted, data.size());
  detail::check_finite_samples(data, samples, "sequential MSE");

  sequential_mse_report report;
  std::vector<const nn::dataflow_node*> layers;
  for (const auto* n :
       detail::correctable_layers(sim, options.layers_to_ignore, report.skipped, "sequential MSE")) {
    const auto& q = sim.param_quantizer(n->name + ".weight");
    if (!q.enabled() || q.settings().dtype != dtype::integer || q.bitwidth() >= 32 ||
        q.bitwidth() > options.max_bitwidth || q.frozen()) {
      report.skipped.push_back(n->name);
      continue;
    }
    (void)detail::kernel_of(sim, n->name, "sequential MSE");
    layers.push_back(n);
  }
  const bool fp_inputs = options.inputs != input_symmetry::symqt;
  detail::check_cache_bounds(sim, data, layers, samples, options.cache_bytes,
                             {.inputs = std::size_t(options.inputs == input_symmetry::asym ? 2 : 1),
                              .after_activation = false},
                             "sequential MSE", "sequential_mse_options::cache_bytes");

  detail::all_or_nothing(sim, [&] {
    sim.compute_param_encodings();
    detail::activations_off<Sim> acts_off(sim);

    for (std::size_t li = 0; li < layers.size(); ++li) {
      const nn::dataflow_node& node = *layers[li];
      if (options.progress) options.progress(node.name, li, layers.size());
      const std::string wname = node.name + ".weight", bname = node.name + ".bias";
      auto& wq = sim.param_quantizer(wname);
      nn::weighted_layer& layer = *node.weighted;
      const detail::layer_kernel kernel = detail::kernel_of(sim, node.name, "sequential MSE");

      // The simulation's input (earlier layers quantized) and/or the FP32 model's.
      tensor xq, xf;
      if (options.inputs != input_symmetry::symfp)
        xq = detail::capture(sim, data, samples, options.batch_size, node.name, {},
                             "sequential MSE").first;
      if (fp_inputs)
        xf = detail::with_quantizers_off(sim, [&] {
          return detail::capture(sim, data, samples, options.batch_size, node.name, {},
                                 "sequential MSE").first;
        });
      const tensor& x_quant = options.inputs == input_symmetry::symfp ? xf : xq;
      const tensor& x_ref = options.inputs == input_symmetry::symqt ? xq : xf;

      const tensor bias = !layer.has_bias()          ? tensor()
                          : sim.has_quantizer(bname) ? sim.quantized_parameter(bname)
                                                     : layer.bias();
      const float* b = layer.has_bias() ? bias.data() : nullptr;
      const tensor& W = layer.weight();
      tensor target = kernel.forward(x_ref, W.data(), b);

      // Per output channel (or the whole tensor): min and max of the weights.
      const bool per_channel = wq.per_channel();
      const std::size_t O = layer.output_channels(), C = per_channel ? O : 1,
                        per = W.size() / C;
      std::vector<double> wmin(C, 0.0), wmax(C, 0.0);
      for (std::size_t c = 0; c < C; ++c) {
        const auto [lo, hi] = std::minmax_element(W.data() + c * per, W.data() + (c + 1) * per);
        wmin[c] = *lo;
        wmax[c] = *hi;
      }
      const int bw = wq.bitwidth();
      const scheme s = wq.settings().s;
      auto candidate = [&](std::size_t c, std::size_t i) {
        const double f = double(i + 1) / double(options.num_candidates);
        return encoding_from_range(wmin[c] * f, wmax[c] * f, bw, s);
      };

      layer_sequential_mse line;
      line.layer = node.name;
      line.bitwidth = bw;
      line.per_channel = per_channel;
      const std::size_t rows = per_channel ? O : 1;
      line.candidate_losses.assign(rows, std::vector<double>(options.num_candidates, 0.0));
      tensor wq_buf = tensor::from_shape(W.shape());
      const std::span<const std::size_t> shape(W.shape().data(), W.shape().size());
      for (std::size_t i = 0; i < options.num_candidates; ++i) {
        std::vector<encoding> encs;
        for (std::size_t c = 0; c < C; ++c) encs.push_back(candidate(c, i));
        if (per_channel) qdq_per_channel(W.data(), wq_buf.data(), shape, 0, encs, Sim::rounding_policy);
        else qdq(W.data(), wq_buf.data(), W.size(), encs[0], Sim::rounding_policy);
        detail::channel_error_sums sums;
        const std::size_t N = x_quant.shape(0);
        for (std::size_t first = 0; first < N; first += options.batch_size) {
          const std::size_t n = std::min(options.batch_size, N - first);
          sums.add(kernel.forward(detail::slice_rows(x_quant, first, n), wq_buf.data(), b),
                   detail::slice_rows(target, first, n));
        }
        for (std::size_t r = 0; r < rows; ++r)
          line.candidate_losses[r][i] = per_channel ? sums.loss(options.loss, r) : sums.loss(options.loss);
      }
      std::vector<encoding> best;
      line.chosen.resize(rows);
      double fraction = 0.0;
      for (std::size_t r = 0; r < rows; ++r) {
        const auto& l = line.candidate_losses[r];
        line.chosen[r] = std::size_t(std::min_element(l.begin(), l.end()) - l.begin());
        line.minmax_loss += l.back();
        line.chosen_loss += l[line.chosen[r]];
        fraction += double(line.chosen[r] + 1) / double(options.num_candidates);
        best.push_back(candidate(r, line.chosen[r]));
      }
      line.mean_fraction = fraction / double(rows);
      sim.set_and_freeze_encodings(wname, best);
      if (options.verbose)
        std::fprintf(stderr, "sequential MSE [%zu/%zu] %-28s range %.2f x min-max, %s %.4g -> %.4g\n",
                     li + 1, layers.size(), node.name.c_str(), line.mean_fraction,
                     to_string(options.loss), line.minmax_loss, line.chosen_loss);
      report.layers.push_back(std::move(line));
    }

    acts_off.restore();
    if (options.recalibrate) {
      qkit::calibrate(sim, data, options.calibration_samples);
      report.recalibrated = true;
    }
  });
  report.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  return report;
}

}  // namespace qkit::ptq
