// qkit/ptq/auto_quant.hpp — AutoQuant (AIMET's auto_quant): the one call from an FP32 model to
// the best post-training-quantized simulation qkit can make of it. The stages, in AIMET's order
// and with its rules:
//   1. QuantScheme selection — each (weights, activations) range-setter pair of the candidate
//      list (AIMET's: tf/tf, tfe/tf, tfe/tfe, tfe/percentile 99.9, tfe/percentile 99.99; at 16
//      bits and above only tf on that side) is calibrated and scored with the user's
//      evaluation; the best pair (first on ties) is used from then on;
//   2. W32 evaluation — activations quantized, weights in float: if even that misses the target
//      (FP32 − allowed drop), no weight technique can reach it, and the flow stops there;
//   3. batch norm folding, 4. cross-layer equalization (from the FP32 model; it folds the batch
//      norms itself), 5. AdaRound (on the better of 3 and 4) — each a simulation of its own,
//      scored; the flow stops at the first that meets the target and otherwise returns the best.
// Stages 1 and 2 simulate the batch norms live beside their layers (AIMET scores the unfolded
// model there); stages 3-5 are the deployable, folded simulation.
//
// Every stage leaves its weights and encodings in results_dir/<stage>/ and its scores in a cache
// (results_dir/.auto_quant_cache/<id>/), keyed by a fingerprint of the inputs (weights,
// calibration data, precision, candidates, AdaRound options): a second run, or one resumed after
// a stop, re-evaluates nothing a finished stage already scored; a cache made from other inputs is
// ignored and says so (AIMET reuses it silently). The report, diagnostics.{html,json}, draws the
// flow, each stage's score and which one was chosen.
//
// Range setters are compile-time policies of quantsim, so each candidate's encodings are
// computed in a simulation of its own type and then frozen into one of the result's type,
// quantsim<Model, Preset>: every simulation scored and returned is that type, with every
// encoding frozen, ready to evaluate or export.
//
// AIMET's AutoQuant with AMP, this flow then automatic mixed precision on its result, is
// analysis::auto_quant_mixed_precision (analysis/auto_quant_mixed_precision.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../io/report/html.hpp"
#include "../calib/range_method.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../io/atomic_file.hpp"
#include "../io/result_cache.hpp"
#include "../nn/batch_norm_fold.hpp"
#include "../nn/weights_file.hpp"
#include "../sim/calibrate.hpp"
#include "../sim/quantsim.hpp"
#include "../sim/sim_config.hpp"
#include "adaround.hpp"
#include "cross_layer_equalization.hpp"

