// qkit/analysis/mixed_precision.hpp — automatic mixed precision (AIMET's AMP,
// choose_mixed_precision): which quantizer groups of a calibrated QuantSim can go to a lower
// precision, and the whole curve of score against cost on the way down.
//
//   - Quantizer groups, found on the dataflow as AIMET groups them: an activation quantizer with
//     the weights of the layers that read it (through ops that do not quantize their output),
//     a layer's weights alone when nothing quantizes its input, an activation alone when no
//     weighted layer reads it.
//   - Candidates: (activation bits, dtype) × (parameter bits, dtype) pairs, integers of 4, 8 or
//     16 bits (what the ONNX export stores) or float16; the baseline is the candidate that is
//     highest on both sides (a list without one is an error).
//   - Phase 1: every group alone lowered to every other candidate, the rest at the baseline,
//     scored (the phase-1 evaluation: a callback, or SQNR of the model output against FP32 on a
//     few samples, AIMET's default); sorted least sensitive first: the sensitivity list.
//   - Phase 2: the list applied cumulatively (an entry that neither lowers the cost nor, at the
//     same cost, narrows its group — an activation-only group's 16 → 8 bits — is passed over),
//     each step a point of relative bit-operations (Σ MACs × activation bits ×
//     weight bits, float counted as √1.5 × its width; relative to the baseline) and score (the
//     phase-2 evaluation); the cheapest step with score ≥ FP32 − allowed drop is chosen by
//     binary search (or brute force), and every other step is then evaluated too, so the whole
//     curve is always written.
// Changing a precision never needs new data: a quantizer at the precision it had when the call
// began keeps the encodings it had (a range method's, AdaRound's frozen weight encodings, so AMP
// after AutoQuant keeps its work); at any other precision its encodings are recomputed, the
// activations' from their calibration statistics, the weights' from the weights.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../io/atomic_file.hpp"
#include "../io/result_cache.hpp"
#include "../sim/quantsim.hpp"
#include "../io/report/html.hpp"

