// qkit/analysis/quant_analyzer.hpp — AIMET's QuantAnalyzer over a calibrated QuantSim: how
// much of the accuracy loss comes from the weights and how much from the activations, which
// layer's quantizers hurt alone (only that layer quantized) and in company (all quantized but
// that layer), each layer's encoding ranges, and each layer's output error (MSE against the
// FP32 model). Each analysis writes `<name>.json` into the results folder in AIMET's layout
// (docs/analysis.md), so scripts written for AIMET's results read qkit's, and `<name>.html`
// beside it (report/html.hpp: a self-contained chart of the same data); `index.html` links
// every page written so far and says what each found.
//
// The sim's quantizer state is the analyzer's reference: a quantizer counts as "on" when it is
// enabled when the analysis starts, and every analysis gives the sim back with exactly that
// state, also when the evaluation throws part way. The evaluation is the user's callback (a
// score, higher is better), as in AIMET; the analyzer counts the calls and reports each
// analysis's cost in evaluations. Per-layer MSE does not evaluate: it runs the unlabeled
// samples twice (FP32, quantized) and reads every layer's output from the same two passes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <exception>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../data/batch.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../calib/histogram.hpp"
#include "../io/atomic_file.hpp"
#include "../quant/qdq.hpp"
#include "../nn/dataflow.hpp"
#include "../nn/evaluate.hpp"
#include "../sim/quantsim.hpp"
#include "../tensor/tensor.hpp"
#include "../io/report/html.hpp"

namespace qkit::analysis {

/// One layer's quantizers as QuantAnalyzer toggles them (AIMET toggles a layer's wrapper):
/// its parameter quantizers, its output quantizer, and the model input's quantizer for a layer
/// that reads the model input. Only quantizers enabled at the time count.
struct layer_quantizers {
  std::string layer;
  std::vector<std::string> quantizers;
};

/// Names of the quantizers of `sim` that are enabled now.
template <class Sim>
std::set<std::string> enabled_quantizers(const Sim& sim) {
  std::set<std::string> on;
  sim.for_each_quantizer([&](const std::string& name, quantizer_kind, const auto& q) {
    if (q.enabled()) on.insert(name);
  });
  return on;
}

/// The layers of `sim` that have at least one enabled quantizer, in dataflow order.
template <class Sim>
std::vector<layer_quantizers> quantized_layers(const Sim& sim) {
  std::vector<layer_quantizers> out;
  const nn::dataflow& flow = sim.dataflow();
  const std::set<std::string> on = enabled_quantizers(sim);
  auto enabled = [&](const std::string& name) { return on.count(name) > 0; };
  for (const auto& n : flow.nodes) {
    layer_quantizers g{n.name, {}};
    for (const auto& in : n.inputs)
      if (in == flow.input && enabled(in)) g.quantizers.push_back(in);
    for (const char* p : {".weight", ".bias"})
      if (enabled(n.name + p)) g.quantizers.push_back(n.name + p);
    if (enabled(n.output)) g.quantizers.push_back(n.output);
    if (!g.quantizers.empty()) out.push_back(std::move(g));
  }
  return out;
}

/// Scores of the whole model: FP32 (every quantizer off), weights only, activations only,
/// and everything quantized (the sim as given).
struct sensitivity {
  double fp32 = 0.0, weights_quantized = 0.0, activations_quantized = 0.0, quantized = 0.0;
};

/// {layer, value} in dataflow order.
using per_layer_values = std::vector<std::pair<std::string, double>>;

/// Progress of an analysis, reported before each evaluation (or batch, for per-layer MSE).
struct analysis_progress {
  std::string analysis;
  std::string layer;  ///< empty for whole-model steps
  std::size_t index = 0, total = 0;
};

struct quant_analyzer_options {
  /// Where the JSON files go (created when missing).
  std::filesystem::path results_dir = "quant_analyzer_results";
  /// Per-layer MSE: samples of the unlabeled data used (AIMET's example: 256) and their batch.
  std::size_t mse_samples = 256;
  std::size_t mse_batch_size = 32;
  /// Statistics histograms: at most this many bins per histogram (power-of-two aligned bins,
  /// calib/histogram.hpp, so between half and all of it are used).
  std::size_t histogram_bins = 128;
  std::function<void(const analysis_progress&)> progress;
};

/// One histogram of export_per_layer_stats_histogram: a quantizer's input values (one channel
/// of a per-channel parameter) and the encoding that quantizes them.
struct quantizer_histogram {
  std::string channel;  ///< empty for a per-tensor quantizer
  exact_histogram h;
  encoding e;
};

/// {quantizer: its histograms (one, or one per channel)}.
using quantizer_histograms = std::map<std::string, std::vector<quantizer_histogram>>;

/// What one analysis cost: evaluation callbacks, or for per-layer MSE forward passes over its
/// samples (two: FP32 and quantized).
struct analysis_cost {
  std::string analysis;
  std::size_t evaluations = 0;
  std::size_t forward_passes = 0;
  std::size_t layers = 0;
  /// The work done, in full evaluations of the data (one per evaluation callback; for the
  /// data-set mode of the per-layer analyses the nodes actually run, weighted by their
  /// multiply-accumulates, over those of a whole pass).
  double evaluation_equivalents = 0.0;
};

template <class Sim>
class quant_analyzer {
 public:
  using eval_callback = std::function<double(Sim&)>;