namespace qkit::ptq {

/// A (weights, activations) pair of range setters: one candidate of the QuantScheme selection.
struct range_candidate {
  range_method weights = range_method::tf_enhanced;
  range_method activations = range_method::tf_enhanced;
  std::string label() const { return "W " + to_string(weights) + " / A " + to_string(activations); }
  friend bool operator==(const range_candidate&, const range_candidate&) = default;
};

/// AIMET's candidates, in its order.
inline std::vector<range_candidate> aimet_range_candidates() {
  using m = range_method;
  return {{m::minmax, m::minmax},
          {m::tf_enhanced, m::minmax},
          {m::tf_enhanced, m::tf_enhanced},
          {m::tf_enhanced, m::percentile_99_9},
          {m::tf_enhanced, m::percentile_99_99}};
}

struct auto_quant_options {
  std::filesystem::path results_dir = "auto_quant";
  /// The target is the FP32 score minus this, in the evaluation's units (0.01 is one point of a
  /// top-1 accuracy in [0, 1]). AIMET's optimize() defaults to 0.
  double allowed_drop = 0.01;
  std::vector<range_candidate> range_candidates = aimet_range_candidates();
  /// Calibration samples of every simulation (AIMET iterates its whole data loader).
  std::size_t calibration_samples = 2000;
  /// AdaRound's options; AIMET's AutoQuant rounds on at most 2,000 samples.
  adaround_options adaround = [] {
    adaround_options o;
    o.samples = 2000;
    o.verbose = false;
    return o;
  }();
  /// Reuse (and write) the stage cache. cache_id names its folder; empty: the fingerprint.
  bool use_cache = true;
  std::string cache_id;
  /// A line per stage and score; stderr when empty and `verbose`.
  std::function<void(const std::string&)> log;
  bool verbose = true;
};

/// One simulation scored.
struct auto_quant_trial {
  std::string label;
  double score = 0.0;
  double seconds = 0.0;
  bool cached = false;
};

/// One stage of the flow and how it ended: "met" (reached the target here), "applied" (ran;
/// the best so far), "discarded" (ran; no better than an earlier stage), "passed" (a check that
/// held: W32), "stopped" (the flow ended here short of the target), "skipped" (not reached).
struct auto_quant_stage {
  std::string name, key;
  bool ptq = false;  ///< produces a simulation the result can be
  std::string status = "skipped";
  double score = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0.0;
  bool cached = false;
  std::vector<auto_quant_trial> trials;
  std::vector<std::string> techniques;  ///< what the stage's simulation has applied
  std::string note;
};

template <class Model, class Preset>
struct auto_quant_result {
  double fp32 = 0.0, target = 0.0, score = 0.0;
  bool target_met = false;
  /// Stage 2 missed the target: no simulation is returned (AIMET returns None).
  bool w32_missed = false;
  range_candidate ranges;
  std::string chosen_stage;  ///< the stage whose simulation this is ("" when w32_missed)
  std::vector<std::string> techniques;
  std::vector<auto_quant_stage> stages;
  std::size_t evaluations = 0;  ///< calls of the evaluation (cached scores not counted)
  double seconds = 0.0;
  std::optional<Model> model;  ///< the chosen stage's weights (batch norms folded)
  std::optional<quantsim<Model, Preset>> sim;  ///< every encoding frozen
  std::filesystem::path report, report_json, weights, encodings, cache_dir;

