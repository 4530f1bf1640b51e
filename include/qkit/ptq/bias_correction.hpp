// qkit/ptq/bias_correction.hpp — bias correction (Nagel et al. 2019; AIMET's correct_bias).
// Quantizing a layer's weights shifts the mean of its output: E[W_q·x] − E[W·x] = (W_q − W)·E[x]
// is rarely zero per channel, and the shifts add up through the network. Bias correction
// subtracts the shift from each conv/linear bias, in forward order, so that each layer sees
// inputs already corrected upstream:
//   - empirical: the mean over (N, H, W) of the quantized model's output minus the FP32 model's,
//     both taken before the activation (and before the output quantizer), on calibration data;
//   - analytical (data-free): (W_q − W)·E[x], with E[x] from the batch norm folded into the
//     layer before (its β, γ) and the activation between (the clipped-normal mean after a ReLU
//     or ReLU6).
// AIMET's choice per layer: analytical where a batch norm precedes and that is asked for,
// otherwise empirical. Defaults are AIMET's: 2,000 samples to compute encodings, 512 to correct.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <numbers>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../data/batch.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../nn/dataflow.hpp"
#include "../sim/calibrate.hpp"
#include "../sim/quantsim.hpp"
#include "pass_guard.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::ptq {

enum class bias_correction_method { empirical, analytical };

inline const char* to_string(bias_correction_method m) {
  return m == bias_correction_method::empirical ? "empirical" : "analytical";
}

/// Progress of a correction, reported before each layer.
struct bias_correction_progress {
  std::string layer;
  std::size_t index = 0, total = 0;
};

struct bias_correction_options {
  /// Samples whose outputs are compared per layer (AIMET: num_bias_correct_samples = 512).
  std::size_t samples = 512;
  /// Samples that compute the encodings before and after (AIMET: num_quant_samples = 2000).
  std::size_t calibration_samples = 2000;
  std::size_t batch_size = 64;
  /// Analytical correction where a batch norm precedes the layer (AIMET:
  /// perform_only_empirical_bias_corr = False); empirical elsewhere.
  bool analytical_where_possible = false;
  /// Recompute the activation encodings afterwards (the corrected biases move the ranges a
  /// little). Off: the encodings the correction was measured with stay.
  bool recalibrate = true;
  /// Layers left alone, by name.
  std::vector<std::string> layers_to_ignore;
  std::function<void(const bias_correction_progress&)> progress;
};

/// What was done to one layer.
struct layer_bias_correction {
  std::string layer;
  bias_correction_method method = bias_correction_method::empirical;
  /// Root mean square over channels of the output-mean error subtracted (quantized − FP32 for
  /// empirical, (W_q − W)·E[x] for analytical).
  double rms_shift = 0.0;
  double max_abs_shift = 0.0;
};

struct bias_correction_report {
  std::vector<layer_bias_correction> layers;
  std::vector<std::string> skipped;  ///< layers left alone (ignored, or no batch norm data-free)
  bool recalibrated = false;         ///< activation encodings recomputed after correcting

  std::string summary() const {
    std::ostringstream os;
    os << "bias correction: " << layers.size() << " layer(s) corrected";
    if (!skipped.empty()) os << ", " << skipped.size() << " skipped";
    os << "\n";
    for (const auto& l : layers)
      os << "  " << l.layer << " (" << to_string(l.method) << "): rms shift " << l.rms_shift
         << ", max " << l.max_abs_shift << "\n";
    for (const auto& s : skipped) os << "  " << s << ": skipped\n";
    return os.str();
  }
};

namespace detail {

inline double normal_pdf(double z) {
  return std::exp(-0.5 * z * z) / std::sqrt(2.0 * std::numbers::pi);
}
inline double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::numbers::sqrt2); }