  /// `sim` must be calibrated (every enabled integer quantizer with encodings): the analyses
  /// compare it with itself under other enablements, they do not calibrate.
  quant_analyzer(Sim& sim, eval_callback evaluate, quant_analyzer_options options = {})
      : sim_(sim), evaluate_(std::move(evaluate)), options_(std::move(options)) {
    QKIT_PRECONDITION(static_cast<bool>(evaluate_), config_error,
                      "quant_analyzer: no evaluation callback");
    QKIT_PRECONDITION(!options_.results_dir.empty(), config_error,
                      "quant_analyzer: results_dir is empty");
    // A folder that cannot be made is found now, not after an hour of evaluations.
    std::error_code ec;
    std::filesystem::create_directories(options_.results_dir, ec);
    QKIT_PRECONDITION(!ec && std::filesystem::is_directory(options_.results_dir), error,
                      "quant_analyzer: cannot create the results folder '",
                      options_.results_dir.string(), "'", ec ? ": " + ec.message() : std::string());
    sim_.for_each_quantizer([&](const std::string& name, quantizer_kind, const auto& q) {
      QKIT_PRECONDITION(!q.enabled() || q.settings().dtype != dtype::integer || q.bitwidth() >= 32 ||
                            q.has_encodings(),
                        calibration_error, "quant_analyzer: quantizer '", name,
                        "' is enabled but has no encodings (compute_encodings first)");
    });
  }

  const quant_analyzer_options& options() const { return options_; }
  /// The cost of each analysis run so far, in the order they ran.
  const std::vector<analysis_cost>& costs() const { return costs_; }

  /// FP32, weight-only, activation-only and fully quantized scores; writes
  /// `model_sensitivity.json` (AIMET only logs these). Four evaluations.
  sensitivity check_model_sensitivity_to_quantization() {
    const std::string name = "model_sensitivity";
    sensitivity s;
    with_state_restored([&](const std::set<std::string>& on) {
      begin(name, 0);
      const auto is_param = params();
      s.fp32 = score(name, "", 0, 4, [&](const std::string&) { return false; });
      s.weights_quantized = score(name, "", 1, 4, [&](const std::string& q) {
        return on.count(q) && is_param.count(q);
      });
      s.activations_quantized = score(name, "", 2, 4, [&](const std::string& q) {
        return on.count(q) && !is_param.count(q);
      });
      s.quantized = score(name, "", 3, 4, [&](const std::string& q) { return on.count(q) > 0; });
    });
    costs_.back().evaluation_equivalents = 4.0;
    nlohmann::ordered_json j;
    j["fp32"] = s.fp32;
    j["weights_quantized"] = s.weights_quantized;
    j["activations_quantized"] = s.activations_quantized;
    j["quantized"] = s.quantized;
    write_json(name + ".json", j);
    std::ostringstream f;
    f << "FP32 " << s.fp32 << ", weights only " << s.weights_quantized << ", activations only "
      << s.activations_quantized << ", all quantized " << s.quantized << ": "
      << (s.fp32 - s.weights_quantized >= s.fp32 - s.activations_quantized
              ? "the weights cost more than the activations"
              : "the activations cost more than the weights")
      << ".";
    io::report::chart c{"Score by what is quantized", "quantized", "score",
                    {"FP32", "weights only", "activations only", "all"},
                    {{"score", {s.fp32, s.weights_quantized, s.activations_quantized, s.quantized}, {}, "bar"}}};
    write_page(name + ".html", "Model sensitivity to quantization", f.str(), {c});
    return s;
  }

  /// One layer's quantizers on at a time, every other quantizer off: {layer: score};
  /// writes `per_layer_quant_enabled.json`. One evaluation per quantized layer.
  per_layer_values per_layer_quant_enabled() {
    return per_layer("per_layer_quant_enabled", true);
  }
  /// Every quantizer on but one layer's: {layer: score}; writes `per_layer_quant_disabled.json`.
  /// One evaluation per quantized layer.
  per_layer_values per_layer_quant_disabled() {
    return per_layer("per_layer_quant_disabled", false);
  }