namespace qkit::analysis {

/// One side of a candidate: an integer grid of `bitwidth` bits or float16.
struct amp_precision {
  int bitwidth = 8;
  dtype type = dtype::integer;
  /// The width bit-operations count: float counts as √1.5 × its width (AIMET).
  double cost_width() const { return type == dtype::floating ? std::sqrt(1.5) * bitwidth : double(bitwidth); }
  std::string label() const { return type == dtype::floating ? "FP" + std::to_string(bitwidth) : std::to_string(bitwidth); }
  friend bool operator==(const amp_precision&, const amp_precision&) = default;
};

/// A (activations, parameters) precision pair.
struct amp_candidate {
  amp_precision activation, param;
  std::string label() const {
    if (activation.type == dtype::floating && param.type == dtype::floating && activation.bitwidth == param.bitwidth)
      return "FP" + std::to_string(activation.bitwidth);
    return "W" + param.label() + "A" + activation.label();
  }
  friend bool operator==(const amp_candidate&, const amp_candidate&) = default;
};

inline amp_candidate w_a(int param_bits, int activation_bits) {
  return {{activation_bits, dtype::integer}, {param_bits, dtype::integer}};
}

/// Quantizers whose precision changes together.
struct quantizer_group {
  std::vector<std::string> activations, params;
  std::vector<std::string> layers;  ///< the weighted layers whose weights are in the group
  std::string name() const {
    std::string s;
    for (const auto& a : activations) s += (s.empty() ? "" : "+") + a;
    for (const auto& p : params) s += (s.empty() ? "" : "+") + p;
    return s;
  }
};

/// The groups of `sim`'s enabled quantizers (see the file comment), in dataflow order.
template <class Sim>
std::vector<quantizer_group> find_quantizer_groups(const Sim& sim) {
  const nn::dataflow& flow = sim.dataflow();
  std::set<std::string> on;
  sim.for_each_quantizer([&](const std::string& n, quantizer_kind, const auto& q) {
    if (q.enabled()) on.insert(n);
  });
  // The enabled activation quantizer a tensor is read through: its own, or that of the tensor
  // before an op with a single operand that quantizes nothing (flatten, pooling).
  auto source = [&](std::string t) -> std::string {
    for (;;) {
      if (on.count(t)) return t;
      const nn::dataflow_node* p = flow.producer(t);
      if (!p || p->weighted || p->inputs.size() != 1) return {};
      t = p->inputs[0];
    }
  };
  std::vector<quantizer_group> groups;
  std::map<std::string, std::size_t> by_activation;
  auto group_of = [&](const std::string& act) -> quantizer_group& {
    auto it = by_activation.find(act);
    if (it != by_activation.end()) return groups[it->second];
    by_activation[act] = groups.size();
    groups.push_back({{act}, {}, {}});
    return groups.back();
  };
  if (on.count(flow.input)) (void)group_of(flow.input);
  for (const auto& n : flow.nodes) {
    if (n.weighted) {
      // The weight (a bias quantizer, when one is on, keeps its own, wider precision).
      std::vector<std::string> params;
      if (on.count(n.name + ".weight")) params.push_back(n.name + ".weight");
      if (!params.empty()) {
        const std::string src = n.inputs.empty() ? std::string() : source(n.inputs[0]);
        quantizer_group& g = src.empty() ? (groups.push_back({}), groups.back()) : group_of(src);
        g.params.insert(g.params.end(), params.begin(), params.end());
        g.layers.push_back(n.name);
      }
    }
    if (on.count(n.output)) (void)group_of(n.output);
  }
  return groups;
}

namespace detail {

template <class Sim>
struct mac_observer {
  std::map<std::string, double>* out;
  const Sim* sim;
  template <class Layer>
  void layer_output(const nn::dataflow_node& n, const Layer&, const tensor& before, const tensor&) {
    if (!n.weighted || before.dimension() == 0 || before.shape(0) == 0) return;
    const tensor& w = sim->parameter(n.name + ".weight");
    (*out)[n.name] = double(before.size() / before.shape(0)) * double(w.size() / w.shape(0));
  }
};

}  // namespace detail

/// MACs per sample of every conv/linear layer of `sim` (output elements × inputs per output),
/// from one forward pass of `example_input`.
template <class Sim>
std::map<std::string, double> layer_macs(Sim& sim, const tensor& example_input) {
  std::map<std::string, double> macs;
  detail::mac_observer<Sim> o{&macs, &sim};
  (void)sim.forward(example_input, o);
  return macs;
}

/// One entry of the sensitivity list.
struct amp_sensitivity {
  std::size_t group = 0;
  amp_candidate candidate;
  double score = 0.0;
  double bitops_reduction = 0.0;  ///< relative to the baseline's total
};

/// One step of phase 2.
struct amp_point {
  std::size_t step = 0;             ///< entries applied (0: the baseline)
  double relative_bitops = 1.0;
  double score = 0.0;
  std::size_t group = 0;            ///< the group the step lowered (step > 0)
  amp_candidate candidate;          ///< to this candidate
  bool pareto = false;              ///< no other point is cheaper and scores at least as high
};

enum class amp_search { binary, brute_force };

struct amp_options {
  std::filesystem::path results_dir = "mixed_precision";
  /// Target = FP32 − allowed_drop (the evaluation's units).
  double allowed_drop = 0.005;
  amp_search search = amp_search::binary;
  /// Phase 1 without a callback: SQNR of the output on this many samples (AIMET: 128).
  std::size_t sqnr_samples = 128;
  /// Reuse (and write) the score cache, results_dir/.amp_cache/<id>/scores.json: a second run,
  /// or one resumed after a stop, evaluates only what is not there. cache_id names the folder;
  /// empty: a fingerprint of the inputs (weights, encodings, statistics at the baseline,
  /// candidates, SQNR data). AIMET's clean_start = false.
  bool use_cache = true;
  std::string cache_id;
  /// The FP32 model, for a simulation whose weights are no longer its own (AdaRound rounded
  /// them, CLE rescaled them): its score is the target's base and its output the SQNR reference.
  /// Empty: the simulation with every quantizer off.
  std::optional<double> fp32_score;
  std::function<tensor(const tensor&)> fp32_forward;
  std::function<void(const std::string&)> log;
  bool verbose = true;
};

struct amp_result {
  std::vector<amp_candidate> candidates;
  amp_candidate baseline;
  std::vector<quantizer_group> groups;
  std::vector<amp_candidate> chosen;  ///< per group, the candidate applied
  std::vector<amp_sensitivity> sensitivity;  ///< least sensitive first
  std::vector<amp_point> curve;              ///< step 0 (the baseline) to the last step
  std::size_t chosen_step = 0;
  double fp32 = 0.0, target = 0.0, baseline_score = 0.0, score = 0.0, relative_bitops = 1.0;
  bool target_met = false;
  /// Calls of the evaluation (phase 1 counts SQNR measurements when there is no callback);
  /// scores taken from the cache are not counted. search_evaluations: the phase-2 points the
  /// search needed (cached or not).
  std::size_t phase1_evaluations = 0, phase2_evaluations = 0, search_evaluations = 0, cached_scores = 0;
  std::size_t evaluations = 0;  ///< all of them: FP32, the baseline, phase 1 and phase 2
  double seconds = 0.0;
  std::filesystem::path pareto_json, pareto_html, sensitivity_html, cache_dir;
};

namespace detail {

inline std::string amp_number(double v) {
  std::ostringstream o;
  o.precision(4);
  o << v;
  return o.str();
}

// SQNR in dB of `y` against `ref`: 10·log10(Σ ref² / Σ (ref − y)²), the noise floored at 1e-12
// of the signal (120 dB), so an output that did not change scores a finite number.
inline double sqnr_db(const tensor& ref, const tensor& y) {
  double s = 0.0, n = 0.0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double d = double(ref.data()[i]) - y.data()[i];
    s += double(ref.data()[i]) * ref.data()[i];
    n += d * d;
  }
  if (s == 0.0) return n == 0.0 ? 120.0 : -120.0;
  return 10.0 * std::log10(s / std::max(n, 1e-12 * s));
}

}  // namespace detail