/// E[clamp(X, lo, hi)] for X ~ N(mu, sigma²) (lo may be -inf, hi +inf). With lo = 0, hi = +inf
/// this is AIMET's ReLU formula μ(1 − Φ(−μ/σ)) + σφ(−μ/σ).
inline double clipped_normal_mean(double mu, double sigma, double lo, double hi) {
  if (!(sigma > 0.0)) return std::clamp(mu, lo, hi);
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  const double a = has_lo ? (lo - mu) / sigma : -std::numeric_limits<double>::infinity();
  const double b = has_hi ? (hi - mu) / sigma : std::numeric_limits<double>::infinity();
  const double Pa = has_lo ? normal_cdf(a) : 0.0, Pb = has_hi ? normal_cdf(b) : 1.0;
  const double pa = has_lo ? normal_pdf(a) : 0.0, pb = has_hi ? normal_pdf(b) : 0.0;
  double e = mu * (Pb - Pa) + sigma * (pa - pb);
  if (has_lo) e += lo * Pa;
  if (has_hi) e += hi * (1.0 - Pb);
  return e;
}

/// Per-channel sums over (N, H, W) of a [N, C, ...] tensor, added to `sums`.
inline void add_channel_sums(const tensor& y, std::vector<double>& sums, std::size_t& count) {
  const std::size_t N = y.shape(0), C = y.shape(1), P = y.size() / (N * C);
  if (sums.empty()) sums.assign(C, 0.0);
  for (std::size_t n = 0; n < N; ++n)
    for (std::size_t c = 0; c < C; ++c) {
      const float* p = y.data() + (n * C + c) * P;
      double s = 0.0;
      for (std::size_t i = 0; i < P; ++i) s += p[i];
      sums[c] += s;
    }
  count += N * P;
}

/// Records per-channel output means (before the output quantizer) of the chosen layers.
struct channel_mean_observer {
  std::vector<std::string> layers;
  std::vector<std::vector<double>> sums;
  std::vector<std::size_t> counts;

  explicit channel_mean_observer(std::vector<std::string> names)
      : layers(std::move(names)), sums(layers.size()), counts(layers.size(), 0) {}

  template <class L>
  void layer_output(const nn::dataflow_node& n, const L&, const tensor& before, const tensor&) {
    for (std::size_t i = 0; i < layers.size(); ++i)
      if (layers[i] == n.name) add_channel_sums(before, sums[i], counts[i]);
  }
  std::vector<double> mean(std::size_t i) const {
    std::vector<double> m = sums[i];
    for (auto& v : m) v /= double(std::max<std::size_t>(counts[i], 1));
    return m;
  }
};

/// Runs the first `count` samples through sim.forward(x, observer) in batches.
template <class Sim, class Observer>
void forward_samples(Sim& sim, const data::dataset& ds, std::size_t count, std::size_t batch,
                     Observer& obs) {
  for (const data::batch& b : data::batches(ds, batch, count)) (void)sim.forward(b.samples, obs);
}

/// E[x] per input channel of `node` from the batch norm folded into the layer before it and the
/// activation between; empty when there is no such batch norm.
inline std::vector<float> expected_input(const nn::dataflow& flow, const nn::dataflow_node& node) {
  const nn::dataflow_node* p = flow.sole_producer(node);
  double lo = -std::numeric_limits<double>::infinity(), hi = std::numeric_limits<double>::infinity();
  if (p && p->clip_layer) {
    lo = p->clip_layer->min_value();
    hi = p->clip_layer->max_value();
    p = flow.sole_producer(*p);
  } else if (p && p->kind == nn::op_kind::relu) {
    lo = 0.0;
    p = flow.sole_producer(*p);
  }
  if (!p || !p->folded_batch_norm) return {};
  const nn::batch_norm& bn = *p->folded_batch_norm;
  std::vector<float> e(bn.channels());
  for (std::size_t c = 0; c < e.size(); ++c)
    e[c] = float(clipped_normal_mean(bn.bias()(c), std::fabs(double(bn.weight()(c))), lo, hi));
  return e;
}