  /// per_layer_quant_enabled on a data set scored by `metric` (nn::metric: top-1 accuracy by
  /// default, as nn::evaluate), giving the scores the callback would give for that metric,
  /// without a full evaluation per layer: each batch runs once in FP32 with every layer's output
  /// kept, and each layer's run recomputes only that layer and the nodes downstream of it (the
  /// part before it is the FP32 pass's). Cost in costs(): evaluations-equivalent.
  template <nn::metric M = nn::top1_accuracy>
  per_layer_values per_layer_quant_enabled(const data::dataset& eval, M metric = {},
                                           std::size_t batch_size = nn::default_eval_batch_size) {
    return per_layer_on_data("per_layer_quant_enabled", true, eval, std::move(metric), batch_size);
  }
  /// per_layer_quant_disabled on a data set, the same way: the shared pass is the fully
  /// quantized one, and leaving a layer in float changes only that layer and what follows it.
  template <nn::metric M = nn::top1_accuracy>
  per_layer_values per_layer_quant_disabled(const data::dataset& eval, M metric = {},
                                            std::size_t batch_size = nn::default_eval_batch_size) {
    return per_layer_on_data("per_layer_quant_disabled", false, eval, std::move(metric), batch_size);
  }

  /// The encodings' [min, max] of every enabled quantizer, by layer as AIMET names them
  /// (`<layer>_input_0`, `<layer>_output_0` for activations, `<layer>_<param>` for parameters;
  /// a per-channel quantizer gives {"<channel>": [min, max]}); writes
  /// `min_max_ranges/weights.json` and `min_max_ranges/activations.json`. No evaluation.
  void export_per_layer_encoding_min_max_range() {
    begin("min_max_ranges", 0);
    nlohmann::ordered_json weights = nlohmann::ordered_json::object();
    nlohmann::ordered_json activations = nlohmann::ordered_json::object();
    for (const auto& g : quantized_layers(sim_)) {
      for (const auto& q : g.quantizers) {
        sim_.with_quantizer(q, [&](const auto& quant) {
          // A float16 quantizer has no range to show.
          if (quant.settings().dtype == dtype::floating || !quant.has_encodings()) return;
          const bool param = q.size() > g.layer.size() && q.compare(0, g.layer.size() + 1, g.layer + ".") == 0;
          const auto& encs = quant.encodings();
          nlohmann::ordered_json v;
          if (quant.per_channel()) {
            v = nlohmann::ordered_json::object();
            for (std::size_t c = 0; c < encs.size(); ++c)
              v[std::to_string(c)] = {encs[c].min, encs[c].max};
          } else {
            v = {encs[0].min, encs[0].max};
          }
          if (param)
            weights[g.layer + "_" + q.substr(g.layer.size() + 1)] = v;
          else
            activations[g.layer + (q == sim_.dataflow().input ? "_input_0" : "_output_0")] = v;
        });
      }
    }
    write_json("min_max_ranges/weights.json", weights);
    write_json("min_max_ranges/activations.json", activations);
    for (const auto& [file, j, what] : {std::tuple{"weights", &weights, "Weight"},
                                        std::tuple{"activations", &activations, "Activation"}}) {
      io::report::chart c{std::string(what) + " encodings: [min, max]", "quantizer (channel)", "value", {}, {}};
      io::report::series r{"[min, max]", {}, {}, "bar"};
      for (const auto& [key, v] : j->items()) {
        if (v.is_object()) {
          for (const auto& [ch, mm] : v.items()) {
            c.categories.push_back(key + "[" + ch + "]");
            r.ranges.emplace_back(mm[0].template get<double>(), mm[1].template get<double>());
          }
        } else {
          c.categories.push_back(key);
          r.ranges.emplace_back(v[0].template get<double>(), v[1].template get<double>());
        }
      }
      c.data.push_back(std::move(r));
      write_page(std::string("min_max_ranges/") + file + ".html",
                 std::string(what) + " encoding ranges",
                 std::to_string(c.categories.size()) + " ranges (per channel where per-channel).", {c});
    }
  }

