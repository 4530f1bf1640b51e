// qkit/analysis/debug.hpp — the debugging workflow of AIMET's quantization guidebook in one call:
// debug_quantization() walks FP32 check → weights or activations → fix the weights → fix the
// activations → per-layer analysis → fix individual quantizers on the user's model and data,
// stops fixing once the target (FP32 − allowed drop) is met, and writes what it tried, what each
// try scored and what to do next into debug_report.{json,html}, with QuantAnalyzer's pages of
// the final simulation under analysis/ and the result as files a fresh simulation loads: the
// weights (model.npz; relu6_replaced.json names the ReLU6 layers CLE turned into ReLU), the AIMET
// config (quantsim_config.json) and the encodings with their per-quantizer bitwidths
// (model.encodings) — load_debug_result() puts them together again.
//
// Range setters and presets are compile-time policies of quantsim, so each try is a simulation
// of its own type built from a "weights state" (the model's weights, the config, the parameter
// encodings AdaRound froze); the steps after the activation range choice run once, in the
// simulation type of the chosen range setter. The caller's model is never changed.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../calib/range_method.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../io/atomic_file.hpp"
#include "../nn/batch_norm_fold.hpp"
#include "../nn/weights_file.hpp"
#include "../ptq/adaround.hpp"
#include "../ptq/bias_correction.hpp"
#include "../ptq/cross_layer_equalization.hpp"
#include "../sim/calibrate.hpp"
#include "../sim/quantsim.hpp"
#include "../sim/sim_config.hpp"
#include "quant_analyzer.hpp"
#include "../io/report/html.hpp"

namespace qkit::analysis {

struct debug_options {
  std::filesystem::path results_dir = "debug_quantization";
  /// The target is the FP32 score minus this (in the evaluation's units: 0.01 is one point of
  /// a top-1 accuracy in [0, 1]).
  double allowed_drop = 0.01;
  /// A side (weights or activations) "hurts" when quantizing it alone costs more than this
  /// fraction of the allowed drop; steps 3 and 4 run only for a side that hurts.
  double hurt_fraction = 0.5;
  /// Run steps 3 and 4 whatever the sensitivity says (to see every fix's score).
  bool try_every_fix = false;
  /// Calibration images for every simulation built (AIMET's num_quant_samples).
  std::size_t calibration_samples = 2000;
  /// Step 3: bias correction's samples (AIMET: 512) and AdaRound's options (AIMET's
  /// defaults; its calibration_samples is set from calibration_samples).
  bool bias_correction = true;
  std::size_t correction_samples = 512;
  bool adaround = true;
  ptq::adaround_options adaround_options = [] {
    ptq::adaround_options o;
    o.verbose = false;
    return o;
  }();
  /// Step 6: what a raised quantizer goes to — parameters below 8 bits to 8, others to 16;
  /// activations to 16.
  int raised_param_bitwidth = 8, raised_activation_bitwidth = 16;
  /// Step 5: QuantAnalyzer's options (results_dir is replaced by results_dir/analysis).
  quant_analyzer_options analyzer;
  /// A line per try ("step 3: CLE: 0.8575 (4.1 s)"); stderr when empty and `verbose`.
  std::function<void(const std::string&)> log;
  bool verbose = true;
};

/// One thing tried and what it scored.
struct debug_trial {
  std::string label;
  double score = 0.0;
  double seconds = 0.0;
};

struct debug_step {
  int number = 0;
  std::string title;
  bool ran = false;
  std::vector<debug_trial> trials;
  std::vector<std::string> findings;  ///< sentences a user can act on
};

template <class Model>
struct debug_result {
  double fp32 = 0.0, target = 0.0, score = 0.0;
  bool target_met = false;
  /// The last step that ran when the target was not met, and why ("" when met).
  std::string failed_step;
  std::string weights_fix = "none";
  range_method activations = range_method::minmax;
  /// Step 6's raised quantizers, in the order raised, with their new bitwidths.
  std::vector<std::pair<std::string, int>> raised;
  std::vector<debug_step> steps;
  std::size_t evaluations = 0;
  double seconds = 0.0;
  /// The final model's weights (batch norms folded; CLE, bias correction, AdaRound applied).
  std::optional<Model> model;
  std::filesystem::path report, weights, config, encodings;