  std::string summary() const {
    std::ostringstream o;
    o << "auto_quant " << Preset::label() << ": FP32 " << fp32 << ", target " << target;
    if (w32_missed) o << "; W32 evaluation misses the target: no simulation";
    else o << "; " << chosen_stage << " " << score << (target_met ? " (met)" : " (best; target not met)");
    o << "; " << ranges.label() << "; " << evaluations << " evaluations, " << seconds << " s\n";
    for (const auto& s : stages) {
      o << "  " << s.name << ": " << s.status;
      if (!std::isnan(s.score)) o << " " << s.score;
      if (s.cached) o << " (cached)";
      o << "\n";
    }
    return o.str();
  }
};

namespace detail {

inline std::string stage_key(const std::string& name) {
  std::string k;
  for (const char c : name) {
    if (std::isalnum(static_cast<unsigned char>(c))) k += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    else if (!k.empty() && k.back() != '_') k += '_';
  }
  while (!k.empty() && k.back() == '_') k.pop_back();
  return k;
}

inline std::string score_text(double v) {
  std::ostringstream o;
  o.precision(4);
  o << v;
  return o.str();
}

}  // namespace detail

/// AutoQuant on `model` at `Preset` (see the file comment; docs/autoquant.md). `evaluate(x)`
/// scores the FP32 model and every simulation (higher is better; a generic callable: it is
/// called with a Model and with quantsim<Model, Preset>). `calibration` gives every encoding and
/// AdaRound's data. The caller's model is not changed.
/// Errors, before anything runs: a negative or non-finite allowed drop, an empty candidate list
/// or one the precision leaves empty (at 16 bits only min-max is tried), no calibration data
/// (config_error / calibration_error); a non-finite score is an error naming the stage.
template <class Preset, class Model, class Evaluate>
auto_quant_result<Model, Preset> auto_quant(const Model& model, const tensor& example_input,
                                            const data::dataset& calibration, Evaluate&& evaluate,
                                            const auto_quant_options& options = {}) {
  using clock = std::chrono::steady_clock;
  using P = Preset;
  using Sim = quantsim<Model, P>;
  using encoding_map = std::map<std::string, std::vector<encoding>>;
  QKIT_PRECONDITION(std::isfinite(options.allowed_drop) && options.allowed_drop >= 0.0, config_error,
                    "auto_quant: allowed_drop is ", options.allowed_drop, " (it must be a finite number >= 0)");
  QKIT_PRECONDITION(!calibration.empty() && options.calibration_samples > 0, calibration_error,
                    "auto_quant: no calibration data");
  QKIT_PRECONDITION(!options.results_dir.empty(), config_error, "auto_quant: results_dir is empty");
  QKIT_PRECONDITION(!options.range_candidates.empty(), config_error, "auto_quant: the range candidate list is empty");

  // AIMET's rule: at 16 bits and above (and for float types, which have no ranges) only
  // min-max is tried on that side.
  const bool w_ranged = P::param_dtype == dtype::integer && P::param_bitwidth < 16;
  const bool a_ranged = P::activation_dtype == dtype::integer && P::activation_bitwidth < 16;
  std::vector<range_candidate> candidates;
  for (const auto& c : options.range_candidates)
    if ((w_ranged || c.weights == range_method::minmax) && (a_ranged || c.activations == range_method::minmax) &&
        std::find(candidates.begin(), candidates.end(), c) == candidates.end())
      candidates.push_back(c);
  {
    std::string given;
    for (const auto& c : options.range_candidates) given += (given.empty() ? "" : ", ") + c.label();
    QKIT_PRECONDITION(!candidates.empty(), config_error, "auto_quant: at ", P::label(),
                      " only min-max ranges are tried on a side of 16 bits or more (or float), and "
                      "none of the candidates [", given, "] has them");
  }
  {
    std::error_code ec;
    std::filesystem::create_directories(options.results_dir, ec);
    QKIT_PRECONDITION(!ec && std::filesystem::is_directory(options.results_dir), error,
                      "auto_quant: cannot create the results folder '", options.results_dir.string(), "'",
                      ec ? ": " + ec.message() : std::string());
  }
  const auto t_start = clock::now();
  auto_quant_result<Model, P> r;
  auto say = [&](const std::string& line) {
    if (options.log) options.log(line);
    else if (options.verbose) std::fprintf(stderr, "auto_quant: %s\n", line.c_str());
  };
  const sim_config config = P::default_config();
  const std::size_t n_cal = std::min(options.calibration_samples, calibration.size());

  // ---- the cache: a fingerprint of everything a stage's result depends on ----
  const std::string fingerprint = [&] {
    io::fnv1a f;
    f.text("qkit auto_quant 1");
    f.text(P::label());
    f.text(sim_config_to_json(config).dump());
    for (const auto& c : candidates) f.text(c.label());
    f.value(n_cal);
    const auto& a = options.adaround;
    f.value(a.samples), f.value(a.batch_size), f.value(a.iterations), f.value(a.reg), f.value(a.beta_start);
    f.value(a.beta_end), f.value(a.warm_start), f.value(a.learning_rate), f.value(a.quantized_activations);
    f.value(a.seed);
    for (const auto& l : a.layers_to_ignore) f.text(l);
    for (const auto d : example_input.shape()) f.value(d);
    Model copy = model;
    for (const auto& [name, t] : nn::state_dict(copy)) {
      f.text(name);
      for (const auto d : t.shape()) f.value(d);
      f.bytes(t.data(), t.size() * sizeof(float));
    }
    const std::size_t n_data = std::min(calibration.size(), std::max(n_cal, a.samples));
    const tensor& x = calibration.samples();
    f.bytes(x.data(), n_data * (x.size() / x.shape(0)) * sizeof(float));
    return f.hex();
  }();
  r.cache_dir = options.results_dir / ".auto_quant_cache" / (options.cache_id.empty() ? fingerprint : options.cache_id);
  io::result_cache cache;
  if (options.use_cache) cache = io::result_cache(r.cache_dir / "stages.json", fingerprint, "model, data, precision or options", say);
  auto cache_put = [&](const std::string& key, nlohmann::json v) { cache.put(key, std::move(v)); };
  // The cached entry under `key` when it has a score.
  auto cached_score = [&](const std::string& key) -> const nlohmann::json* {
    const nlohmann::json* e = cache.find(key);
    return e && e->contains("score") ? e : nullptr;
  };

  std::string where;
  auto score = [&](auto& m) {
    double s = 0.0;
    try {
      s = evaluate(m);
    } catch (const std::exception& e) {
      // Which stage: the caller's exception stays reachable as the nested one. The cache keeps
      // every stage finished before, so a rerun resumes here.
      std::throw_with_nested(error("auto_quant: the evaluation callback threw for " + where + ": " + e.what()));
    }
    ++r.evaluations;
    QKIT_PRECONDITION(std::isfinite(s), error, "auto_quant: the evaluation callback returned ", s, " for ", where,
                      " (a score must be a finite number)");
    return s;
  };
  // A score, from the cache under `key` when it is there.
  auto scored = [&](auto_quant_stage& st, const std::string& key, const std::string& label, auto&& run) {
    where = st.name + (label.empty() ? "" : " (" + label + ")");
    auto_quant_trial t{label.empty() ? st.name : label, 0.0, 0.0, false};
    if (const auto* e = cached_score(key)) {
      t.score = e->at("score").template get<double>();
      t.seconds = e->value("seconds", 0.0);
      t.cached = true;
    } else {
      const auto t0 = clock::now();
      t.score = run();
      t.seconds = std::chrono::duration<double>(clock::now() - t0).count();
      cache_put(key, {{"score", t.score}, {"seconds", t.seconds}});
    }
    say(where + ": " + detail::score_text(t.score) + (t.cached ? " (cached)" : " (" + detail::score_text(t.seconds) + " s)"));
    st.trials.push_back(t);
    return t;
  };

  // A simulation of `m` whose encodings come from candidate c's range setters, all frozen.
  // `frozen` parameter encodings (AdaRound's) are kept; `params_on` false leaves the weights in
  // float (W32). The activation statistics are gathered with the weights quantized as the
  // candidate's own simulation would have them.
  auto make_sim = [&](const Model& m, batch_norm_mode bn, const range_candidate& c, const encoding_map& frozen,
                      bool params_on = true) {
    const quantsim_options so{.batch_norms = bn};
    encoding_map params = frozen, acts;
    if (params_on) {
      with_range_method(c.weights, [&](auto proto) {
        quantsim<Model, P, decltype(proto), minmax_range> s(m, example_input, config, minmax_range{}, proto, so);
        for (const auto& [q, e] : frozen) s.set_and_freeze_encodings(q, e);
        s.compute_param_encodings();
        s.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto& q) {
          if (k == quantizer_kind::param && q.enabled() && q.has_encodings()) params[n] = q.encodings();
        });
      });
    }
    auto disable_params = [&](auto& s) {
      s.for_each_quantizer([&](const std::string&, quantizer_kind k, auto& q) {
        if (k == quantizer_kind::param) q.set_enabled(false);
      });
    };
    with_range_method(c.activations, [&](auto proto) {
      quantsim<Model, P, minmax_range, decltype(proto)> s(m, example_input, config, proto, minmax_range{}, so);
      if (params_on)
        for (const auto& [q, e] : params) s.set_and_freeze_encodings(q, e);
      else
        disable_params(s);
      calibrate(s, calibration, n_cal);
      s.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto& q) {
        if (k != quantizer_kind::param && q.enabled() && q.has_encodings()) acts[n] = q.encodings();
      });
    });
    Sim sim(m, example_input, config, minmax_range{}, minmax_range{}, so);
    if (params_on)
      for (const auto& [q, e] : params) sim.set_and_freeze_encodings(q, e);
    else
      disable_params(sim);
    for (const auto& [q, e] : acts) sim.set_and_freeze_encodings(q, e);
    return sim;
  };

  // A ptq stage's files: the folded weights, the ReLU6 layers CLE lifted, every encoding.
  auto stage_dir = [&](const std::string& key) { return options.results_dir / key; };
  auto save_stage = [&](const std::string& key, Sim& sim) {
    const auto dir = stage_dir(key);
    std::filesystem::create_directories(dir);
    sim.save_weights(dir / "model.npz");
    io::write_file_atomically(dir / "relu6_replaced.json", nlohmann::json(replaced_relu6(sim.model())).dump() + "\n");
    sim.export_encodings(dir / "model.encodings");
    return nlohmann::json{{"weights", io::file_digest(dir / "model.npz")},
                          {"relu6", io::file_digest(dir / "relu6_replaced.json")},
                          {"encodings", io::file_digest(dir / "model.encodings")}};
  };
  auto stage_files_intact = [&](const std::string& key) {
    const nlohmann::json* e = cache.find(key);
    if (!e || !e->contains("files")) return false;
    const auto dir = stage_dir(key);
    const auto& f = e->at("files");
    return f.value("weights", "") == io::file_digest(dir / "model.npz") &&
           f.value("relu6", "") == io::file_digest(dir / "relu6_replaced.json") &&
           f.value("encodings", "") == io::file_digest(dir / "model.encodings") &&
           !f.value("weights", "").empty();
  };
  auto load_stage = [&](const std::string& key) {
    const auto dir = stage_dir(key);
    Model m = model;
    nn::fold_batch_norms(m);
    nn::load_weights(m, dir / "model.npz");
    replace_relu6(m, nlohmann::json::parse(io::read_file(dir / "relu6_replaced.json")).template get<std::vector<std::string>>());
    Sim sim(m, example_input, config);
    sim.load_encodings(dir / "model.encodings", /*bitwidths_from_file=*/true);
    return sim;
  };

  // ---- FP32 ----
  auto_quant_stage fp32_stage{"FP32 evaluation", "fp32", false};
  {
    const auto t = scored(fp32_stage, "fp32", "", [&] {
      Model m = model;
      return score(m);
    });
    r.fp32 = t.score;
    fp32_stage.cached = t.cached;
    fp32_stage.seconds = t.seconds;
  }
  r.target = r.fp32 - options.allowed_drop;
  fp32_stage.score = r.fp32;
  fp32_stage.status = "passed";
  fp32_stage.note = "target = FP32 − " + detail::score_text(options.allowed_drop) + " = " + detail::score_text(r.target);
  r.stages.push_back(fp32_stage);

  // ---- 1. QuantScheme selection ----
  auto_quant_stage sel{"QuantScheme Selection", "quantscheme_selection", false};
  {
    const auto t0 = clock::now();
    if (candidates.size() == 1) {
      r.ranges = candidates[0];
      sel.note = "one candidate at " + P::label() + ": " + r.ranges.label() + " (not evaluated)";
    } else {
      double best = -std::numeric_limits<double>::infinity();
      for (const auto& c : candidates) {
        const auto t = scored(sel, "selection " + c.label(), c.label(), [&] {
          auto sim = make_sim(model, batch_norm_mode::keep, c, {});
          return score(sim);
        });
        if (t.score > best) {
          best = t.score;
          r.ranges = c;
        }
      }
      sel.score = best;
      sel.cached = std::all_of(sel.trials.begin(), sel.trials.end(), [](const auto& t) { return t.cached; });
      sel.note = "chosen: " + r.ranges.label();
    }
    sel.status = "passed";
    sel.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  }
  r.stages.push_back(sel);

  // ---- 2. W32 evaluation ----
  auto_quant_stage w32{"W32 Evaluation", "w32_evaluation", false};
  {
    const auto t = scored(w32, "w32", "", [&] {
      auto sim = make_sim(model, batch_norm_mode::keep, r.ranges, {}, false);
      return score(sim);
    });
    w32.score = t.score;
    w32.cached = t.cached;
    w32.seconds = t.seconds;
  }
  const bool integer_weights = P::param_dtype == dtype::integer && P::param_bitwidth < 32;
  if (w32.score < r.target) {
    w32.status = "stopped";
    w32.note = "with float weights and " + std::to_string(P::activation_bitwidth) + "-bit activations the score is " +
               detail::score_text(w32.score) + " < target " + detail::score_text(r.target) +
               ": no weight technique can reach it; the activations need attention (higher activation "
               "bitwidth, QAT with range learning, or the debugging workflow)";
    r.w32_missed = true;
  } else {
    w32.status = "passed";
  }
  r.stages.push_back(w32);

  // ---- 3-5. the PTQ techniques ----
  struct ptq_candidate {
    std::size_t stage;
    double score;
  };
  std::vector<ptq_candidate> done;
  auto best_done = [&]() -> const ptq_candidate* {
    const ptq_candidate* b = nullptr;
    for (const auto& d : done)
      if (!b || d.score > b->score) b = &d;
    return b;
  };
  bool met = false;
  // Runs a technique: `build()` returns the stage's simulation (and is not called when the
  // cache has the stage with its files intact).
  auto technique = [&](const std::string& name, std::vector<std::string> techniques, auto&& build) {
    auto_quant_stage st{name, detail::stage_key(name), true};
    st.techniques = std::move(techniques);
    const std::string key = st.key;
    const auto t0 = clock::now();
    if (const auto* e = cached_score(key); e && stage_files_intact(key)) {
      st.score = e->at("score").template get<double>();
      st.cached = true;
      st.seconds = e->value("seconds", 0.0);
      st.trials.push_back({name, st.score, st.seconds, true});
      say(name + ": " + detail::score_text(st.score) + " (cached)");
    } else {
      where = name;
      Sim sim = build();
      const double s = score(sim);
      st.score = s;
      st.seconds = std::chrono::duration<double>(clock::now() - t0).count();
      nlohmann::json entry{{"score", s}, {"seconds", st.seconds}, {"files", save_stage(key, sim)}};
      cache_put(key, std::move(entry));
      st.trials.push_back({name, s, st.seconds, false});
      say(name + ": " + detail::score_text(s) + " (" + detail::score_text(st.seconds) + " s)");
    }
    const ptq_candidate* before = best_done();
    st.status = (!before || st.score > before->score) ? "applied" : "discarded";
    if (st.score >= r.target) {
      st.status = "met";
      met = true;
    }
    done.push_back({r.stages.size(), st.score});
    r.stages.push_back(st);
  };
  auto skip = [&](const std::string& name, const std::string& why) {
    auto_quant_stage st{name, detail::stage_key(name), true};
    st.note = why;
    r.stages.push_back(st);
  };

  if (!r.w32_missed) {
    technique("Batchnorm Folding", {"batchnorm_folding"},
              [&] { return make_sim(model, batch_norm_mode::fold, r.ranges, {}); });
    if (!met)
      technique("Cross-Layer Equalization", {"cross_layer_equalization"}, [&] {
        Model m = model;
        (void)equalize(m, example_input);
        return make_sim(m, batch_norm_mode::fold, r.ranges, {});
      });
    else
      skip("Cross-Layer Equalization", "target met before");
    if (!met && integer_weights) {
      const auto& from = r.stages[best_done()->stage];
      std::vector<std::string> applied = from.techniques;
      applied.push_back("adaround");
      technique("AdaRound", applied, [&] {
        // From the best result so far (AIMET), its weights and the candidate's weight
        // encodings; AdaRound rounds and freezes them; the activation encodings are then
        // computed on the rounded weights with the candidate's activation range setter.
        Sim start = load_stage(from.key);
        Model base = start.model();
        Sim sim = make_sim(base, batch_norm_mode::fold, r.ranges, {});
        adaround_options o = options.adaround;
        o.recalibrate = false;
        o.calibration_samples = n_cal;
        (void)adaround(sim, calibration, o);
        encoding_map rounded;
        sim.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto& q) {
          if (k == quantizer_kind::param && q.enabled() && q.has_encodings()) rounded[n] = q.encodings();
        });
        return make_sim(sim.model(), batch_norm_mode::fold, r.ranges, rounded);
      });
      r.stages.back().note = "started from " + from.name + ", the best stage before it";
    } else {
      skip("AdaRound", met ? "target met before" : "the weights are not on an integer grid");
    }
  } else {
    for (const char* n : {"Batchnorm Folding", "Cross-Layer Equalization", "AdaRound"})
      skip(n, "W32 evaluation missed the target");
  }

  // ---- the result: the first stage that met the target, else the best ----
  if (!done.empty()) {
    const ptq_candidate* chosen = nullptr;
    for (const auto& d : done)
      if (d.score >= r.target) {
        chosen = &d;
        break;
      }
    if (!chosen) chosen = best_done();
    auto& st = r.stages[chosen->stage];
    r.chosen_stage = st.name;
    r.techniques = st.techniques;
    r.score = st.score;
    r.target_met = r.score >= r.target;
    r.sim.emplace(load_stage(st.key));
    r.model = r.sim->model();
    r.weights = stage_dir(st.key) / "model.npz";
    r.encodings = stage_dir(st.key) / "model.encodings";
    if (!r.target_met)
      say("no stage reached the target " + detail::score_text(r.target) + "; the best is " + st.name + " (" +
          detail::score_text(r.score) + "): consider per-channel weights, mixed precision or QAT");
  }
  r.seconds = std::chrono::duration<double>(clock::now() - t_start).count();

  // ---- the report ----
  nlohmann::ordered_json j;
  j["precision"] = P::label();
  j["fp32"] = r.fp32;
  j["allowed_drop"] = options.allowed_drop;
  j["target"] = r.target;
  j["score"] = r.score;
  j["target_met"] = r.target_met;
  j["w32_missed"] = r.w32_missed;
  j["chosen_stage"] = r.chosen_stage;
  j["techniques"] = r.techniques;
  j["ranges"] = {{"weights", to_string(r.ranges.weights)}, {"activations", to_string(r.ranges.activations)}};
  j["evaluations"] = r.evaluations;
  j["seconds"] = r.seconds;
  j["cache"] = std::filesystem::relative(r.cache_dir, options.results_dir).generic_string();
  j["stages"] = nlohmann::ordered_json::array();
  io::report::page page{"AutoQuant: " + P::label(), {}, {}, {}};
  {
    std::ostringstream o;
    o << "FP32 " << detail::score_text(r.fp32) << "; target " << detail::score_text(r.target) << " (FP32 − "
      << detail::score_text(options.allowed_drop) << "). ";
    if (r.w32_missed) o << "Stopped at the W32 evaluation: " << r.stages[2].note << ".";
    else
      o << (r.target_met ? "Target met by " : "Target not met; the best is ") << r.chosen_stage << " ("
        << detail::score_text(r.score) << ", " << r.ranges.label() << "); its weights and encodings are in "
        << detail::stage_key(r.chosen_stage) << "/.";
    o << " " << r.evaluations << " evaluations, " << detail::score_text(r.seconds) << " s.";
    page.paragraphs.push_back(o.str());
  }
  io::report::chart c{"Score of each stage", "stage", "score", {}, {}};
  io::report::series bars{"score", {}, {}, "bar", {}}, target{"target", {}, {}, "line", {}};
  for (const auto& s : r.stages) {
    nlohmann::ordered_json js;
    js["name"] = s.name;
    js["key"] = s.key;
    js["ptq"] = s.ptq;
    js["status"] = s.status;
    js["score"] = std::isnan(s.score) ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(s.score);
    js["seconds"] = s.seconds;
    js["cached"] = s.cached;
    js["techniques"] = s.techniques;
    js["note"] = s.note;
    js["trials"] = nlohmann::ordered_json::array();
    for (const auto& t : s.trials)
      js["trials"].push_back({{"label", t.label}, {"score", t.score}, {"seconds", t.seconds}, {"cached", t.cached}});
    if (s.ptq && s.status != "skipped") js["files"] = {{"weights", s.key + "/model.npz"}, {"encodings", s.key + "/model.encodings"}};
    j["stages"].push_back(std::move(js));
    std::string detail = std::isnan(s.score) ? s.note : detail::score_text(s.score) + (s.cached ? " (cached)" : "");
    if (s.name == r.chosen_stage) detail += " — chosen";
    page.flow.push_back({s.name, detail, s.status});
    for (const auto& t : s.trials) {
      c.categories.push_back(s.trials.size() > 1 ? t.label : s.name);  // selection: the candidate
      bars.values.push_back(t.score);
      target.values.push_back(r.target);
    }
    std::string text = s.name + ": " + s.status;
    if (!std::isnan(s.score)) text += ", " + detail::score_text(s.score);
    if (!s.note.empty()) text += " — " + s.note;
    page.paragraphs.push_back(text + ".");
  }
  c.data = {bars, target};
  page.charts.push_back(std::move(c));
  r.report_json = options.results_dir / "diagnostics.json";
  r.report = options.results_dir / "diagnostics.html";
  io::write_file_atomically(r.report_json, j.dump(2) + "\n");
  io::report::write(r.report, page);
  return r;
}

}  // namespace qkit::ptq