  /// Histograms of what each enabled integer quantizer quantizes, with its encoding's min and
  /// max marked (AIMET's export_per_layer_stats_histogram): activations as calibration sees
  /// them — the FP32 pass over the first `mse_samples` of `unlabeled`, every quantizer off —
  /// and parameters from the simulated model's weights, one histogram per channel where the
  /// quantizer is per-channel. Writes `activations_pdf/<layer>_input_q0` and
  /// `<layer>_output_q0`, and `weights_pdf/<layer>/<layer>_<param>` (.json and .html; a
  /// per-channel parameter's page lets the reader choose the channel, where AIMET writes a page
  /// per channel: 1,000 pages of 215 KB on a small MobileNet). Returns the histograms. No
  /// evaluation; one forward pass.
  quantizer_histograms export_per_layer_stats_histogram(const data::dataset& unlabeled) {
    const std::string name = "stats_histogram";
    check_unlabeled(name, unlabeled);
    const auto layers = quantized_layers(sim_);
    const std::string& input = sim_.dataflow().input;
    // Which activation quantizers get a histogram, and the page each goes to.
    std::map<std::string, std::string> act_page;
    std::vector<std::pair<std::string, std::string>> params;  // {quantizer, page}
    for (const auto& g : layers)
      for (const auto& q : g.quantizers) {
        if (!integer_grid(q)) continue;
        if (q == input) {
          if (!act_page.count(q)) act_page[q] = "activations_pdf/" + g.layer + "_input_q0";
        } else if (is_param_of(g.layer, q)) {
          params.emplace_back(q, "weights_pdf/" + g.layer + "/" + g.layer + "_" + q.substr(g.layer.size() + 1));
        } else {
          act_page[q] = "activations_pdf/" + g.layer + "_output_q0";
        }
      }
    begin(name, layers.size());
    std::map<std::string, exact_histogram> hist;
    for (const auto& [q, page] : act_page) hist.emplace(q, exact_histogram(options_.histogram_bins));
    const auto range = data::batches(unlabeled, options_.mse_batch_size, options_.mse_samples);
    std::size_t b_index = 0;
    with_state_restored([&](const std::set<std::string>&) {
      set_enabled([](const std::string&) { return false; });
      for (const data::batch& b : range) {
        if (options_.progress) options_.progress({name, "", b_index++, range.size()});
        observe_inputs obs{&hist, &input};
        (void)sim_.forward(b.samples, obs);
      }
    });
    costs_.back().forward_passes = 1;
    quantizer_histograms out;

    // Activations: one histogram each, per tensor (the quantizers' granularity).
    for (const auto& [q, page] : act_page) {
      const auto& h = hist.at(q);
      QKIT_PRECONDITION(!h.empty(), error, "quant_analyzer: ", name, ": quantizer '", q,
                        "' saw no data in the forward pass");
      const encoding e = sim_.with_quantizer(q, [](const auto& z) { return z.encodings()[0]; });
      out[q] = {{"", h, e}};
      write_histogram(page, q, out[q], "Activation");
    }
    // Parameters: per channel where per-channel.
    // (Not a structured binding: clang before 16 cannot capture one in the lambda below.)
    for (const auto& param_page : params) {
      const std::string& q = param_page.first;
      const auto& page = param_page.second;
      const tensor& w = sim_.parameter(q);
      std::vector<quantizer_histogram> channels;
      sim_.with_quantizer(q, [&](const auto& z) {
        const auto& encs = z.encodings();
        const std::span<const std::size_t> shape(w.shape().data(), w.shape().size());
        channel_layout l;
        if (z.per_channel()) l = channel_layout_of(shape, *z.settings().channel_axis, encs.size());
        else l.inner = w.size();
        std::vector<float> values(l.outer * l.inner);
        for (std::size_t c = 0; c < l.channels; ++c) {
          for (std::size_t o = 0; o < l.outer; ++o)
            std::copy_n(w.data() + (o * l.channels + c) * l.inner, l.inner, values.data() + o * l.inner);
          exact_histogram h(options_.histogram_bins);
          h.observe(values.data(), values.size(), q.c_str());
          channels.push_back({z.per_channel() ? std::to_string(c) : std::string(), std::move(h),
                              encs[z.per_channel() ? c : 0]});
        }
      });
      write_histogram(page, q, channels, "Weight");
      out[q] = std::move(channels);
    }
    write_index();
    return out;
  }