inline std::pair<double, double> shift_stats(const std::vector<double>& d) {
  double ss = 0.0, mx = 0.0;
  for (double v : d) {
    ss += v * v;
    mx = std::max(mx, std::fabs(v));
  }
  return {d.empty() ? 0.0 : std::sqrt(ss / double(d.size())), mx};
}

// b −= shift; a quantized bias gets its encoding again for its new values.
template <class Sim>
void subtract(Sim& sim, const nn::dataflow_node& node, const std::vector<double>& shift) {
  nn::weighted_layer& layer = *node.weighted;
  layer.ensure_bias();
  float* b = layer.bias().data();
  for (std::size_t o = 0; o < shift.size(); ++o) b[o] = float(double(b[o]) - shift[o]);
  const std::string bias = node.name + ".bias";
  if (sim.has_quantizer(bias)) sim.compute_param_encodings(bias);
}

// (W_q − W)·E[x] per output channel: the mean shift that quantizing the weight causes.
template <class Sim>
std::vector<double> analytical_shift(Sim& sim, const nn::dataflow_node& node,
                                     const std::vector<float>& expected) {
  tensor dw = sim.quantized_parameter(node.name + ".weight");
  const float* w = node.weighted->weight().data();
  for (std::size_t k = 0; k < dw.size(); ++k) dw.data()[k] -= w[k];
  return node.weighted->input_response(dw, expected);
}

// The report line for one layer.
inline layer_bias_correction correction_line(const std::string& layer,
                                             bias_correction_method method,
                                             const std::vector<double>& shift) {
  layer_bias_correction lc;
  lc.layer = layer;
  lc.method = method;
  std::tie(lc.rms_shift, lc.max_abs_shift) = shift_stats(shift);
  return lc;
}

}  // namespace detail

/// Corrects every conv/linear bias of the simulated model `sim` (a qkit::quantsim) in forward
/// order, empirically on `samples` (the first options.samples of them) unless
/// options.analytical_where_possible picks the data-free formula for a layer. Encodings are
/// computed first on the first options.calibration_samples samples if the simulation has none,
/// and the activation encodings are recomputed afterwards for the corrected model. Throws
/// calibration_error for empty data and config_error for an unknown layer to ignore; on any
/// failure the biases and quantizers are as they were.
template <class Sim>
bias_correction_report correct_bias(Sim& sim, const data::dataset& samples,
                                    const bias_correction_options& options = {}) {
  QKIT_PRECONDITION(!samples.empty(), calibration_error,
                    "bias correction needs calibration data: the data set is empty");
  QKIT_PRECONDITION(options.samples > 0 && options.calibration_samples > 0 &&
                        options.batch_size > 0,
                    config_error, "bias correction: samples, calibration_samples and batch_size "
                    "must be positive");
  bias_correction_report report;
  const auto layers = detail::correctable_layers(sim, options.layers_to_ignore, report.skipped, "bias correction");
  detail::all_or_nothing(sim, [&] {
    if (detail::needs_calibration(sim))
      qkit::calibrate(sim, samples, options.calibration_samples, options.batch_size);

    // Which layers are corrected empirically, and their FP32 output means, all in one pass of
    // the unchanged model with every quantizer off.
    std::vector<std::vector<float>> expected(layers.size());
    std::vector<std::string> empirical;
    std::vector<std::size_t> fp32_index(layers.size(), 0);  // layer i's entry in `empirical`
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (options.analytical_where_possible)
        expected[i] = detail::expected_input(sim.dataflow(), *layers[i]);
      if (!expected[i].empty()) continue;
      fp32_index[i] = empirical.size();
      empirical.push_back(layers[i]->name);
    }
    detail::channel_mean_observer fp32(empirical);
    if (!empirical.empty())
      detail::with_quantizers_off(sim, [&] {
        detail::forward_samples(sim, samples, options.samples, options.batch_size, fp32);
      });

    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto& node = *layers[i];
      if (options.progress) options.progress({node.name, i, layers.size()});
      const bool analytical = !expected[i].empty();
      std::vector<double> shift;
      if (analytical) {
        shift = detail::analytical_shift(sim, node, expected[i]);
      } else {
        detail::channel_mean_observer q({node.name});
        detail::forward_samples(sim, samples, options.samples, options.batch_size, q);
        const auto fm = fp32.mean(fp32_index[i]);
        shift = q.mean(0);
        for (std::size_t c = 0; c < shift.size(); ++c) shift[c] -= fm[c];
      }
      detail::subtract(sim, node, shift);
      report.layers.push_back(detail::correction_line(
          node.name,
          analytical ? bias_correction_method::analytical : bias_correction_method::empirical,
          shift));
    }
    // The corrected biases move the activation ranges a little: calibrate them again.
    if (options.recalibrate) {
      qkit::calibrate(sim, samples, options.calibration_samples, options.batch_size);
      report.recalibrated = true;
    }
  });
  return report;
}