/// Checks AMP's inputs before any work: a finite allowed drop ≥ 0, at least two candidates, each
/// side an integer of 4, 8 or 16 bits or float16, one candidate highest on both sides. Drops
/// duplicate candidates and returns the baseline. config_error naming what is wrong otherwise.
inline amp_candidate check_amp_inputs(std::vector<amp_candidate>& candidates, const amp_options& options) {
  QKIT_PRECONDITION(std::isfinite(options.allowed_drop) && options.allowed_drop >= 0.0, config_error,
                    "choose_mixed_precision: allowed_drop is ", options.allowed_drop,
                    " (it must be a finite number >= 0)");
  QKIT_PRECONDITION(!options.fp32_score || std::isfinite(*options.fp32_score), config_error,
                    "choose_mixed_precision: fp32_score is ", options.fp32_score.value_or(0.0), " (not a finite number)");
  QKIT_PRECONDITION(candidates.size() >= 2, config_error, "choose_mixed_precision: ", candidates.size(),
                    " candidate(s); at least two are needed (a baseline and a lower one)");
  for (const auto& c : candidates)
    for (const auto* p : {&c.activation, &c.param}) {
      const bool ok = p->type == dtype::floating ? p->bitwidth == 16
                                                 : (p->bitwidth == 4 || p->bitwidth == 8 || p->bitwidth == 16);
      QKIT_PRECONDITION(ok, config_error, "choose_mixed_precision: candidate ", c.label(), ": ",
                        p->type == dtype::floating ? "float" : "integer", " ", p->bitwidth,
                        " bits is not a precision the target holds (integers of 4, 8 or 16 bits, float16)");
    }
  {  // duplicates dropped, first occurrence kept
    std::vector<amp_candidate> unique;
    for (const auto& c : candidates)
      if (std::find(unique.begin(), unique.end(), c) == unique.end()) unique.push_back(c);
    candidates = std::move(unique);
  }
  // The baseline: highest on both sides (cost width; float16 above int16).
  const amp_candidate* base = nullptr;
  for (const auto& c : candidates) {
    bool top = true;
    for (const auto& o : candidates)
      top = top && c.activation.cost_width() >= o.activation.cost_width() && c.param.cost_width() >= o.param.cost_width();
    if (top) base = &c;
  }
  {
    std::string list;
    for (const auto& c : candidates) list += (list.empty() ? "" : ", ") + c.label();
    QKIT_PRECONDITION(base, config_error, "choose_mixed_precision: no candidate of [", list,
                      "] is highest on both sides, so there is no baseline to lower from (add one, e.g. W16A16)");
  }
  return *base;
}