  /// Mean squared error between each layer's output in the FP32 model (every quantizer off)
  /// and in the quantized sim (its output after its output quantizer, errors of the layers
  /// before it included), over the first `mse_samples` of `unlabeled`: {layer: mse}, every
  /// layer of the dataflow; writes `per_layer_mse_loss.json`. Two forward passes over the
  /// samples for all layers together, not two per layer.
  per_layer_values per_layer_mse_loss(const data::dataset& unlabeled) {
    const std::string name = "per_layer_mse_loss";
    check_unlabeled(name, unlabeled);
    const nn::dataflow& flow = sim_.dataflow();
    std::map<std::string, std::size_t> index;
    for (std::size_t i = 0; i < flow.nodes.size(); ++i) index[flow.nodes[i].name] = i;
    std::vector<double> sum(flow.nodes.size(), 0.0);
    std::vector<std::size_t> count(flow.nodes.size(), 0);
    std::vector<tensor> fp32(flow.nodes.size());
    begin(name, 0);
    costs_.back().layers = flow.nodes.size();
    const auto range = data::batches(unlabeled, options_.mse_batch_size, options_.mse_samples);
    const std::size_t total = range.size();
    std::size_t b_index = 0;
    with_state_restored([&](const std::set<std::string>& on) {
      for (const data::batch& b : range) {
        if (options_.progress) options_.progress({name, "", b_index, total});
        ++b_index;
        set_enabled([](const std::string&) { return false; });
        capture_outputs fp{&index, &fp32, nullptr, nullptr, nullptr};
        (void)sim_.forward(b.samples, fp);
        set_enabled([&](const std::string& q) { return on.count(q) > 0; });
        capture_outputs qz{&index, nullptr, &fp32, &sum, &count};
        (void)sim_.forward(b.samples, qz);
      }
    });
    costs_.back().forward_passes = 2;
    per_layer_values out;
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    for (std::size_t i = 0; i < flow.nodes.size(); ++i) {
      const double mse = count[i] ? sum[i] / double(count[i]) : 0.0;
      out.emplace_back(flow.nodes[i].name, mse);
      j[flow.nodes[i].name] = mse;
    }
    write_json(name + ".json", j);
    if (!out.empty()) {
      const auto worst = std::max_element(out.begin(), out.end(),
                                          [](auto& a, auto& b) { return a.second < b.second; });
      std::ostringstream f;
      f << "Largest output MSE against FP32: " << worst->first << " (" << worst->second
        << "), over " << range.samples() << " samples. The error of every layer before a layer "
        << "is included, so it tends to grow with depth.";
      write_page(name + ".html", "Per-layer output MSE against FP32", f.str(),
                 {bar_chart(out, "layer", "mean squared error", "MSE")});
    }
    return out;
  }

 private:
  // Sees every layer's output: the FP32 pass stores them, the quantized pass adds the squared
  // difference to the stored ones.
  struct capture_outputs {
    const std::map<std::string, std::size_t>* index;
    std::vector<tensor>* store;
    const std::vector<tensor>* reference;
    std::vector<double>* sum;
    std::vector<std::size_t>* count;
    template <class L>
    void layer_output(const nn::dataflow_node& n, const L&, const tensor&, const tensor& after) {
      const std::size_t i = index->at(n.name);
      if (store) {
        (*store)[i] = after;
        return;
      }
      const tensor& r = (*reference)[i];
      QKIT_PRECONDITION(r.shape() == after.shape(), shape_error, "quant_analyzer: layer '", n.name,
                        "' gave outputs of shape ", shape_string(after.shape()), " and ",
                        shape_string(r.shape()), " on the same batch");
      double s = 0.0;
      const float* a = after.data();
      const float* f = r.data();
      for (std::size_t k = 0; k < after.size(); ++k) {
        const double d = double(a[k]) - double(f[k]);
        s += d * d;
      }
      (*sum)[i] += s;
      (*count)[i] += after.size();
    }
  };

  // Histograms of every tracked activation quantizer's input in a pass.
  struct observe_inputs {
    std::map<std::string, exact_histogram>* hist;
    const std::string* input;
    void model_input(const tensor& x, const tensor&) {
      if (auto it = hist->find(*input); it != hist->end()) it->second.observe(x.data(), x.size(), input->c_str());
    }
    template <class L>
    void layer_output(const nn::dataflow_node& n, const L&, const tensor& before, const tensor&) {
      if (auto it = hist->find(n.output); it != hist->end())
        it->second.observe(before.data(), before.size(), n.output.c_str());
    }
  };

  // An enabled quantizer on an integer grid below 32 bits: one whose encoding has a range.
  bool integer_grid(const std::string& q) {
    return sim_.with_quantizer(q, [](const auto& z) {
      return z.enabled() && z.settings().dtype == dtype::integer && z.bitwidth() < 32 && z.has_encodings();
    });
  }

  static bool is_param_of(const std::string& layer, const std::string& q) {
    return q.size() > layer.size() && q.compare(0, layer.size() + 1, layer + ".") == 0;
  }