  std::string summary() const {
    std::ostringstream o;
    o << "debug_quantization: FP32 " << fp32 << ", target " << target << ", final " << score
      << (target_met ? " (met)" : " (not met: " + failed_step + ")") << "; weights: " << weights_fix
      << ", activations: " << to_string(activations) << ", " << raised.size()
      << " quantizer(s) raised; " << evaluations << " evaluations, " << seconds << " s\n";
    for (const auto& s : steps) {
      o << "  step " << s.number << " " << s.title << (s.ran ? "" : " (skipped)") << "\n";
      for (const auto& t : s.trials) o << "    " << t.label << ": " << t.score << "\n";
      for (const auto& f : s.findings) o << "    - " << f << "\n";
    }
    return o.str();
  }
};

/// A simulation of the debug workflow's result: the weights, config and encodings it wrote to
/// `dir`, every encoding frozen (their bitwidths from the file), ready to evaluate or export.
template <class Preset, class Model>
quantsim<Model, Preset> load_debug_result(const Model& model, const tensor& example_input,
                                          const std::filesystem::path& dir) {
  Model m = model;
  nn::fold_batch_norms(m);  // the weights file holds the folded model
  nn::load_weights(m, dir / "model.npz");
  if (std::filesystem::exists(dir / "relu6_replaced.json"))
    ptq::replace_relu6(m, nlohmann::json::parse(io::read_file(dir / "relu6_replaced.json"))
                              .template get<std::vector<std::string>>());
  quantsim<Model, Preset> sim(m, example_input, load_sim_config(dir / "quantsim_config.json"));
  sim.load_encodings(dir / "model.encodings", /*bitwidths_from_file=*/true);
  return sim;
}

namespace detail {

// What a simulation is built from: the weights, the config, frozen parameter encodings.
template <class Model>
struct weights_state {
  std::string label;
  Model model;
  sim_config config;
  std::map<std::string, std::vector<encoding>> frozen;
  double score = 0.0;
};

inline std::string percent_or_value(double v) {
  std::ostringstream o;
  o.precision(4);
  o << v;
  return o.str();
}

// The range holding `fraction` of a histogram's values, centred (percentile rule).
inline std::pair<double, double> central_range(const exact_histogram& h, double percentile) {
  double lo = 0.0, hi = 0.0;
  qkit::detail::exact_percentile_range(h, percentile, lo, hi);
  return {lo, hi};
}

}  // namespace detail

/// The guidebook's workflow on `model` at `Preset` (see the header comment; docs/analysis.md).
/// `evaluate(m)` scores the FP32 model and every simulation (higher is better; any callable
/// taking them all, e.g. a generic lambda around nn::evaluate). `calibration` gives the
/// encodings (and AdaRound's and bias correction's data); `unlabeled` the per-layer MSE and the
/// histograms of step 5. Errors: a negative allowed drop or an empty data set (config_error /
/// calibration_error) before anything runs; a non-finite score names the step and try.
template <class Preset, class Model, class Evaluate>
debug_result<Model> debug_quantization(const Model& model, const tensor& example_input,
                                       const data::dataset& calibration,
                                       const data::dataset& unlabeled, Evaluate&& evaluate,
                                       const debug_options& options = {}) {
  using clock = std::chrono::steady_clock;
  QKIT_PRECONDITION(std::isfinite(options.allowed_drop) && options.allowed_drop >= 0.0, config_error,
                    "debug_quantization: allowed_drop is ", options.allowed_drop,
                    " (it must be a finite number >= 0)");
  QKIT_PRECONDITION(!calibration.empty() && options.calibration_samples > 0, calibration_error,
                    "debug_quantization: no calibration data");
  QKIT_PRECONDITION(!unlabeled.empty(), data_error, "debug_quantization: the unlabeled data set is empty");
  QKIT_PRECONDITION(!options.results_dir.empty(), config_error, "debug_quantization: results_dir is empty");
  {
    std::error_code ec;
    std::filesystem::create_directories(options.results_dir, ec);
    QKIT_PRECONDITION(!ec && std::filesystem::is_directory(options.results_dir), error,
                      "debug_quantization: cannot create the results folder '",
                      options.results_dir.string(), "'", ec ? ": " + ec.message() : std::string());
  }
  const auto t_start = clock::now();
  debug_result<Model> r;
  auto say = [&](const std::string& line) {
    if (options.log) options.log(line);
    else if (options.verbose) std::fprintf(stderr, "debug_quantization: %s\n", line.c_str());
  };
  std::string where;  // the try being scored, for error messages
  auto score = [&](auto& m) {
    const double s = evaluate(m);
    ++r.evaluations;
    QKIT_PRECONDITION(std::isfinite(s), error, "debug_quantization: the evaluation callback returned ", s,
                      " for ", where, " (a score must be a finite number)");
    return s;
  };
  using P = Preset;
  const sim_config base_config = P::default_config();
  const bool integer_params = P::param_dtype == dtype::integer && P::param_bitwidth < 32;
  const bool integer_acts = P::activation_dtype == dtype::integer && P::activation_bitwidth < 32;

  // A calibrated simulation of `state` with activation range setter R (type Sim<R>).
  auto build = [&](const detail::weights_state<Model>& state, auto proto, bool calibrated = true) {
    using R = decltype(proto);
    quantsim<Model, P, minmax_range, R> sim(state.model, example_input, state.config, proto);
    for (const auto& [q, encs] : state.frozen) sim.set_and_freeze_encodings(q, encs);
    if (calibrated) calibrate(sim, calibration, options.calibration_samples);
    return sim;
  };
  auto trial = [&](debug_step& step, const std::string& label, auto&& run) {
    const auto t0 = clock::now();
    where = "step " + std::to_string(step.number) + " (" + label + ")";
    const double s = run();
    const double secs = std::chrono::duration<double>(clock::now() - t0).count();
    step.trials.push_back({label, s, secs});
    std::ostringstream line;
    line << "step " << step.number << ": " << label << ": " << s << " (" << secs << " s)";
    say(line.str());
    return s;
  };

  // ---- 1. FP32 check ------------------------------------------------------------------------
  debug_step s1{1, "FP32 check", true, {}, {}};
  detail::weights_state<Model> plain{"none", model, base_config, {}, 0.0};
  r.fp32 = trial(s1, "FP32 model", [&] {
    Model m = model;
    return score(m);
  });
  r.target = r.fp32 - options.allowed_drop;
  const double at32 = trial(s1, "simulation, every quantizer at 32 bits (pass-through)", [&] {
    quantsim<Model, presets::fp32> sim(model, example_input);
    return score(sim);
  });
  auto base = build(plain, minmax_range{});
  const double off = trial(s1, "simulation at " + P::label() + ", every quantizer off", [&] {
    const auto on = enabled_quantizers(base);
    base.set_all_enabled(false);
    const double s = score(base);
    base.for_each_quantizer([&](const std::string& n, quantizer_kind, auto& q) { q.set_enabled(on.count(n) > 0); });
    return s;
  });
  for (const auto& [what, v] : {std::pair{"with every quantizer at 32 bits", at32},
                                std::pair{"with every quantizer off", off}}) {
    if (v == r.fp32)
      s1.findings.push_back(std::string("The simulation ") + what + " scores exactly the FP32 model's " +
                            detail::percent_or_value(v) + ": its float path is the model's.");
    else
      s1.findings.push_back(std::string("The simulation ") + what + " scores " + detail::percent_or_value(v) +
                            " against the FP32 model's " + detail::percent_or_value(r.fp32) +
                            ": a difference before any quantization (batch norm folding changes the "
                            "float arithmetic; a larger gap means a layer the simulation computes "
                            "differently, which must be fixed first).");
  }
  r.steps.push_back(s1);

  // ---- 2. Weights or activations -------------------------------------------------------------
  debug_step s2{2, "weights or activations", true, {}, {}};
  const auto on0 = enabled_quantizers(base);
  std::set<std::string> param_names;
  base.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto&) {
    if (k == quantizer_kind::param) param_names.insert(n);
  });
  auto only = [&](bool params) {
    base.for_each_quantizer([&](const std::string& n, quantizer_kind, auto& q) {
      q.set_enabled(on0.count(n) > 0 && param_names.count(n) == (params ? 1u : 0u));
    });
    const double s = score(base);
    base.for_each_quantizer([&](const std::string& n, quantizer_kind, auto& q) { q.set_enabled(on0.count(n) > 0); });
    return s;
  };
  plain.score = trial(s2, P::label() + ", min-max", [&] { return score(base); });
  const double w_only = trial(s2, "weights only at " + std::to_string(P::param_bitwidth) + " bits", [&] { return only(true); });
  const double a_only = trial(s2, "activations only at " + std::to_string(P::activation_bitwidth) + " bits", [&] { return only(false); });
  if constexpr (P::activation_dtype == dtype::integer && P::activation_bitwidth < 16) {
    using PA16 = sim_preset<P::param_bitwidth, 16, P::per_channel, P::param_dtype, dtype::integer>;
    trial(s2, PA16::label() + " (activations at 16 bits)", [&] {
      quantsim<Model, PA16> sim(model, example_input, base_config);
      calibrate(sim, calibration, options.calibration_samples);
      return score(sim);
    });
  }
  if constexpr (P::param_dtype == dtype::integer && P::param_bitwidth < 16) {
    using PW16 = sim_preset<16, P::activation_bitwidth, P::per_channel, dtype::integer, P::activation_dtype>;
    trial(s2, PW16::label() + " (weights at 16 bits)", [&] {
      quantsim<Model, PW16> sim(model, example_input, base_config);
      calibrate(sim, calibration, options.calibration_samples);
      return score(sim);
    });
  }
  const double hurt = options.hurt_fraction * options.allowed_drop;
  const bool weights_hurt = integer_params && r.fp32 - w_only > hurt;
  const bool activations_hurt = integer_acts && r.fp32 - a_only > hurt;
  {
    std::ostringstream f;
    f << "Quantizing only the weights costs " << detail::percent_or_value(r.fp32 - w_only)
      << ", only the activations " << detail::percent_or_value(r.fp32 - a_only) << ", both "
      << detail::percent_or_value(r.fp32 - plain.score) << " (allowed: "
      << detail::percent_or_value(options.allowed_drop) << "). ";
    if (weights_hurt && activations_hurt) f << "Both sides hurt: fix the weights first, then the activations.";
    else if (weights_hurt) f << "The weights cause the drop: steps 3 (weights) and 5 look at them.";
    else if (activations_hurt) f << "The activations cause the drop: step 4 tries other range setters.";
    else f << "Neither side alone costs more than " << detail::percent_or_value(hurt) << ".";
    s2.findings.push_back(f.str());
  }
  r.steps.push_back(s2);

  // ---- 3. Fix the weights --------------------------------------------------------------------
  debug_step s3{3, "fix the weights", weights_hurt || (options.try_every_fix && integer_params), {}, {}};
  detail::weights_state<Model> best = plain;
  if (s3.ran) {
    s3.trials.push_back({"none (min-max weights)", plain.score, 0.0});
    std::vector<detail::weights_state<Model>> bases{plain};
    // Cross-layer equalization (AIMET: with batch norms folded and ReLU6 replaced by ReLU).
    detail::weights_state<Model> cle{"CLE", model, base_config, {}, 0.0};
    cle.score = trial(s3, "CLE", [&] {
      (void)ptq::equalize(cle.model, example_input);
      auto sim = build(cle, minmax_range{});
      return score(sim);
    });
    bases.push_back(cle);
    if (!P::per_channel) {
      detail::weights_state<Model> pc{"per-channel weights", model, default_sim_config_per_channel(), {}, 0.0};
      pc.score = trial(s3, "per-channel weights", [&] {
        auto sim = build(pc, minmax_range{});
        return score(sim);
      });
      bases.push_back(pc);
    }
    auto by_score = [](const auto& a, const auto& b) { return a.score < b.score; };
    std::vector<detail::weights_state<Model>> tried = bases;
    if (options.bias_correction) {
      detail::weights_state<Model> bc = cle;
      bc.label = "CLE + bias correction";
      bc.score = trial(s3, bc.label, [&] {
        auto sim = build(cle, minmax_range{}, false);
        ptq::bias_correction_options o;
        o.samples = options.correction_samples;
        o.calibration_samples = options.calibration_samples;
        (void)ptq::correct_bias(sim, calibration, o);
        bc.model = sim.model();
        return score(sim);
      });
      tried.push_back(bc);
    }
    if (options.adaround) {
      // On the best of none / CLE / per-channel (AIMET: AdaRound after CLE, not with bias
      // correction).
      const auto from = *std::max_element(bases.begin(), bases.end(), by_score);
      detail::weights_state<Model> ada = from;
      ada.label = (from.label == "none" ? std::string() : from.label + " + ") + "AdaRound";
      ada.score = trial(s3, ada.label, [&] {
        auto sim = build(from, minmax_range{}, false);
        ptq::adaround_options o = options.adaround_options;
        o.calibration_samples = options.calibration_samples;
        (void)ptq::adaround(sim, calibration, o);
        ada.model = sim.model();
        ada.frozen.clear();
        sim.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto& q) {
          if (k == quantizer_kind::param && q.enabled() && q.frozen() && q.has_encodings())
            ada.frozen[n] = q.encodings();
        });
        return score(sim);
      });
      tried.push_back(ada);
    }
    best = *std::max_element(tried.begin(), tried.end(), by_score);
    if (best.score <= plain.score) best = plain;
    // Why the weights hurt: the per-tensor layer whose channels differ most.
    std::string worst_layer;
    double worst_ratio = 0.0, worst_median = 0.0, worst_max = 0.0;
    if (!P::per_channel) {
      base.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto& q) {
        if (k != quantizer_kind::param || !q.enabled() || n.size() < 7 || n.substr(n.size() - 7) != ".weight") return;
        const tensor& w = base.parameter(n);
        if (w.dimension() < 2 || w.shape(0) < 2) return;
        const std::size_t inner = w.size() / w.shape(0);
        std::vector<double> ch(w.shape(0), 0.0);
        for (std::size_t c = 0; c < w.shape(0); ++c)
          for (std::size_t i = 0; i < inner; ++i) ch[c] = std::max(ch[c], double(std::fabs(w.data()[c * inner + i])));
        std::vector<double> sorted = ch;
        std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
        const double median = sorted[sorted.size() / 2];
        const double top = *std::max_element(ch.begin(), ch.end());
        if (median > 0.0 && top / median > worst_ratio) {
          worst_ratio = top / median;
          worst_layer = n;
          worst_median = median;
          worst_max = top;
        }
      });
    }
    std::ostringstream f;
    f << "Best weights: " << best.label << " (" << detail::percent_or_value(best.score) << " against "
      << detail::percent_or_value(plain.score) << " without a fix).";
    if (!worst_layer.empty() && worst_ratio > 4.0)
      f << " Per tensor, " << worst_layer << "'s largest weight is " << detail::percent_or_value(worst_max)
        << ", " << detail::percent_or_value(worst_ratio) << "x its median channel's "
        << detail::percent_or_value(worst_median) << ": one grid for all its channels wastes most steps "
        << "on the few large ones; CLE rescales them, per-channel weights give each its own grid.";
    s3.findings.push_back(f.str());
  } else {
    s3.findings.push_back(integer_params ? "Not needed: the weights alone cost at most " +
                                               detail::percent_or_value(hurt) + "."
                                         : "Not applicable: the weights are not on an integer grid.");
  }
  r.weights_fix = best.label;
  r.steps.push_back(s3);

  // ---- 4. Fix the activations ----------------------------------------------------------------
  debug_step s4{4, "fix the activations", activations_hurt || (options.try_every_fix && integer_acts), {}, {}};
  range_method chosen = range_method::minmax;
  if (s4.ran) {
    double best_act = best.score;
    s4.trials.push_back({"min-max (with the weights of step 3)", best.score, 0.0});
    for (const auto a : {range_method::tf_enhanced, range_method::percentile_99_9,
                         range_method::percentile_99_99, range_method::mse, range_method::entropy}) {
      const double s = trial(s4, to_string(a), [&] {
        return with_range_method(a, [&](auto proto) {
          auto sim = build(best, proto);
          return score(sim);
        });
      });
      if (s > best_act) {
        best_act = s;
        chosen = a;
      }
    }
    s4.findings.push_back("Best activation ranges: " + to_string(chosen) + " (" +
                          detail::percent_or_value(best_act) + " against min-max's " +
                          detail::percent_or_value(best.score) + ").");
    best.score = best_act;
  } else {
    s4.findings.push_back(integer_acts ? "Not needed: the activations alone cost at most " +
                                             detail::percent_or_value(hurt) + "; min-max kept."
                                       : "Not applicable: the activations are not on an integer grid.");
  }
  r.activations = chosen;
  r.steps.push_back(s4);

  // ---- 5 and 6, in the simulation of the chosen range setter ----------------------------------
  with_range_method(chosen, [&](auto proto) {
    auto sim = build(best, proto);
    debug_step s5{5, "per-layer analysis", true, {}, {}};
    quant_analyzer_options ao = options.analyzer;
    ao.results_dir = options.results_dir / "analysis";
    using Sim = decltype(sim);
    quant_analyzer<Sim> qa(sim, [&](Sim& s) { where = "step 5 (per-layer analysis)"; return score(s); }, ao);
    const auto t0 = clock::now();
    const auto en = qa.per_layer_quant_enabled();
    qa.export_per_layer_encoding_min_max_range();
    const auto hist = qa.export_per_layer_stats_histogram(unlabeled);
    (void)qa.per_layer_mse_loss(unlabeled);
    const double secs = std::chrono::duration<double>(clock::now() - t0).count();
    say("step 5: per-layer analysis of " + std::to_string(en.size()) + " layers (" + std::to_string(secs) + " s)");
    for (const auto& [layer, v] : en) s5.trials.push_back({"only " + layer + " quantized", v, 0.0});
    auto order = en;
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
    const auto layers = quantized_layers(sim);
    auto quantizers_of = [&](const std::string& layer) {
      for (const auto& g : layers)
        if (g.layer == layer) return g.quantizers;
      return std::vector<std::string>{};
    };
    for (std::size_t i = 0; i < std::min<std::size_t>(3, order.size()); ++i) {
      const auto& [layer, v] = order[i];
      std::ostringstream f;
      if (r.fp32 - v <= hurt) {
        // Nothing per layer worth fixing: say so once, with the worst layer's cost.
        if (i == 0)
          f << "No layer alone costs more than " << detail::percent_or_value(hurt) << " (the worst, " << layer
            << ", costs " << detail::percent_or_value(r.fp32 - v) << "): nothing to fix layer by layer.";
        if (i == 0) s5.findings.push_back(f.str());
        break;
      }
      f << layer << " alone costs " << detail::percent_or_value(r.fp32 - v) << ".";
      for (const auto& q : quantizers_of(layer)) {
        auto it = hist.find(q);
        if (it == hist.end()) continue;
        const bool param = param_names.count(q) > 0;
        const bool per_channel = sim.with_quantizer(q, [](const auto& z) { return z.per_channel(); });
        // Ranges against the values they hold: how much of the grid the outliers take.
        double worst = 0.0;
        std::string which;
        for (const auto& h : it->second) {
          const auto [lo, hi] = detail::central_range(h.h, 99.9);
          const double ratio = (h.e.max - h.e.min) / std::max(hi - lo, 1e-30);
          if (ratio > worst) {
            worst = ratio;
            which = h.channel;
          }
        }
        f << " " << (param ? "Weights " : "Activations ") << q << (which.empty() ? "" : " (channel " + which + ")")
          << ": the encoding's range is " << detail::percent_or_value(worst)
          << "x the range of the middle 99.9% of its values";
        if (param)
          f << (per_channel ? "; AdaRound, or 8 bits for this layer." : "; per-channel weights, CLE, or 8 bits for this layer.");
        else
          f << (worst > 2.0 ? ": outliers set the range; use percentile or 16 bits."
                            : ": the range fits the values; 16 bits for this layer if it must improve.");
      }
      s5.findings.push_back(f.str());
    }
    s5.findings.push_back("QuantAnalyzer's pages of this simulation: analysis/index.html (per-layer "
                          "scores, encoding ranges, histograms, per-layer MSE).");
    r.steps.push_back(s5);

    // ---- 6. Fix individual quantizers ----
    debug_step s6{6, "fix individual quantizers", best.score < r.target, {}, {}};
    double now = best.score;
    if (s6.ran) {
      for (const auto& [layer, v] : order) {
        if (now >= r.target) break;
        std::vector<std::pair<std::string, int>> raise;
        for (const auto& q : quantizers_of(layer)) {
          sim.with_quantizer(q, [&](auto& z) {
            if (!z.enabled() || z.settings().dtype != dtype::integer || z.bitwidth() >= 32) return;
            const bool param = param_names.count(q) > 0;
            const int to = param ? (z.bitwidth() < options.raised_param_bitwidth ? options.raised_param_bitwidth : 16)
                                 : std::max(z.bitwidth(), options.raised_activation_bitwidth);
            if (to > z.bitwidth()) raise.emplace_back(q, to);
          });
        }
        if (raise.empty()) continue;
        std::string label = "raise " + layer + ":";
        for (const auto& q_bw : raise) {  // not a structured binding: clang < 16 cannot capture one
          const std::string& q = q_bw.first;
          const int bw = q_bw.second;
          label += " " + q + "→" + std::to_string(bw);
          sim.with_quantizer(q, [&](auto& z) {
            z.unfreeze();
            z.set_bitwidth(bw);
          });
          if (param_names.count(q)) sim.compute_param_encodings(q);
          else sim.with_quantizer(q, [](auto& z) { z.compute_encodings(); });
          r.raised.emplace_back(q, bw);
        }
        now = trial(s6, label, [&] { return score(sim); });
      }
      s6.findings.push_back(now >= r.target
                                ? "Met with " + std::to_string(r.raised.size()) + " quantizer(s) raised (" +
                                      detail::percent_or_value(now) + "): apply the written config and encodings."
                                : "Every quantized layer raised and still " + detail::percent_or_value(now) +
                                      " < " + detail::percent_or_value(r.target) + ".");
    } else {
      s6.findings.push_back("Not needed: " + detail::percent_or_value(best.score) + " meets the target " +
                            detail::percent_or_value(r.target) + ".");
    }
    r.score = now;
    r.steps.push_back(s6);

    // The result as files a fresh simulation loads (load_debug_result).
    r.weights = options.results_dir / "model.npz";
    r.config = options.results_dir / "quantsim_config.json";
    r.encodings = options.results_dir / "model.encodings";
    nn::save_weights(sim.model(), r.weights);
    // CLE's ReLU6 → ReLU is not a parameter: recorded beside the weights for the loader.
    io::write_file_atomically(options.results_dir / "relu6_replaced.json",
                              nlohmann::json(ptq::replaced_relu6(sim.model())).dump() + "\n");
    io::write_file_atomically(r.config, sim_config_to_json(best.config).dump(2) + "\n");
    sim.export_encodings(r.encodings);
    r.model = sim.model();
  });

  r.target_met = r.score >= r.target;
  if (!r.target_met) {
    r.failed_step = "step 6 (fix individual quantizers): every quantized layer was raised and the score " +
                    detail::percent_or_value(r.score) + " stays below the target " +
                    detail::percent_or_value(r.target);
  }
  r.seconds = std::chrono::duration<double>(clock::now() - t_start).count();

  // ---- the report ----
  nlohmann::ordered_json j;
  j["fp32"] = r.fp32;
  j["target"] = r.target;
  j["allowed_drop"] = options.allowed_drop;
  j["precision"] = P::label();
  j["score"] = r.score;
  j["target_met"] = r.target_met;
  j["failed_step"] = r.failed_step;
  j["weights_fix"] = r.weights_fix;
  j["activation_range"] = to_string(r.activations);
  j["raised"] = nlohmann::ordered_json::object();
  for (const auto& [q, bw] : r.raised) j["raised"][q] = bw;
  j["evaluations"] = r.evaluations;
  j["seconds"] = r.seconds;
  j["files"] = {{"weights", "model.npz"}, {"config", "quantsim_config.json"},
                {"encodings", "model.encodings"}, {"analysis", "analysis/index.html"}};
  j["steps"] = nlohmann::ordered_json::array();
  io::report::page page{"Quantization debugging: " + P::label(), {}, {}, {{"analysis/index.html", "QuantAnalyzer's pages (step 5)"}}};
  {
    std::ostringstream o;
    o << "FP32 " << detail::percent_or_value(r.fp32) << "; target " << detail::percent_or_value(r.target)
      << " (FP32 − " << detail::percent_or_value(options.allowed_drop) << "); final "
      << detail::percent_or_value(r.score) << ": "
      << (r.target_met ? "met" : "not met — " + r.failed_step) << ". Weights: " << r.weights_fix
      << "; activation ranges: " << to_string(r.activations) << "; " << r.raised.size()
      << " quantizer(s) raised. " << r.evaluations << " evaluations, " << detail::percent_or_value(r.seconds)
      << " s. Apply with load_debug_result (model.npz, quantsim_config.json, model.encodings).";
    page.paragraphs.push_back(o.str());
  }
  for (const auto& s : r.steps) {
    nlohmann::ordered_json js;
    js["step"] = s.number;
    js["title"] = s.title;
    js["ran"] = s.ran;
    js["trials"] = nlohmann::ordered_json::array();
    for (const auto& t : s.trials) js["trials"].push_back({{"label", t.label}, {"score", t.score}, {"seconds", t.seconds}});
    js["findings"] = s.findings;
    j["steps"].push_back(std::move(js));
    std::string text = "Step " + std::to_string(s.number) + ", " + s.title + (s.ran ? ": " : " (skipped): ");
    for (const auto& f : s.findings) text += f + " ";
    page.paragraphs.push_back(text);
    if (!s.trials.empty()) {
      io::report::chart c{"Step " + std::to_string(s.number) + ": " + s.title, "try", "score", {}, {}};
      io::report::series v{"score", {}, {}, "bar", {}};
      io::report::series t{"target", {}, {}, "line", {}};
      for (const auto& tr : s.trials) {
        c.categories.push_back(tr.label);
        v.values.push_back(tr.score);
        t.values.push_back(r.target);
      }
      c.data = {v, t};
      page.charts.push_back(std::move(c));
    }
  }
  io::write_file_atomically(options.results_dir / "debug_report.json", j.dump(2) + "\n");
  r.report = options.results_dir / "debug_report.html";
  io::report::write(r.report, page);
  return r;
}

}  // namespace qkit::analysis