/// Data-free bias correction: every conv/linear layer that a folded batch norm precedes (with
/// at most a ReLU/ReLU6/clip between) gets b −= (W_q − W)·E[x]; the others are reported as
/// skipped. Parameter encodings are computed first if missing; activation encodings are not
/// touched (calibrate afterwards as usual).
template <class Sim>
bias_correction_report correct_bias_analytical(Sim& sim,
                                               const std::vector<std::string>& layers_to_ignore = {}) {
  bias_correction_report report;
  const auto layers = detail::correctable_layers(sim, layers_to_ignore, report.skipped, "bias correction");
  detail::all_or_nothing(sim, [&] {
    if (detail::needs_calibration(sim, /*params_only=*/true)) sim.compute_param_encodings();
    for (const auto* n : layers) {
      const auto e = detail::expected_input(sim.dataflow(), *n);
      if (e.empty()) {
        report.skipped.push_back(n->name);
        continue;
      }
      const auto shift = detail::analytical_shift(sim, *n, e);
      detail::subtract(sim, *n, shift);
      report.layers.push_back(
          detail::correction_line(n->name, bias_correction_method::analytical, shift));
    }
  });
  return report;
}

/// Per layer (conv/linear, forward order) and channel: the mean over (N, H, W) of the quantized
/// output of `sim` minus the output of `fp32_model` (the float model the simulation was built
/// from, batch norms treated as the simulation treats them), both before the activation, on the
/// first `count` samples — the error bias correction removes, for checking it on held-out data.
/// The reference must be the model as it was before correction: a simulation with its
/// quantizers off computes with the corrected biases.
template <class Sim>
std::vector<std::pair<std::string, std::vector<double>>> mean_output_error(
    Sim& sim, const typename Sim::model_type& fp32_model, const data::dataset& samples,
    std::size_t count, std::size_t batch_size = 64) {
  QKIT_PRECONDITION(!samples.empty() && count > 0, calibration_error,
                    "mean_output_error: no data");
  std::vector<std::string> names;
  for (const auto& n : sim.dataflow().nodes)
    if (n.weighted) names.push_back(n.name);
  quantsim<typename Sim::model_type, presets::fp32> reference(
      fp32_model, data::first(samples, 1).samples(), presets::fp32::default_config(), {}, {},
      sim.options());
  detail::channel_mean_observer q(names), fp(names);
  detail::forward_samples(sim, samples, count, batch_size, q);
  detail::forward_samples(reference, samples, count, batch_size, fp);
  std::vector<std::pair<std::string, std::vector<double>>> out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    auto d = q.mean(i);
    const auto f = fp.mean(i);
    QKIT_PRECONDITION(f.size() == d.size(), shape_error, "mean_output_error: layer '", names[i],
                      "' has ", d.size(), " channels in the simulation, ", f.size(),
                      " in the reference model");
    for (std::size_t c = 0; c < d.size(); ++c) d[c] -= f[c];
    out.emplace_back(names[i], std::move(d));
  }
  return out;
}

}  // namespace qkit::ptq