  // The unlabeled samples of per-layer MSE and histograms: some, and shaped as the model input.
  void check_unlabeled(const std::string& name, const data::dataset& unlabeled) const {
    QKIT_PRECONDITION(!unlabeled.empty(), data_error, "quant_analyzer: ", name,
                      ": the unlabeled data set is empty");
    QKIT_PRECONDITION(options_.mse_samples > 0 && options_.mse_batch_size > 0, config_error,
                      "quant_analyzer: ", name, ": mse_samples and mse_batch_size must be > 0");
    const auto& want = sim_.input_shape();
    const auto& got = unlabeled.samples().shape();
    const bool same = got.size() == want.size() && std::equal(got.begin() + 1, got.end(), want.begin() + 1);
    QKIT_PRECONDITION(same, shape_error, "quant_analyzer: ", name, ": the unlabeled samples have shape ",
                      shape_string(got), ", the model takes ", shape_string(want),
                      " (any batch size)");
  }

  // A histogram page and its JSON: bins as {x: bin centre, y: count}, the encoding's min and
  // max as vertical lines as high as the tallest bin.
  void write_histogram(const std::string& page, const std::string& q,
                       const std::vector<quantizer_histogram>& channels, const std::string& what) {
    nlohmann::ordered_json j;
    j["quantizer"] = q;
    j["channels"] = nlohmann::ordered_json::array();
    io::report::chart c{what + " histogram of " + q + " with its encoding's [min, max]", "value", "count", {}, {}};
    std::size_t outside = 0;
    for (const auto& ch : channels) {
      nlohmann::ordered_json e;
      if (!ch.channel.empty()) e["channel"] = std::stoi(ch.channel);
      e["encoding"] = {{"min", ch.e.min}, {"max", ch.e.max}, {"scale", ch.e.scale}, {"offset", ch.e.offset},
                       {"bitwidth", ch.e.bitwidth}};
      e["data_min"] = ch.h.min();
      e["data_max"] = ch.h.max();
      e["bin_width"] = ch.h.bin_width();
      e["bin_left"] = ch.h.bin_left(0);
      e["counts"] = ch.h.counts();
      j["channels"].push_back(std::move(e));
      io::report::series bins{"count", {}, {}, "bar", {}};
      double top = 0.0;
      for (std::size_t k = 0; k < ch.h.bins(); ++k) {
        const double y = double(ch.h.counts()[k]);
        bins.points.emplace_back(ch.h.bin_left(k) + 0.5 * ch.h.bin_width(), y);
        top = std::max(top, y);
      }
      io::report::series lo{"encoding min", {}, {}, "line", {{ch.e.min, 0.0}, {ch.e.min, top}}};
      io::report::series hi{"encoding max", {}, {}, "line", {{ch.e.max, 0.0}, {ch.e.max, top}}};
      // Beyond half a step: a weight stored on the grid's end in float may sit a float's
      // rounding past the double-precision bound and is not clipped.
      if (ch.h.min() < ch.e.min - 0.5 * ch.e.scale || ch.h.max() > ch.e.max + 0.5 * ch.e.scale) ++outside;
      c.variants.push_back({ch.channel.empty() ? q : "channel " + ch.channel, {bins, lo, hi}});
    }
    write_json(page + ".json", j);
    std::ostringstream f;
    if (channels.size() == 1) {
      const auto& ch = channels[0];
      f << q << ": data in [" << ch.h.min() << ", " << ch.h.max() << "], encoding [" << ch.e.min << ", "
        << ch.e.max << "], " << ch.h.total() << " values.";
    } else {
      f << q << ": " << channels.size() << " channels (choose one below); " << outside
        << " of them have values clipped by their encoding's range.";
    }
    write_page(page + ".html", what + " histogram: " + q, f.str(), {c}, /*update_index=*/false);
  }

  std::set<std::string> params() const {
    std::set<std::string> out;
    sim_.for_each_quantizer([&](const std::string& name, quantizer_kind k, const auto&) {
      if (k == quantizer_kind::param) out.insert(name);
    });
    return out;
  }

  template <class Pred>
  void set_enabled(Pred&& pred) {
    sim_.for_each_quantizer(
        [&](const std::string& name, quantizer_kind, auto& q) { q.set_enabled(pred(name)); });
  }

  // Runs f(the enabled set) and puts every quantizer's enabled flag back, also on an error.
  template <class F>
  void with_state_restored(F&& f) {
    const std::set<std::string> on = enabled_quantizers(sim_);
    struct restore {
      quant_analyzer* self;
      const std::set<std::string>* on;
      ~restore() {
        self->set_enabled([&](const std::string& q) { return on->count(q) > 0; });
      }
    } guard{this, &on};
    f(on);
  }

  void begin(const std::string& name, std::size_t layers) {
    costs_.push_back({name, 0, 0, layers});
  }