/// AMP on `sim`, a calibrated QuantSim (its quantizers keep their statistics; see the file
/// comment and docs/mixed_precision.md). `evaluate(sim)` scores a configuration (phase 2, and
/// the FP32 score with every quantizer off unless options.fp32_score is given); phase 1 scores
/// with the SQNR of the output on `sqnr_data`'s first options.sqnr_samples samples, or with
/// `evaluate` when it is nullptr. On return `sim` has the chosen configuration with its
/// encodings, ready to export; quantizers at their own precision keep the encodings they had.
/// Errors, before anything changes: check_amp_inputs' (config_error); a quantizer without
/// statistics (calibrate first: calibration_error). A non-finite score or a throwing callback
/// is an error naming the phase and configuration, with the simulation put back as it was.
template <class Sim, class Evaluate>
amp_result choose_mixed_precision(Sim& sim, const tensor& example_input, std::vector<amp_candidate> candidates,
                                  Evaluate&& evaluate, const data::dataset* sqnr_data,
                                  const amp_options& options = {}) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  const amp_candidate baseline = check_amp_inputs(candidates, options);
  QKIT_PRECONDITION(sqnr_data == nullptr || !sqnr_data->empty(), calibration_error,
                    "choose_mixed_precision: the SQNR data set is empty");
  {
    std::error_code ec;
    std::filesystem::create_directories(options.results_dir, ec);
    QKIT_PRECONDITION(!ec && std::filesystem::is_directory(options.results_dir), error,
                      "choose_mixed_precision: cannot create the results folder '", options.results_dir.string(), "'",
                      ec ? ": " + ec.message() : std::string());
  }
  auto say = [&](const std::string& line) {
    if (options.log) options.log(line);
    else if (options.verbose) std::fprintf(stderr, "choose_mixed_precision: %s\n", line.c_str());
  };

  amp_result r;
  r.candidates = candidates;
  r.baseline = baseline;
  r.groups = find_quantizer_groups(sim);
  QKIT_PRECONDITION(!r.groups.empty(), config_error, "choose_mixed_precision: the simulation has no enabled quantizer");
  const std::size_t G = r.groups.size();
  // Every integer quantizer of a group must be able to recompute its encodings.
  for (const auto& g : r.groups)
    for (const auto& a : g.activations)
      sim.with_quantizer(a, [&](const auto& q) {
        QKIT_PRECONDITION(q.settings().dtype != dtype::integer || q.has_statistics(), calibration_error,
                          "choose_mixed_precision: activation quantizer '", a,
                          "' has no calibration statistics (its encodings were set or loaded): calibrate the "
                          "simulation first, AMP recomputes encodings at other bitwidths from them");
      });
  const auto macs = layer_macs(sim, example_input);
  const auto original = sim.snapshot();

  // What each quantizer of a group had when the call began: at its own precision it keeps
  // those encodings (a range method's, AdaRound's frozen weights) instead of recomputing them.
  struct kept {
    dtype type;
    int bitwidth;
    std::vector<encoding> encodings;
    bool frozen;
  };
  std::map<std::string, kept> given;
  for (const auto& g : r.groups)
    for (const auto* names : {&g.activations, &g.params})
      for (const auto& n : *names)
        sim.with_quantizer(n, [&](const auto& q) {
          given[n] = {q.settings().dtype, q.bitwidth(), q.encodings(), q.frozen()};
        });
  // Sets one quantizer to precision p: the given encodings at the given precision, otherwise
  // recomputed at p (activations from their statistics, weights from the weights).
  auto set_quantizer = [&](const std::string& n, const amp_precision& p, bool param) {
    const kept& k = given.at(n);
    const bool as_given = k.type == p.type && k.bitwidth == p.bitwidth && !k.encodings.empty();
    sim.with_quantizer(n, [&](auto& q) {
      q.unfreeze();
      if (q.settings().dtype != p.type) {
        // A dtype change drops the statistics (the quantizer's layout changed); float16 needs
        // none and the integer grids they serve come back: keep them through it.
        auto statistics = q.statistics();
        q.set_dtype(p.type);
        q.restore_statistics(std::move(statistics));
      }
      if (q.bitwidth() != p.bitwidth) q.set_bitwidth(p.bitwidth);
      if (as_given) {
        q.set_encodings(k.encodings);
        if (k.frozen) q.freeze();
      } else if (!param) {
        q.compute_encodings();
      }
    });
    if (param && !as_given) sim.compute_param_encodings(n);
  };
  // Sets the group to candidate c (the quantizers' statistics stay).
  auto set_group = [&](const quantizer_group& g, const amp_candidate& c) {
    for (const auto& a : g.activations) set_quantizer(a, c.activation, false);
    for (const auto& p : g.params) set_quantizer(p, c.param, true);
  };
  // Bit-operations of a configuration (a candidate per group).
  std::map<std::string, std::size_t> layer_group;
  for (std::size_t i = 0; i < G; ++i)
    for (const auto& l : r.groups[i].layers) layer_group[l] = i;
  // A layer's activation width is its group's (the group of the tensor it reads); a layer
  // whose input nothing quantizes reads float32.
  auto bitops = [&](const std::vector<amp_candidate>& config) {
    double total = 0.0;
    for (const auto& [layer, m] : macs) {
      auto lg = layer_group.find(layer);
      if (lg == layer_group.end()) continue;  // weights not quantized: not counted
      const auto& c = config[lg->second];
      const double a = r.groups[lg->second].activations.empty() ? 32.0 : c.activation.cost_width();
      total += m * a * c.param.cost_width();
    }
    return total;
  };
  const std::vector<amp_candidate> base_config(G, baseline);
  const double base_bitops = bitops(base_config);
  QKIT_PRECONDITION(base_bitops > 0.0, config_error, "choose_mixed_precision: the simulation has no quantized conv or linear layer to count bit-operations of");

  std::string where;
  auto checked = [&](auto&& f) {
    double s = 0.0;
    try {
      s = f();
    } catch (const std::exception& e) {
      sim.restore(original);
      std::throw_with_nested(error("choose_mixed_precision: the evaluation callback threw for " + where + ": " + e.what()));
    }
    if (!std::isfinite(s)) {
      sim.restore(original);
      QKIT_THROW(error, "choose_mixed_precision: the evaluation returned ", s, " for ", where,
                 " (a score must be a finite number)");
    }
    return s;
  };

  // A configuration's state: every group at the baseline, then `config`.
  auto apply = [&](const std::vector<amp_candidate>& config) {
    sim.restore(original);
    for (std::size_t i = 0; i < G; ++i) set_group(r.groups[i], config[i]);
  };
  apply(base_config);
  const auto base_state = sim.snapshot();
  auto apply_from_base = [&](const std::vector<std::pair<std::size_t, amp_candidate>>& changes) {
    sim.restore(base_state);
    for (const auto& [g, c] : changes) set_group(r.groups[g], c);
  };
  const tensor sqnr_x = sqnr_data ? data::first(*sqnr_data, std::min(options.sqnr_samples, sqnr_data->size())).samples() : tensor();
  // Every quantizer off: the FP32 model, unless the caller gives it.
  auto all_off = [&] {
    sim.restore(original);
    sim.for_each_quantizer([](const std::string&, quantizer_kind, auto& q) { q.set_enabled(false); });
  };
  tensor sqnr_ref;
  if (sqnr_data) {
    if (options.fp32_forward) {
      sqnr_ref = options.fp32_forward(sqnr_x);
      const tensor y = sim.forward(sqnr_x);
      QKIT_PRECONDITION(sqnr_ref.shape() == y.shape(), shape_error,
                        "choose_mixed_precision: fp32_forward's output has another shape than the simulation's");
    } else {
      all_off();
      sqnr_ref = sim.forward(sqnr_x);
    }
    sim.restore(original);
  }

  // ---- the cache: a fingerprint of everything a score depends on but the callback ----
  io::result_cache cache;
  {
    io::fnv1a f;
    f.text("qkit choose_mixed_precision 1");
    for (const auto& c : candidates) f.text(c.label());
    for (const auto d : example_input.shape()) f.value(d);
    f.value(sqnr_data != nullptr);
    f.bytes(sqnr_x.data(), sqnr_x.size() * sizeof(float));
    f.bytes(sqnr_ref.data(), sqnr_ref.size() * sizeof(float));
    f.value(options.fp32_score.has_value());
    f.value(options.fp32_score.value_or(0.0));
    auto encodings = [&](const std::vector<encoding>& es) {
      f.value(es.size());
      for (const auto& e : es) f.value(e.bitwidth), f.value(e.scale), f.value(e.offset), f.value(e.symmetric), f.value(e.dtype);
    };
    // Every parameter (also unquantized ones: FP32 depends on them), the encodings each grouped
    // quantizer was given and has at the baseline (the latter from its statistics).
    sim.for_each_quantizer([&](const std::string& n, quantizer_kind k, const auto& q) {
      f.text(n);
      if (k == quantizer_kind::param) {
        const tensor& w = sim.parameter(n);
        f.bytes(w.data(), w.size() * sizeof(float));
      }
      f.value(q.enabled());
      encodings(q.encodings());
      if (auto it = given.find(n); it != given.end()) {
        f.value(it->second.type), f.value(it->second.bitwidth), f.value(it->second.frozen);
        encodings(it->second.encodings);
      }
    });
    for (const auto& g : r.groups) f.text(g.name());
    if (options.use_cache) {
      r.cache_dir = options.results_dir / ".amp_cache" / (options.cache_id.empty() ? f.hex() : options.cache_id);
      cache = io::result_cache(r.cache_dir / "scores.json", f.hex(), "weights, encodings, candidates or SQNR data", say);
    }
  }
  // The score under `key`: from the cache, else f() (checked, then cached), counted into `n`.
  auto score = [&](const std::string& key, std::size_t* n, auto&& f) {
    if (const nlohmann::json* e = cache.find(key); e && e->contains("score")) {
      ++r.cached_scores;
      return e->at("score").template get<double>();
    }
    const double s = checked(f);
    if (n) ++*n;
    cache.put(key, {{"score", s}});
    return s;
  };
  auto config_key = [&](const std::vector<amp_candidate>& config) {
    std::string k = "config/";
    for (std::size_t i = 0; i < G; ++i) k += (i ? "," : "") + config[i].label();
    return k;
  };

  if (options.fp32_score) {
    r.fp32 = *options.fp32_score;
  } else {
    all_off();
    where = "FP32 (every quantizer off)";
    r.fp32 = score("fp32", &r.evaluations, [&] { return double(evaluate(sim)); });
    sim.restore(original);
  }
  r.target = r.fp32 - options.allowed_drop;
  sim.restore(base_state);
  where = "the baseline " + baseline.label();
  r.baseline_score = score(config_key(base_config), &r.evaluations, [&] { return double(evaluate(sim)); });
  say("FP32 " + detail::amp_number(r.fp32) + ", target " + detail::amp_number(r.target) + ", baseline " +
      baseline.label() + " " + detail::amp_number(r.baseline_score) + "; " + std::to_string(G) + " groups");

  // ---- phase 1 ----
  for (std::size_t g = 0; g < G; ++g)
    for (const auto& c : candidates) {
      if (c == baseline) continue;
      apply_from_base({{g, c}});
      where = "phase 1, group " + r.groups[g].name() + " at " + c.label();
      std::vector<amp_candidate> cfg = base_config;
      cfg[g] = c;
      const std::string key = sqnr_data ? "sqnr/" + config_key(cfg).substr(7) : config_key(cfg);
      const double s = score(key, &r.phase1_evaluations, [&] {
        if (sqnr_data) return detail::sqnr_db(sqnr_ref, sim.forward(sqnr_x));
        return double(evaluate(sim));
      });
      r.sensitivity.push_back({g, c, s, (base_bitops - bitops(cfg)) / base_bitops});
    }
  std::stable_sort(r.sensitivity.begin(), r.sensitivity.end(), [](const amp_sensitivity& a, const amp_sensitivity& b) {
    if (a.score != b.score) return a.score > b.score;
    const int wa = a.candidate.activation.bitwidth + a.candidate.param.bitwidth;
    const int wb = b.candidate.activation.bitwidth + b.candidate.param.bitwidth;
    if (wa != wb) return wa > wb;
    if (a.bitops_reduction != b.bitops_reduction) return a.bitops_reduction > b.bitops_reduction;
    return a.group < b.group;
  });
  say("phase 1: " + std::to_string(r.sensitivity.size()) + " scores, " + std::to_string(r.phase1_evaluations) +
      " of them measured (" + (sqnr_data ? "SQNR" : "the evaluation") + "), the rest from the cache");

  // ---- phase 2: the cumulative steps ----
  std::vector<std::pair<std::size_t, amp_candidate>> steps;
  {
    std::vector<amp_candidate> cfg = base_config;
    double cost = base_bitops;
    // Narrower on every side the group uses, strictly on one: an activation-only group (an
    // Add's or the model's output) lowered from 16 to 8 bits saves no bit-operation but memory
    // traffic, and gets a step (of the same cost) rather than staying at the baseline.
    auto narrower = [&](const quantizer_group& g, const amp_candidate& from, const amp_candidate& to) {
      bool lower = false, wider = false;
      auto side = [&](bool used, const amp_precision& a, const amp_precision& b) {
        if (!used) return;
        wider = wider || b.cost_width() > a.cost_width();
        lower = lower || b.cost_width() < a.cost_width();
      };
      side(!g.activations.empty(), from.activation, to.activation);
      side(!g.params.empty(), from.param, to.param);
      return lower && !wider;
    };
    for (const auto& e : r.sensitivity) {
      std::vector<amp_candidate> next = cfg;
      next[e.group] = e.candidate;
      const double c = bitops(next);
      // Neither cheaper nor narrower at the same cost: passed over.
      if (!(c < cost) && !(c == cost && narrower(r.groups[e.group], cfg[e.group], e.candidate))) continue;
      cfg = std::move(next);
      cost = c;
      steps.emplace_back(e.group, e.candidate);
    }
  }
  r.curve.assign(steps.size() + 1, {});
  std::vector<bool> evaluated(steps.size() + 1, false);
  {
    std::vector<amp_candidate> cfg = base_config;
    r.curve[0] = {0, 1.0, r.baseline_score, 0, baseline, false};
    evaluated[0] = true;
    for (std::size_t i = 0; i < steps.size(); ++i) {
      cfg[steps[i].first] = steps[i].second;
      r.curve[i + 1] = {i + 1, bitops(cfg) / base_bitops, 0.0, steps[i].first, steps[i].second, false};
    }
  }
  std::size_t points_scored = 0;
  auto point = [&](std::size_t i) {
    if (!evaluated[i]) {
      std::vector<amp_candidate> cfg = base_config;
      for (std::size_t k = 0; k < i; ++k) cfg[steps[k].first] = steps[k].second;
      apply_from_base({steps.begin(), steps.begin() + std::ptrdiff_t(i)});
      where = "phase 2, step " + std::to_string(i) + " (" + detail::amp_number(r.curve[i].relative_bitops) + " of the baseline's bit-operations)";
      r.curve[i].score = score(config_key(cfg), &r.phase2_evaluations, [&] { return double(evaluate(sim)); });
      evaluated[i] = true;
      ++points_scored;
    }
    return r.curve[i].score;
  };
  // The largest step (cheapest configuration) whose score meets the target.
  const std::size_t last = steps.size();
  std::size_t chosen = 0;
  if (options.search == amp_search::brute_force) {
    for (std::size_t i = 0; i <= last; ++i)
      if (point(i) >= r.target) chosen = i;
  } else if (point(last) >= r.target) {
    chosen = last;
  } else if (point(0) >= r.target) {
    // Scores fall as steps accumulate (the list is least-sensitive first): bisect.
    std::size_t lo = 0, hi = last;  // point(lo) meets, point(hi) does not
    while (hi - lo > 1) {
      const std::size_t mid = lo + (hi - lo) / 2;
      (point(mid) >= r.target ? lo : hi) = mid;
    }
    chosen = lo;
  }
  r.search_evaluations = points_scored;
  for (std::size_t i = 0; i <= last; ++i) (void)point(i);  // the whole curve, always
  for (auto& p : r.curve) {
    p.pareto = true;
    for (const auto& q : r.curve)
      if ((q.relative_bitops < p.relative_bitops && q.score >= p.score) ||
          (q.relative_bitops <= p.relative_bitops && q.score > p.score))
        p.pareto = false;
  }
  r.chosen_step = chosen;
  r.target_met = r.curve[chosen].score >= r.target;
  r.chosen = base_config;
  for (std::size_t i = 0; i < chosen; ++i) r.chosen[steps[i].first] = steps[i].second;
  apply_from_base({steps.begin(), steps.begin() + std::ptrdiff_t(chosen)});
  r.evaluations += r.phase1_evaluations + r.phase2_evaluations;
  r.score = r.curve[chosen].score;
  r.relative_bitops = r.curve[chosen].relative_bitops;
  r.seconds = std::chrono::duration<double>(clock::now() - t_start).count();
  say("phase 2: step " + std::to_string(chosen) + " of " + std::to_string(last) + ", " +
      detail::amp_number(r.relative_bitops) + " of the baseline's bit-operations, score " + detail::amp_number(r.score) +
      (r.target_met ? " (meets the target)" : " (the target is not met even at the baseline)") + "; " +
      std::to_string(r.search_evaluations) + " points to choose, " + std::to_string(last + 1) +
      " on the whole curve; " + std::to_string(r.evaluations) + " evaluations in all, " + std::to_string(r.cached_scores) +
      " scores from the cache");

  // ---- files ----
  nlohmann::ordered_json pj = nlohmann::ordered_json::array();
  for (const auto& p : r.curve)
    pj.push_back({{"step", p.step},
                  {"relative_bitops", p.relative_bitops},
                  {"score", p.score},
                  {"group", p.step ? nlohmann::ordered_json(r.groups[p.group].name()) : nlohmann::ordered_json(nullptr)},
                  {"candidate", p.candidate.label()},
                  {"pareto", p.pareto},
                  {"chosen", p.step == chosen}});
  nlohmann::ordered_json info;
  info["fp32"] = r.fp32;
  info["target"] = r.target;
  info["allowed_drop"] = options.allowed_drop;
  info["baseline"] = baseline.label();
  info["baseline_score"] = r.baseline_score;
  info["chosen_step"] = chosen;
  info["score"] = r.score;
  info["relative_bitops"] = r.relative_bitops;
  info["target_met"] = r.target_met;
  info["phase1_evaluations"] = r.phase1_evaluations;
  info["phase2_evaluations"] = r.phase2_evaluations;
  info["search_evaluations"] = r.search_evaluations;
  info["evaluations"] = r.evaluations;
  info["cached_scores"] = r.cached_scores;
  info["seconds"] = r.seconds;
  info["groups"] = nlohmann::ordered_json::array();
  for (std::size_t g = 0; g < G; ++g)
    info["groups"].push_back({{"name", r.groups[g].name()},
                              {"activations", r.groups[g].activations},
                              {"params", r.groups[g].params},
                              {"chosen", r.chosen[g].label()}});
  info["sensitivity"] = nlohmann::ordered_json::array();
  for (const auto& e : r.sensitivity)
    info["sensitivity"].push_back({{"group", r.groups[e.group].name()},
                                   {"candidate", e.candidate.label()},
                                   {"score", e.score},
                                   {"bitops_reduction", e.bitops_reduction}});
  r.pareto_json = options.results_dir / "pareto_list.json";
  io::write_file_atomically(r.pareto_json, pj.dump(2) + "\n");
  io::write_file_atomically(options.results_dir / "amp_info_list.json", info.dump(2) + "\n");

  io::report::page curve_page{"Mixed precision: score against bit-operations", {}, {}, {}};
  curve_page.paragraphs.push_back(
      "Baseline " + baseline.label() + " (" + detail::amp_number(r.baseline_score) + "), FP32 " +
      detail::amp_number(r.fp32) + ", target " + detail::amp_number(r.target) + ". Chosen: step " +
      std::to_string(chosen) + " of " + std::to_string(last) + ", " + detail::amp_number(r.relative_bitops) +
      " of the baseline's bit-operations, score " + detail::amp_number(r.score) + ".");
  io::report::chart cc{"Pareto curve", "relative bit-operations", "score", {}, {}};
  cc.y_from_zero = false;
  io::report::series all{"every step", {}, {}, "line", {}}, front{"Pareto front", {}, {}, "line", {}},
      tgt{"target", {}, {}, "line", {}}, pick{"chosen", {}, {}, "line", {}};
  for (const auto& p : r.curve) {
    all.points.emplace_back(p.relative_bitops, p.score);
    if (p.pareto) front.points.emplace_back(p.relative_bitops, p.score);
  }
  tgt.points = {{r.curve.back().relative_bitops, r.target}, {1.0, r.target}};
  pick.points = {{r.relative_bitops, r.score}};
  cc.data = {all, front, tgt, pick};
  curve_page.charts.push_back(std::move(cc));
  r.pareto_html = options.results_dir / "pareto_curve.html";
  io::report::write(r.pareto_html, curve_page);

  io::report::page sens_page{"Mixed precision: quantizer group sensitivity (phase 1)", {}, {}, {}};
  sens_page.paragraphs.push_back(std::string("Each group alone lowered to each candidate, the others at ") +
                                 baseline.label() + "; score: " +
                                 (sqnr_data ? "SQNR of the output (dB) on " + std::to_string(sqnr_x.shape(0)) + " samples"
                                            : std::string("the evaluation")) + ".");
  io::report::chart sc{"Sensitivity", "quantizer group", sqnr_data ? "SQNR (dB)" : "score", {}, {}};
  for (std::size_t g = 0; g < G; ++g) sc.categories.push_back(r.groups[g].name());
  for (const auto& c : candidates) {
    if (c == baseline) continue;
    io::report::series s{c.label(), std::vector<double>(G, 0.0), {}, "bar", {}};
    for (const auto& e : r.sensitivity)
      if (e.candidate == c) s.values[e.group] = std::isfinite(e.score) ? e.score : 0.0;
    sc.data.push_back(std::move(s));
  }
  sens_page.charts.push_back(std::move(sc));
  r.sensitivity_html = options.results_dir / "quantizer_group_sensitivity.html";
  io::report::write(r.sensitivity_html, sens_page);
  return r;
}

}  // namespace qkit::analysis