  // Sets the enablement, evaluates, checks the score.
  template <class Pred>
  double score(const std::string& analysis, const std::string& layer, std::size_t i,
               std::size_t total, Pred&& pred) {
    if (options_.progress) options_.progress({analysis, layer, i, total});
    set_enabled(pred);
    double s = 0.0;
    try {
      s = evaluate_(sim_);
    } catch (const std::exception& e) {
      // Which analysis and which layer: the caller's exception stays reachable as the nested one.
      std::throw_with_nested(error(std::string("quant_analyzer: ") + analysis +
                                   ": the evaluation callback threw" +
                                   (layer.empty() ? std::string() : " for layer '" + layer + "'") +
                                   ": " + e.what()));
    }
    ++costs_.back().evaluations;
    QKIT_PRECONDITION(std::isfinite(s), error, "quant_analyzer: ", analysis,
                      ": the evaluation callback returned ", s,
                      layer.empty() ? std::string() : " for layer '" + layer + "'",
                      " (a score must be a finite number)");
    return s;
  }

  per_layer_values per_layer(const std::string& name, bool only_this_layer) {
    const auto layers = quantized_layers(sim_);
    begin(name, layers.size());
    per_layer_values out;
    with_state_restored([&](const std::set<std::string>& on) {
      for (std::size_t i = 0; i < layers.size(); ++i) {
        const std::set<std::string> mine(layers[i].quantizers.begin(), layers[i].quantizers.end());
        out.emplace_back(layers[i].layer,
                         score(name, layers[i].layer, i, layers.size(), [&](const std::string& q) {
                           return only_this_layer ? mine.count(q) > 0
                                                  : on.count(q) > 0 && !mine.count(q);
                         }));
      }
    });
    costs_.back().evaluation_equivalents = double(costs_.back().evaluations);
    write_per_layer(name, only_this_layer, out);
    return out;
  }

  // The data-set mode of the per-layer analyses (see per_layer_quant_enabled(eval, metric)).
  template <class M>
  per_layer_values per_layer_on_data(const std::string& name, bool only_this_layer,
                                     const data::dataset& eval, M proto, std::size_t batch_size) {
    QKIT_PRECONDITION(!eval.empty(), data_error, "quant_analyzer: ", name, ": the evaluation data set is empty");
    QKIT_PRECONDITION(batch_size > 0, config_error, "quant_analyzer: ", name, ": batch_size is 0");
    const auto layers = quantized_layers(sim_);
    const nn::dataflow& flow = sim_.dataflow();
    std::map<std::string, std::size_t> node_index;
    for (std::size_t k = 0; k < flow.nodes.size(); ++k) node_index[flow.nodes[k].name] = k;
    std::vector<M> metrics(layers.size(), proto);
    begin(name, layers.size());
    const auto range = data::batches(eval, batch_size);
    double whole = 0.0, done = 0.0;  // multiply-accumulates of the shared passes, of the reruns
    with_state_restored([&](const std::set<std::string>& on) {
      std::size_t step = 0;
      for (const data::batch& b : range) {
        set_enabled([&](const std::string& q) { return !only_this_layer && on.count(q) > 0; });
        capture_tensors cap{&flow, &node_index, {}, std::vector<double>(flow.nodes.size(), 0.0)};
        (void)sim_.forward(b.samples, cap);
        ++costs_.back().forward_passes;
        for (const double w : cap.work) whole += w;
        for (std::size_t i = 0; i < layers.size(); ++i) {
          if (options_.progress) options_.progress({name, layers[i].layer, step++, layers.size() * range.size()});
          const std::set<std::string> mine(layers[i].quantizers.begin(), layers[i].quantizers.end());
          set_enabled([&](const std::string& q) {
            return only_this_layer ? mine.count(q) > 0 : on.count(q) > 0 && !mine.count(q);
          });
          std::map<std::string, tensor> changed;
          // The model input as this run consumes it (qdq is the identity when the input
          // quantizer is off).
          if (mine.count(flow.input))
            changed[flow.input] = sim_.activation_quantizer(flow.input).qdq(b.samples);
          const std::size_t start = node_index.at(layers[i].layer);
          for (std::size_t k = start; k < flow.nodes.size(); ++k) {
            const auto& n = flow.nodes[k];
            bool dirty = k == start;
            for (const auto& in : n.inputs) dirty = dirty || changed.count(in) > 0;
            if (!dirty) continue;  // upstream of nothing that changed: the shared pass's output
            std::vector<const tensor*> operands;
            for (const auto& in : n.inputs) {
              auto it = changed.find(in);
              operands.push_back(it != changed.end() ? &it->second : &cap.tensors.at(in));
            }
            tensor y = sim_.run_node(n, operands);
            changed[n.output] = std::move(y);
            done += cap.work[k];
          }
          auto it = changed.find(flow.output);
          metrics[i].update(it != changed.end() ? it->second : cap.tensors.at(flow.output), b);
        }
      }
    });
    per_layer_values out;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const double v = metrics[i].result();
      QKIT_PRECONDITION(std::isfinite(double(v)), error, "quant_analyzer: ", name, ": the metric gave ", v,
                        " for layer '", layers[i].layer, "' (a score must be a finite number)");
      out.emplace_back(layers[i].layer, double(v));
    }
    costs_.back().evaluation_equivalents = whole > 0.0 ? (whole + done) / whole : 0.0;
    write_per_layer(name, only_this_layer, out);
    return out;
  }

  // Keeps every tensor of a pass as the graph consumes it (after its quantizer), and each
  // node's work: multiply-accumulates for a conv/linear, one per output value otherwise.
  struct capture_tensors {
    const nn::dataflow* flow;
    const std::map<std::string, std::size_t>* node_index;
    std::map<std::string, tensor> tensors;
    std::vector<double> work;
    void model_input(const tensor&, const tensor& xq) { tensors[flow->input] = xq; }
    template <class L>
    void layer_output(const nn::dataflow_node& n, const L& layer, const tensor&, const tensor& after) {
      tensors[n.output] = after;
      double w = double(after.size());
      if constexpr (requires { layer.weight(); }) {
        const tensor& wt = layer.weight();
        if (wt.dimension() > 0 && wt.shape(0) > 0) w *= double(wt.size() / wt.shape(0));
      }
      work[node_index->at(n.name)] = w;
    }
  };

  void write_per_layer(const std::string& name, bool only_this_layer, const per_layer_values& out) {
    nlohmann::ordered_json j = nlohmann::ordered_json::object();
    for (const auto& [layer, s] : out) j[layer] = s;
    write_json(name + ".json", j);
    if (!out.empty()) {
      const auto pick = only_this_layer
          ? std::min_element(out.begin(), out.end(), [](auto& a, auto& b) { return a.second < b.second; })
          : std::max_element(out.begin(), out.end(), [](auto& a, auto& b) { return a.second < b.second; });
      std::ostringstream f;
      f << (only_this_layer ? "Lowest score with only one layer quantized: "
                            : "Highest score with one layer left in float: ")
        << pick->first << " (" << pick->second << ").";
      write_page(name + ".html",
                 only_this_layer ? "Per-layer quantization enabled (only that layer quantized)"
                                 : "Per-layer quantization disabled (all but that layer quantized)",
                 f.str(), {bar_chart(out, "layer", "score", "score")});
    }
  }

  static io::report::chart bar_chart(const per_layer_values& v, const std::string& x,
                                 const std::string& y, const std::string& label) {
    io::report::chart c{"", x, y, {}, {{label, {}, {}, "bar"}}};
    for (const auto& [layer, value] : v) {
      c.categories.push_back(layer);
      c.data[0].values.push_back(value);
    }
    return c;
  }

  // Writes one report page, records its finding, and (unless a batch of pages is being written)
  // rewrites index.html with every page so far.
  void write_page(const std::string& relative, const std::string& title, const std::string& finding,
                  std::vector<io::report::chart> charts, bool update_index = true) {
    if (charts.size() == 1 && charts[0].title.empty()) charts[0].title = title;
    const std::filesystem::path p = options_.results_dir / relative;
    io::report::write(p, {title, {finding}, std::move(charts), {}});
    auto it = std::find_if(pages_.begin(), pages_.end(), [&](auto& e) { return e.first.href == relative; });
    if (it == pages_.end()) pages_.push_back({{relative, title}, finding});
    else it->second = finding;
    if (update_index) write_index();
  }

  void write_index() {
    io::report::page index{"QuantAnalyzer results", {}, {}, {}};
    index.paragraphs.push_back("Results folder: " + options_.results_dir.string() +
                               ". Each page has a JSON file of the same name beside it.");
    for (const auto& [l, f] : pages_) index.links.push_back({l.href, l.text + " — " + f});
    io::report::write(options_.results_dir / "index.html", index);
  }

  void write_json(const std::string& relative, const nlohmann::ordered_json& j) {
    const std::filesystem::path p = options_.results_dir / relative;
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
    QKIT_PRECONDITION(!ec, error, "quant_analyzer: cannot create the results folder '",
                      p.parent_path().string(), "': ", ec.message());
    io::write_file_atomically(p, j.dump(2) + "\n");
  }

  Sim& sim_;
  eval_callback evaluate_;
  quant_analyzer_options options_;
  std::vector<analysis_cost> costs_;
  std::vector<std::pair<io::report::link, std::string>> pages_;  // written pages and their findings
};

}  // namespace qkit::analysis
