// qkit/sim/quantsim.hpp — quantization simulation: predicts a model's accuracy on a fixed-point
// target by running it in float with a quantize-dequantize at every place the target rounds:
// the model input, every parameter and every op output (AIMET's QuantSim).
//
// Which quantizers exist, their bitwidths and dtypes come from a compile-time preset (W8A8,
// W4A8, FP16, ...); whether each is on, symmetric or per-channel comes from an AIMET-style
// config (sim/sim_config.hpp); range setters are compile-time policies per quantizer kind.
// Everything stays adjustable per quantizer, by name, at run time (mixed precision, analysis).
//
// The wrapped model is a copy with its batch norms folded (or kept live, for QAT and BN
// re-estimation); QuantSim plugs into the graph's forward through its hooks, so the
// quantize-dequantize runs right after each layer's kernel. Passes (PTQ, QAT, analysis) work
// on it per layer: an observer sees every layer's input and its output before and after the
// output quantizer, run_layer runs one layer with the simulation's quantizers, and
// snapshot/restore try a configuration and go back.
#pragma once

#include <algorithm>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../calib/entropy.hpp"
#include "../calib/minmax.hpp"
#include "../calib/mse.hpp"
#include "../calib/percentile.hpp"
#include "../calib/tf_enhanced.hpp"
#include "../io/encodings_file.hpp"
#include "../nn/graph.hpp"
#include "../nn/weights_file.hpp"
#include "../nn/batch_norm_fold.hpp"
#include "quantizer.hpp"
#include "../nn/dataflow.hpp"
#include "../quant/ste.hpp"
#include "integer_target.hpp"
#include "model_validator.hpp"
#include "sim_config.hpp"

namespace qkit {

/// A compile-time precision preset: parameter and activation bitwidths and dtypes, and whether
/// weights are quantized per output channel. FP16 is 16-bit float for both (AIMET's W16A16
/// float); bitwidth 32 int is pass-through (an FP32 reference run through the same machinery).
template <int ParamBits, int ActBits, bool PerChannel = false,
          dtype ParamType = dtype::integer, dtype ActType = dtype::integer>
struct sim_preset {
  static constexpr int param_bitwidth = ParamBits;
  static constexpr int activation_bitwidth = ActBits;
  static constexpr bool per_channel = PerChannel;
  static constexpr dtype param_dtype = ParamType;
  static constexpr dtype activation_dtype = ActType;

  static_assert(ParamType == dtype::integer ? (ParamBits >= 2 && ParamBits <= 32) : ParamBits == 16,
                "qkit::sim_preset: integer parameters take 2..32 bits, float parameters 16");
  static_assert(ActType == dtype::integer ? (ActBits >= 2 && ActBits <= 32) : ActBits == 16,
                "qkit::sim_preset: integer activations take 2..32 bits, float activations 16");

  /// "W8A8", "W4A8 per-channel", "FP16", "FP32".
  static std::string label() {
    std::string s;
    if (ParamType == dtype::floating && ActType == dtype::floating) s = "FP16";
    else if (ParamBits >= 32 && ActBits >= 32) s = "FP32";
    else s = "W" + std::to_string(ParamBits) + "A" + std::to_string(ActBits);
    if (PerChannel) s += " per-channel";
    return s;
  }

  /// AIMET's default config, or its per-channel variant.
  static sim_config default_config() {
    return PerChannel ? default_sim_config_per_channel() : default_sim_config();
  }
};

namespace presets {
using fp32 = sim_preset<32, 32>;
using w16a16 = sim_preset<16, 16>;
using w8a16 = sim_preset<8, 16>;
using w8a8 = sim_preset<8, 8>;
using w4a8 = sim_preset<4, 8>;
using fp16 = sim_preset<16, 16, false, dtype::floating, dtype::floating>;
using w16a16_per_channel = sim_preset<16, 16, true>;
using w8a16_per_channel = sim_preset<8, 16, true>;
using w8a8_per_channel = sim_preset<8, 8, true>;
using w4a8_per_channel = sim_preset<4, 8, true>;
}  // namespace presets

/// Where a quantizer sits.
enum class quantizer_kind { input, activation, param };

/// What QuantSim does with the model's batch norms: fold them into the layer before them (the
/// deployed model, AIMET's default) or keep them live (QAT, BN re-estimation). A live batch
/// norm right after a conv or linear is fused with it as the target fuses it: no quantizer
/// on the tensor between them.
enum class batch_norm_mode { fold, keep };

struct quantsim_options {
  batch_norm_mode batch_norms = batch_norm_mode::fold;
};

/// What changes during QAT besides the model's parameters (AIMET's two modes).
enum class qat_mode {
  /// Weight encodings are recomputed from the weights at every training forward; activation
  /// encodings stay as calibrated.
  regular,
  /// Every quantizer's range (min and max; max alone when symmetric; per channel where
  /// per-channel) is a trainable parameter with AIMET's gradients (quant/ste.hpp). Frozen
  /// quantizers (encodings from a file, AdaRound, encoding constraints) keep theirs.
  range_learning,
};

/// The narrowest learned range: a step that would make max − min (or a symmetric max) smaller
/// is clamped here, so the grid keeps a positive scale.
inline constexpr double minimum_learned_range = 1e-6;

/// What a forward observer may define (all optional, detected at compile time):
///   void model_input(const tensor& x, const tensor& x_quantized)
///   void layer_input(const nn::dataflow_node&, const auto& layer, const tensor& x)
///   void layer_output(const nn::dataflow_node&, const auto& layer, const tensor& before,
///                     const tensor& after)   // before / after the layer's output quantizer
/// Observers only look: the tensors are the simulation's own.
struct no_observer {};

/// AIMET's quant_scheme name for a range setter (quantizer_args in encodings files).
template <class R>
std::string quant_scheme_name() {
  if constexpr (std::is_same_v<R, minmax_range>) return "post_training_tf";
  else if constexpr (std::is_same_v<R, tf_enhanced_range>) return "post_training_tf_enhanced";
  else if constexpr (std::is_same_v<R, percentile_range>) return "post_training_percentile";
  else if constexpr (std::is_same_v<R, mse_range>) return "post_training_mse";
  else if constexpr (std::is_same_v<R, entropy_range>) return "post_training_entropy";
  else return "custom";
}

template <class Model, class Preset = presets::w8a8, class ParamRangeSetter = minmax_range,
          class ActRangeSetter = minmax_range, rounding R = rounding::half_even,
          class Mode = sim_mode::float_qdq>
class quantsim {
 public:
  using model_type = Model;
  using preset = Preset;
  /// sim_mode::float_qdq (AIMET's float simulation) or sim_mode::onnxruntime_cpu (the integer
  /// arithmetic of ONNX Runtime's fused kernels; sim/integer_target.hpp).
  using mode = Mode;
  using param_quantizer_type = quantizer<ParamRangeSetter, R>;
  using activation_quantizer_type = quantizer<ActRangeSetter, R>;
  static constexpr rounding rounding_policy = R;

  /// Validates `model` on `example_input` (sim/model_validator.hpp), copies it, folds its batch
  /// norms and places quantizers as `config` says. The range-setter prototypes carry their
  /// options (percentile, histogram mode).
  quantsim(const Model& model, const tensor& example_input,
           const sim_config& config = Preset::default_config(),
           ActRangeSetter activation_range = ActRangeSetter{},
           ParamRangeSetter param_range = ParamRangeSetter{},
           quantsim_options options = {})
      : model_(std::make_unique<Model>(model)), config_(config), options_(options) {
    check_op_types(config_);  // a config built in code gets the parser's check too
    const bool fold = options_.batch_norms == batch_norm_mode::fold;
    sim::validate_model(*model_, example_input, fold);
    if (fold) folds_ = nn::fold_batch_norms(*model_);
    input_shape_.assign(example_input.shape().begin(), example_input.shape().end());
    build(activation_range, param_range);
    nn::no_hooks h;
    tensor y = nn::forward(*model_, example_input, h);
    output_shape_.assign(y.shape().begin(), y.shape().end());
    // The integer mode refuses at construction what the target would not run in integer
    // arithmetic (ops, precisions, schemes); the encodings are checked once they exist.
    if constexpr (Mode::integer_target) integer::compile(*this, /*structure_only=*/true);
  }

  quantsim(quantsim&&) noexcept = default;
  quantsim& operator=(quantsim&&) noexcept = default;

  /// The simulated model (batch norms folded). Changing its weights is seen by the next
  /// forward: parameters are quantize-dequantized afresh on every pass.
  Model& model() { return *model_; }
  const Model& model() const { return *model_; }
  const sim_config& config() const { return config_; }
  const nn::dataflow& dataflow() const { return flow_; }
  const quantsim_options& options() const { return options_; }
  const std::vector<nn::batch_norm_fold>& folded_batch_norms() const { return folds_; }
  const std::vector<std::size_t>& input_shape() const { return input_shape_; }
  const std::vector<std::size_t>& output_shape() const { return output_shape_; }

  // ---- running --------------------------------------------------------------------------

  /// The simulated forward pass (during compute_encodings: the float pass that feeds the
  /// statistics).
  tensor forward(const tensor& x) {
    no_observer none;
    return forward(x, none);
  }

  /// The simulated forward pass with an observer (see no_observer) that sees the model input
  /// and every layer's input and output, e.g. to capture them for a PTQ pass or an analysis.
  template <class Observer>
  tensor forward(const tensor& x, Observer& observer) {
    if constexpr (Mode::integer_target) {
      if (!calibrating_) {
        static_assert(std::is_same_v<Observer, no_observer>,
                      "qkit::quantsim: the integer target mode runs fused integer ops and has no "
                      "per-layer float tensors to observe; capture and analyse with a float-mode "
                      "simulation (sim_mode::float_qdq) holding the same encodings");
        return integer::compile(*this).run(x);
      }
    }
    hooks<Observer> h{this, &observer};
    if (calibrating_) {
      // A batch the model rejects part way (a wrong shape, NaN at some layer) must leave every
      // statistic as it was, also when the callback catches the error and goes on: the input
      // and the layers before the failing one have already observed it, so their statistics
      // are put back. Only activation statistics change during calibration.
      std::vector<std::vector<typename activation_quantizer_type::range_setter_type>> saved;
      saved.reserve(acts_.size());
      for (const auto& q : acts_) saved.push_back(q.statistics());
      try {
        if (acts_[0].enabled()) acts_[0].observe(x);
        if constexpr (requires { observer.model_input(x, x); }) observer.model_input(x, x);
        return nn::forward(*model_, x, h);
      } catch (...) {
        for (std::size_t i = 0; i < acts_.size(); ++i) acts_[i].restore_statistics(std::move(saved[i]));
        throw;
      }
    }
    if (training_) begin_recorded_forward();
    tensor y = [&] {
      if (!passes_through(acts_[0])) {
        if (training_) record_pre_quantization(0, x);
        tensor xq = acts_[0].qdq(x);
        if constexpr (requires { observer.model_input(x, xq); }) observer.model_input(x, xq);
        return nn::forward(*model_, xq, h);
      }
      if constexpr (requires { observer.model_input(x, x); }) observer.model_input(x, x);
      return nn::forward(*model_, x, h);
    }();
    recorded_ = training_;
    if (training_) recorded_output_shape_.assign(y.shape().begin(), y.shape().end());
    return y;
  }

  // ---- training (QAT) ---------------------------------------------------------------------

  /// Training mode: the model's layers train (a live batch norm uses batch statistics) and
  /// every forward keeps what backward needs — each quantizer's input before quantization,
  /// so the straight-through mask is the one of the forward that ran. In regular QAT the
  /// weight encodings follow the weights at every training forward. Leaving training mode
  /// installs the learned ranges as the quantizers' encodings (they are what export writes).
  void set_training(bool on) {
    QKIT_PRECONDITION(!calibrating_, error, "quantsim: set_training during compute_encodings");
    QKIT_PRECONDITION(!Mode::integer_target || !on, config_error,
                      "quantsim: the integer target mode simulates inference only; train (QAT) a "
                      "float-mode simulation and load its encodings into this one");
    nn::set_training(*model_, on);
    training_ = on;
    recorded_ = false;
    if (qat_ == qat_mode::range_learning) install_learned_ranges();
    if (!on) {
      saved_.assign(acts_.size(), tensor());
      saved_valid_.assign(acts_.size(), false);
    }
  }
  bool training() const { return training_; }

  qat_mode qat() const { return qat_; }
  /// Chooses regular QAT or range learning. Range learning starts from the current encodings:
  /// every enabled integer quantizer below 32 bits that is not frozen needs them (a
  /// calibration_error names the first that has none). Going back to regular keeps the
  /// learned encodings.
  void set_qat_mode(qat_mode m) {
    if (m == qat_mode::range_learning) {
      std::vector<learned_range> acts(acts_.size()), params(params_.size());
      for (std::size_t i = 0; i < acts_.size(); ++i) acts[i] = start_learning(acts_[i]);
      for (std::size_t i = 0; i < params_.size(); ++i) params[i] = start_learning(params_[i]);
      act_ranges_ = std::move(acts);
      param_ranges_ = std::move(params);
    } else if (qat_ == qat_mode::range_learning) {
      install_learned_ranges();
      act_ranges_.clear();
      param_ranges_.clear();
    }
    qat_ = m;
  }

  /// Back-propagates dy (∂L/∂output of the last training forward) through the simulation:
  /// straight-through at every quantizer that quantized in that forward (per channel where
  /// per-channel; float16 passes gradients where representable), parameter gradients
  /// accumulate in the model's layers, and in range learning ∂L/∂min and ∂L/∂max accumulate
  /// in the learned ranges (for_each_encoding_parameter). Returns ∂L/∂input.
  tensor backward(const tensor& dy) {
    QKIT_PRECONDITION(training_, error,
                      "quantsim: backward needs training mode (call set_training(true), then "
                      "forward, then backward)");
    QKIT_PRECONDITION(recorded_, error,
                      "quantsim: backward without a preceding training forward (call forward "
                      "after set_training(true) and before backward)");
    QKIT_PRECONDITION(dy.shape() == recorded_output_shape_, shape_error,
                      "quantsim: backward got a gradient of shape ", shape_string(dy.shape()),
                      ", the last forward's output has shape ",
                      shape_string(recorded_output_shape_));
    backward_hooks h{this};
    tensor dx = nn::backward(*model_, dy, h);
    act_backward(0, dx);
    return dx;
  }

  /// Zeroes the model's gradients and those of the learned ranges.
  void zero_grad() {
    nn::zero_grad(*model_);
    for (auto* ranges : {&act_ranges_, &param_ranges_})
      for (auto& r : *ranges)
        if (r.learned) {
          r.dmin.fill(0.0f);
          r.dmax.fill(0.0f);
        }
  }

  /// f(const std::string& name, tensor& value, tensor* grad) for every learned range in range
  /// learning: "<quantizer>.encoding_max" and, for asymmetric quantizers,
  /// "<quantizer>.encoding_min" (one value per channel). An optimizer steps them like weights
  /// (nn::sgd / nn::adam step_each); the next training forward clamps them to valid grids
  /// (max − min ≥ minimum_learned_range, min ≤ 0 ≤ max) and uses them.
  template <class F>
  void for_each_encoding_parameter(F&& f) {
    auto visit = [&](std::vector<learned_range>& ranges, const auto& qs) {
      for (std::size_t i = 0; i < ranges.size(); ++i) {
        auto& r = ranges[i];
        if (!r.learned) continue;
        if (!r.symmetric) f(qs[i].name() + ".encoding_min", r.min, &r.dmin);
        f(qs[i].name() + ".encoding_max", r.max, &r.dmax);
      }
    };
    visit(act_ranges_, acts_);
    visit(param_ranges_, params_);
  }

  /// How many learned values were clamped back to a valid grid (or, not finite, put back to
  /// their last valid value) since range learning started.
  std::size_t clamped_range_updates() const { return clamped_; }

  /// Makes the learned ranges the quantizers' encodings now (forward and set_training do it;
  /// call it after an optimizer step to read or export them without a forward).
  void install_learned_ranges() {
    if (qat_ != qat_mode::range_learning) return;
    for (std::size_t i = 0; i < act_ranges_.size(); ++i) install_learned(act_ranges_[i], acts_[i]);
    for (std::size_t i = 0; i < param_ranges_.size(); ++i)
      install_learned(param_ranges_[i], params_[i]);
  }

  /// AIMET's fold_all_batch_norms_to_scale (qat::fold_all_batch_norms_to_scale calls this):
  /// each live batch norm folds into the conv or linear right before it — the layer's weights
  /// and bias as fold_batch_norms folds them (W' = W·s, b' = β + (b − μ)·s, s = γ/√(var + ε)) and
  /// its weight quantizer's grid with them, per output channel (scale·|s|; the grid mirrored
  /// where s < 0; a per-tensor weight quantizer becomes per-channel), frozen; the bias quantizer
  /// is dropped (off), and the batch norm's output quantizer becomes the layer's (γ and β enter
  /// quantized where their quantizers were turned on: QuantSim builds them off). The result is
  /// the folded simulation of the QAT'd model and exports like any other. Range learning ends
  /// (the learned ranges are installed first; call set_qat_mode again to go on). Errors: training
  /// mode, a batch norm that does not follow a conv/linear whose only reader it is
  /// (config_error), a weight quantizer without encodings (calibration_error); then nothing
  /// changed. Returns the pairs folded.
  std::vector<nn::batch_norm_fold> fold_batch_norms_to_scale() {
    QKIT_PRECONDITION(!training_ && !calibrating_, error,
                      "quantsim: fold_batch_norms_to_scale in training mode (set_training(false) "
                      "first)");
    struct plan {
      std::string layer, output;  // the conv/linear and its output tensor
      nn::weighted_layer* weighted;
      nn::batch_norm* bn;
      tensor gamma, beta;  // as the live simulation used them (quantized if theirs were on)
      std::vector<encoding> weight_encodings;  // the scaled grid, one per output channel
    };
    // The grids the last forward used (a forward installs them too; an optimizer step since
    // has not, and these are what the live simulation computes with).
    if (qat_ == qat_mode::range_learning) install_learned_ranges();
    std::vector<plan> plans;
    for (const auto& n : flow_.nodes) {
      if (!n.live_batch_norm) continue;
      const nn::dataflow_node* prev = flow_.sole_producer(n);
      QKIT_PRECONDITION(prev && prev->weighted && flow_.sole_consumer(*prev) == &n, config_error,
                        "quantsim: fold_batch_norms_to_scale: BatchNormalization '", n.name,
                        "' does not follow a conv or linear layer whose only reader it is, so it "
                        "cannot fold into one");
      nn::batch_norm& bn = *n.live_batch_norm;
      const auto& wq = params_[param_index_.at(prev->name + ".weight")];
      const std::size_t O = prev->weighted->output_channels();
      plan p{prev->name, prev->output, prev->weighted, &bn, bn.weight(), bn.bias(), {}};
      // QuantSim leaves a foldable batch norm's parameters unquantized, as AIMET does; where
      // the user turned their quantizers on, the fold uses the quantized γ and β the live
      // simulation computed with (AIMET folds inside _quantize_params for the same reason),
      // so the folded simulation computes what the live one did.
      for (auto [kind, value] : {std::pair{".weight", &p.gamma}, std::pair{".bias", &p.beta}})
        if (auto it = param_index_.find(n.name + kind); it != param_index_.end())
          if (const auto& q = params_[it->second]; !passes_through(q)) *value = q.qdq(*value);
      if (wq.enabled() && wq.settings().dtype == dtype::integer && wq.bitwidth() < 32) {
        QKIT_PRECONDITION(wq.has_encodings(), calibration_error, "quantsim: fold_batch_norms_to_scale: "
                          "weight quantizer '", wq.name(), "' has no encodings");
        for (std::size_t o = 0; o < O; ++o) {
          const encoding& e = wq.encodings()[wq.per_channel() ? o : 0];
          const double sc = double(p.gamma(o)) /
                            std::sqrt(double(bn.running_var()(o)) + double(bn.epsilon()));
          const double step = e.scale * std::fabs(sc);
          QKIT_PRECONDITION(step > 0.0 && std::isfinite(step), config_error,
                            "quantsim: fold_batch_norms_to_scale: BatchNormalization '", n.name,
                            "' channel ", o, " has scale ", sc, ", which leaves no grid");
          // Mirrored where s < 0: the grid's integers o..o+N map to −(o+N)..−o. A symmetric
          // grid keeps its offset (it is symmetric up to its one extra negative step).
          const std::int64_t off = sc >= 0.0 || e.symmetric ? e.offset : -(e.offset + e.qmax());
          p.weight_encodings.push_back(
              encoding_from_scale_offset(step, off, e.bitwidth, e.symmetric));
        }
      }
      plans.push_back(std::move(p));
    }

    // Every check passed: fold, then rebuild the quantizers of the folded graph and give each
    // the state it had (the layer's output quantizer takes the batch norm's).
    std::unordered_map<std::string, std::string> takes_from;  // new name -> old name
    std::vector<nn::batch_norm_fold> folded;
    for (const auto& p : plans) {
      p.bn->weight() = p.gamma;
      p.bn->bias() = p.beta;
      nn::detail::fold_into(*p.weighted, *p.bn);
      takes_from[p.output] = p.bn->name();
      folded.push_back({p.layer, p.bn->name()});
    }
    auto old_acts = std::move(acts_);
    auto old_params = std::move(params_);
    std::unordered_map<std::string, bool> old_act_placed, old_param_placed;
    for (std::size_t i = 0; i < old_acts.size(); ++i) old_act_placed[old_acts[i].name()] = act_placed_[i];
    for (std::size_t i = 0; i < old_params.size(); ++i)
      old_param_placed[old_params[i].name()] = param_placed_[i];
    std::unordered_map<std::string, std::size_t> old_act_index = std::move(act_index_);
    std::unordered_map<std::string, std::size_t> old_param_index = std::move(param_index_);
    acts_.clear();
    params_.clear();
    param_values_.clear();
    act_placed_.clear();
    param_placed_.clear();
    act_index_.clear();
    param_index_.clear();
    slots_.clear();
    node_index_.clear();
    build(old_acts[0].prototype(), old_params.empty() ? ParamRangeSetter{} : old_params[0].prototype());
    for (std::size_t i = 0; i < acts_.size(); ++i) {
      const auto it = takes_from.find(acts_[i].name());
      const std::string& from = it == takes_from.end() ? acts_[i].name() : it->second;
      if (auto o = old_act_index.find(from); o != old_act_index.end()) {
        const std::string name = acts_[i].name();
        acts_[i] = old_acts[o->second];
        acts_[i].set_name(name);
        act_placed_[i] = old_act_placed[from];
      }
    }
    for (std::size_t i = 0; i < params_.size(); ++i)
      if (auto o = old_param_index.find(params_[i].name()); o != old_param_index.end()) {
        params_[i] = old_params[o->second];
        param_placed_[i] = old_param_placed[params_[i].name()];
      }
    for (const auto& p : plans) {
      auto& wq = params_[param_index_.at(p.layer + ".weight")];
      if (!p.weight_encodings.empty()) {
        wq.unfreeze();
        if (!wq.per_channel()) wq.set_channel_axis(0);
        wq.set_encodings(p.weight_encodings);
        wq.freeze();
      }
      if (auto b = param_index_.find(p.layer + ".bias"); b != param_index_.end()) {
        params_[b->second].set_enabled(false);
        param_placed_[b->second] = false;
      }
    }
    folds_.insert(folds_.end(), folded.begin(), folded.end());
    options_.batch_norms = batch_norm_mode::fold;
    qat_ = qat_mode::regular;
    act_ranges_.clear();
    param_ranges_.clear();
    saved_.clear();
    saved_valid_.clear();
    param_used_.clear();
    recorded_ = false;
    return folded;
  }

  // ---- layers ---------------------------------------------------------------------------

  /// The dataflow node of the layer called `name` (config_error listing names if none).
  const nn::dataflow_node& node(const std::string& name) const {
    if (const auto* n = flow_.find(name)) return *n;
    for (const auto& f : folds_)
      if (f.batch_norm == name)
        QKIT_THROW(config_error, "quantsim: '", name, "' is a batch norm folded into '", f.layer,
                   "' (build the QuantSim with batch_norm_mode::keep to keep it a layer)");
    std::ostringstream os;
    std::size_t shown = 0;
    for (const auto& n : flow_.nodes) {
      if (shown++ == 12) {
        os << ", ...";
        break;
      }
      os << (shown > 1 ? ", " : "") << n.name;
    }
    QKIT_THROW(config_error, "quantsim: no layer named '", name, "' (layers: ", os.str(), ")");
  }

  /// Calls f(layer) with the simulated model's layer called `name`, typed.
  template <class F>
  void with_layer(const std::string& name, F&& f) {
    const void* target = node(name).layer;
    bool found = false;
    visit_nodes([&](const std::string&, auto& leaf) {
      if (!found && static_cast<const void*>(&leaf) == target) {
        found = true;
        f(leaf);
      }
    });
  }

  /// Runs the layer called `name` alone on `x` (taken as given: pass it quantized if the
  /// layer's input is) with the simulation's parameter quantizers, then its output quantizer
  /// when `quantize_output`. Returns the output.
  tensor run_layer(const std::string& name, const tensor& x, bool quantize_output = true) {
    const void* target = node(name).layer;
    QKIT_PRECONDITION(!calibrating_, error, "quantsim: run_layer during compute_encodings");
    tensor y;
    no_observer none;
    hooks<no_observer> h{this, &none};
    visit_nodes([&](const std::string&, auto& leaf) {
      using L = std::remove_cvref_t<decltype(leaf)>;
      if (static_cast<const void*>(&leaf) != target) return;
      if constexpr (std::is_same_v<L, nn::add>) {
        QKIT_THROW(config_error, "quantsim: run_layer cannot run '", name,
                   "' alone: an Add takes two inputs");
      } else {
        y = leaf.forward(x, h);
        if (quantize_output) on_output(target, y);
      }
    });
    return y;
  }

  /// Runs the dataflow node `node` on its operands (one tensor per entry of node.inputs, in
  /// that order, taken as given) as forward() runs it inside the model: with the parameter
  /// quantizers, then its output quantizer. Lets an analysis recompute only the part of the
  /// graph that a change of quantizers affects (analysis::quant_analyzer's data-set mode).
  tensor run_node(const nn::dataflow_node& node, std::span<const tensor* const> operands) {
    QKIT_PRECONDITION(!calibrating_ && !training_, error, "quantsim: run_node during calibration or training");
    QKIT_PRECONDITION(operands.size() == node.inputs.size(), config_error, "quantsim: run_node: '", node.name,
                      "' takes ", node.inputs.size(), " operand(s), got ", operands.size());
    tensor y;
    bool found = false;
    no_observer none;
    hooks<no_observer> h{this, &none};
    visit_nodes([&](const std::string&, auto& leaf) {
      using L = std::remove_cvref_t<decltype(leaf)>;
      if (found || static_cast<const void*>(&leaf) != node.layer) return;
      found = true;
      if constexpr (std::is_same_v<L, nn::add>) y = leaf.forward(*operands[0], *operands[1], h);
      else y = leaf.forward(*operands[0], h);
      on_output(node.layer, y);
    });
    QKIT_PRECONDITION(found, config_error, "quantsim: run_node: '", node.name, "' is not a layer of this simulation");
    return y;
  }

  /// The output quantizer of the layer called `name` (its output tensor's quantizer).
  activation_quantizer_type& output_quantizer(const std::string& name) {
    return acts_[act_index_.at(node(name).output)];
  }

  // ---- state ------------------------------------------------------------------------------

  /// Every quantizer's state: encodings, statistics, enabled, bitwidth and scheme, frozen.
  struct quantizer_state {
    std::vector<activation_quantizer_type> activations;
    std::vector<param_quantizer_type> params;
  };
  quantizer_state snapshot() const { return {acts_, params_}; }
  /// Puts back a snapshot of this simulation (weights are not part of it).
  void restore(const quantizer_state& s) {
    QKIT_PRECONDITION(s.activations.size() == acts_.size() && s.params.size() == params_.size(),
                      config_error, "quantsim: restore: the snapshot has ", s.activations.size(),
                      " activation and ", s.params.size(), " parameter quantizers, this "
                      "simulation ", acts_.size(), " and ", params_.size());
    for (std::size_t i = 0; i < acts_.size(); ++i)
      QKIT_PRECONDITION(s.activations[i].name() == acts_[i].name(), config_error,
                        "quantsim: restore: the snapshot is of another simulation (quantizer '",
                        s.activations[i].name(), "' where this one has '", acts_[i].name(), "')");
    for (std::size_t i = 0; i < params_.size(); ++i)
      QKIT_PRECONDITION(s.params[i].name() == params_[i].name(), config_error,
                        "quantsim: restore: the snapshot is of another simulation (quantizer '",
                        s.params[i].name(), "' where this one has '", params_[i].name(), "')");
    acts_ = s.activations;
    params_ = s.params;
  }

  /// The float value of parameter `name` ("<layer>.weight") in the simulated model (batch
  /// norms folded), before its quantizer.
  const tensor& parameter(const std::string& name) const {
    auto it = param_index_.find(name);
    if (it == param_index_.end()) unknown(name, "parameter");
    return *param_values_[it->second];
  }

  /// The quantize-dequantized value of parameter `name` ("<layer>.weight") as the simulation
  /// computes with it (the float value where its quantizer is off).
  tensor quantized_parameter(const std::string& name) {
    auto it = param_index_.find(name);
    if (it == param_index_.end()) unknown(name, "parameter");
    const tensor& value = *param_values_[it->second];
    if (passes_through(params_[it->second])) return value;
    tensor out = tensor::from_shape(value.shape());
    params_[it->second].qdq(value.data(), out.data(),
                            std::span<const std::size_t>(value.shape().data(), value.shape().size()));
    return out;
  }

  /// Calibrates: parameter encodings come from the weights; then callback(*this) runs
  /// representative data through forward() with quantized parameters and float activations
  /// (AIMET's calibration pass) while activation statistics gather; then every enabled,
  /// unfrozen activation quantizer gets its encodings.
  template <class Callback>
  void compute_encodings(Callback&& callback) {
    // As in AIMET, parameters are quantized during the calibration pass (their encodings come
    // from the weights first); only activations pass through while their statistics gather.
    compute_param_encodings();
    for (auto& q : acts_)
      if (!q.frozen()) q.reset_statistics();
    calibrating_ = true;
    try {
      callback(*this);
    } catch (...) {
      calibrating_ = false;
      throw;
    }
    calibrating_ = false;
    for (auto& q : acts_) {
      if (!q.enabled() || q.frozen()) continue;
      if (q.settings().dtype == dtype::integer && q.bitwidth() >= 32) continue;
      QKIT_PRECONDITION(q.settings().dtype == dtype::floating || q.has_statistics(),
                        calibration_error, "quantizer '", q.name(),
                        "' saw no data during compute_encodings (does the callback call "
                        "forward?)");
      q.compute_encodings();
    }
    // Encodings the target's requantization cannot carry are an error now, not a wrong
    // number at the first forward.
    if constexpr (Mode::integer_target) integer::compile(*this);
  }

  /// Recomputes parameter encodings from the current weights (enabled, unfrozen ones). QAT
  /// calls this every step; compute_encodings calls it first. Call it again after enabling a
  /// parameter quantizer that was off.
  void compute_param_encodings() {
    for (std::size_t i = 0; i < params_.size(); ++i) compute_param_encoding(i);
  }
  /// The same for one parameter ("<layer>.bias" after a pass changed that bias).
  void compute_param_encodings(const std::string& name) {
    auto it = param_index_.find(name);
    if (it == param_index_.end()) unknown(name, "parameter");
    compute_param_encoding(it->second);
  }

  // ---- quantizers by name ---------------------------------------------------------------

  /// Names of all quantizers: "input", then per node its output tensor name, and parameter
  /// names "<layer>.weight" / "<layer>.bias".
  std::vector<std::string> quantizer_names() const {
    std::vector<std::string> names;
    for (const auto& q : acts_) names.push_back(q.name());
    for (const auto& q : params_) names.push_back(q.name());
    return names;
  }

  bool has_quantizer(const std::string& name) const {
    return act_index_.count(name) || param_index_.count(name);
  }

  param_quantizer_type& param_quantizer(const std::string& name) {
    auto it = param_index_.find(name);
    if (it == param_index_.end()) unknown(name, "parameter");
    return params_[it->second];
  }
  activation_quantizer_type& activation_quantizer(const std::string& name) {
    auto it = act_index_.find(name);
    if (it == act_index_.end()) unknown(name, "activation");
    return acts_[it->second];
  }
  const param_quantizer_type& param_quantizer(const std::string& name) const {
    return const_cast<quantsim*>(this)->param_quantizer(name);
  }
  const activation_quantizer_type& activation_quantizer(const std::string& name) const {
    return const_cast<quantsim*>(this)->activation_quantizer(name);
  }

  /// f(const std::string& name, quantizer_kind, auto& quantizer) for every quantizer.
  template <class F>
  void for_each_quantizer(F&& f) {
    for (std::size_t i = 0; i < acts_.size(); ++i)
      f(acts_[i].name(), i == 0 ? quantizer_kind::input : quantizer_kind::activation, acts_[i]);
    for (auto& q : params_) f(q.name(), quantizer_kind::param, q);
  }
  template <class F>
  void for_each_quantizer(F&& f) const {
    for (std::size_t i = 0; i < acts_.size(); ++i)
      f(acts_[i].name(), i == 0 ? quantizer_kind::input : quantizer_kind::activation, acts_[i]);
    for (const auto& q : params_) f(q.name(), quantizer_kind::param, q);
  }

  /// Applies f(auto& quantizer) to the quantizer called `name`, whichever kind it is.
  template <class F>
  decltype(auto) with_quantizer(const std::string& name, F&& f) {
    if (auto it = act_index_.find(name); it != act_index_.end()) return f(acts_[it->second]);
    if (auto it = param_index_.find(name); it != param_index_.end()) return f(params_[it->second]);
    unknown(name, "");
  }

  void set_enabled(const std::string& name, bool on) {
    with_quantizer(name, [&](auto& q) { q.set_enabled(on); });
  }
  void set_bitwidth(const std::string& name, int bw) {
    with_quantizer(name, [&](auto& q) { q.set_bitwidth(bw); });
  }
  /// Installs encodings and freezes them, so later calibration leaves them alone.
  void set_and_freeze_encodings(const std::string& name, std::vector<encoding> encs) {
    with_quantizer(name, [&](auto& q) { install_frozen(q, encs); });
  }
  /// Turns every quantizer off (the FP32 check) or on as placed by the config.
  void set_all_enabled(bool on) {
    if (!on) {
      for_each_quantizer([](const std::string&, quantizer_kind, auto& q) { q.set_enabled(false); });
      return;
    }
    for (std::size_t i = 0; i < acts_.size(); ++i) acts_[i].set_enabled(act_placed_[i]);
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i].set_enabled(param_placed_[i]);
  }

  // ---- files ------------------------------------------------------------------------------

  /// The encodings of every enabled quantizer that has them, keyed as AIMET keys them
  /// (activation tensor names, "<layer>.weight"), with AIMET's quantizer_args.
  io::encodings_file encodings() const {
    io::encodings_file f;
    for (std::size_t i = 0; i < acts_.size(); ++i)
      if (exported(acts_[i])) f.activation_encodings[acts_[i].name()] = acts_[i].encodings();
    for (const auto& q : params_)
      if (exported(q)) f.param_encodings[q.name()] = q.encodings();
    nlohmann::json args;
    args["activation_bitwidth"] = Preset::activation_bitwidth;
    args["param_bitwidth"] = Preset::param_bitwidth;
    args["dtype"] = Preset::activation_dtype == dtype::floating ? "float" : "int";
    args["is_symmetric"] = config_.resolve_param("Conv", "weight").symmetric;
    args["per_channel_quantization"] = Preset::per_channel;
    args["quant_scheme"] = quant_scheme_name<ActRangeSetter>();
    f.quantizer_args = args;
    return f;
  }

  /// Writes the encodings file (AIMET format 0.6.1 or 1.0.0), atomically.
  void export_encodings(const std::filesystem::path& path,
                        io::format_version version = io::format_version::v1_0_0) const {
    io::write_encodings(encodings(), path, version);
  }

  /// Loads an encodings file written for this model and freezes what it sets. The file must
  /// name exactly the enabled quantizers (format_error listing the names that differ), with
  /// the bitwidths and channel counts they are configured for — or, with
  /// `bitwidths_from_file`, with any bitwidth: each quantizer then takes the file's (a mixed-
  /// precision result, e.g. analysis::debug_quantization's, applied to a fresh simulation).
  void load_encodings(const std::filesystem::path& path, bool bitwidths_from_file = false) {
    const io::encodings_file f = io::read_encodings(path);
    std::set<std::string> param_names, act_names;
    std::map<std::string, int> param_bw, act_bw;
    for (std::size_t i = 0; i < acts_.size(); ++i) {
      if (!loadable(acts_[i])) continue;
      act_names.insert(acts_[i].name());
      act_bw[acts_[i].name()] = signed_bitwidth(acts_[i]);
    }
    for (const auto& q : params_) {
      if (!loadable(q)) continue;
      param_names.insert(q.name());
      param_bw[q.name()] = signed_bitwidth(q);
    }
    io::check_encoding_names(f, param_names, act_names);
    if (!bitwidths_from_file) io::check_encoding_bitwidths(f, param_bw, act_bw);
    for (std::size_t i = 0; i < params_.size(); ++i) {
      auto it = f.param_encodings.find(params_[i].name());
      if (it == f.param_encodings.end()) continue;
      const std::size_t want =
          params_[i].per_channel() ? param_values_[i]->shape(0) : std::size_t{1};
      QKIT_PRECONDITION(it->second.size() == want, format_error, path.string(), ": param '",
                        it->first, "' has ", it->second.size(), " encoding(s), the model's ",
                        params_[i].per_channel() ? "per-channel" : "per-tensor",
                        " quantizer expects ", want);
    }
    for (const auto& [name, encs] : f.activation_encodings)
      QKIT_PRECONDITION(encs.size() == 1, format_error, path.string(), ": activation '", name,
                        "' has ", encs.size(), " encodings, expected one");
    // Install on copies and swap them in only when every quantizer took its encodings, so a
    // file that fails half way leaves the simulation as it was.
    auto acts = acts_;
    auto params = params_;
    for (const auto& [name, encs] : f.param_encodings)
      install_frozen(params[param_index_.at(name)], encs);
    for (const auto& [name, encs] : f.activation_encodings)
      install_frozen(acts[act_index_.at(name)], encs);
    std::swap(acts_, acts);
    std::swap(params_, params);
    if constexpr (Mode::integer_target) {
      try {
        integer::compile(*this);  // encodings the target cannot carry: refused, sim unchanged
      } catch (...) {
        std::swap(acts_, acts);
        std::swap(params_, params);
        throw;
      }
    }
  }

  /// AIMET's set_and_freeze_param_encodings: installs and freezes the parameter encodings of
  /// a file (e.g. the one ptq::apply_adaround writes), leaving the activations to
  /// compute_encodings; activation entries in the file are ignored. Every parameter the file
  /// names must be an enabled quantizer of this simulation with the file's bitwidth and
  /// channel count (format_error naming it); a file that fails leaves the simulation as it was.
  void set_and_freeze_param_encodings(const std::filesystem::path& path) {
    const io::encodings_file f = io::read_encodings(path);
    auto params = params_;
    for (const auto& [name, encs] : f.param_encodings) {
      auto it = param_index_.find(name);
      QKIT_PRECONDITION(it != param_index_.end(), format_error, path.string(), ": param '", name,
                        "' is not a parameter of this simulation");
      auto& q = params[it->second];
      QKIT_PRECONDITION(loadable(q), format_error, path.string(), ": param '", name,
                        "' is not quantized in this simulation (off or pass-through)");
      const std::size_t want = q.per_channel() ? param_values_[it->second]->shape(0) : 1;
      QKIT_PRECONDITION(encs.size() == want, format_error, path.string(), ": param '", name,
                        "' has ", encs.size(), " encoding(s), the model's ",
                        q.per_channel() ? "per-channel" : "per-tensor", " quantizer expects ",
                        want);
      for (const auto& e : encs)
        QKIT_PRECONDITION((e.dtype == dtype::floating ? -16 : e.bitwidth) == signed_bitwidth(q),
                          format_error, path.string(), ": param '", name, "' is ",
                          e.dtype == dtype::floating ? "float16" : "int", e.bitwidth,
                          " in the file, the simulation quantizes it at ",
                          q.settings().dtype == dtype::floating ? "float16" : "int",
                          q.bitwidth());
      install_frozen(q, encs);
    }
    params_ = std::move(params);
  }

  /// Saves the simulated (batch-norm folded) model's float weights as .npz, keyed by name.
  void save_weights(const std::filesystem::path& path) { nn::save_weights(*model_, path); }

  /// A table of every quantizer: name, kind, on/off, bitwidth, scheme and range.
  std::string summary() const {
    std::ostringstream os;
    for_each_quantizer([&](const std::string& name, quantizer_kind k, const auto& q) {
      os << (k == quantizer_kind::param ? "param " : "act   ") << name << ": ";
      if (!q.enabled()) {
        os << "off\n";
        return;
      }
      if (q.settings().dtype == dtype::floating) os << "fp16";
      else os << "int" << q.bitwidth() << (q.settings().s.symmetric ? " sym" : " asym");
      if (q.per_channel()) os << " per-channel(" << q.encodings().size() << ")";
      if (q.has_encodings() && q.settings().dtype == dtype::integer && !q.per_channel())
        os << " [" << q.encodings()[0].min << ", " << q.encodings()[0].max << "]";
      if (q.frozen()) os << " frozen";
      os << "\n";
    });
    return os.str();
  }

 private:
  struct leaf_slot {
    int output = -1;
    int weight = -1;
    int bias = -1;
    tensor weight_q, bias_q;  // reused buffers for the quantize-dequantized parameters
  };

  template <class Observer>
  struct hooks : nn::no_hooks {
    quantsim* sim;
    Observer* obs;
    hooks(quantsim* s, Observer* o) : sim(s), obs(o) {}
    template <class L>
    const tensor& param(const L& layer, std::string_view name, const tensor& value) {
      return sim->quantized_param(&layer, name, value);
    }
    template <class L>
    void input(const L& layer, const tensor& x) {
      if constexpr (requires(const nn::dataflow_node& n) { obs->layer_input(n, layer, x); })
        if (const auto* n = sim->node_of(&layer)) obs->layer_input(*n, layer, x);
    }
    template <class L>
    void output(const L& layer, tensor& y) {
      if constexpr (requires(const nn::dataflow_node& n) { obs->layer_output(n, layer, y, y); }) {
        const auto* n = sim->node_of(&layer);
        if (!n) return;  // a folded batch norm: no node, no quantizer
        if (!sim->quantizes_output(&layer)) {  // before == after: no copy
          sim->on_output(&layer, y);               // (statistics, while calibrating)
          obs->layer_output(*n, layer, std::as_const(y), std::as_const(y));
          return;
        }
        const tensor before = y;
        sim->on_output(&layer, y);
        obs->layer_output(*n, layer, before, std::as_const(y));
      } else {
        sim->on_output(&layer, y);
      }
    }
  };

  // ---- QAT state ---------------------------------------------------------------------------

  // One quantizer's learned range (range learning): one value per channel, float like every
  // trainable parameter, with the last valid values a non-finite step falls back to.
  struct learned_range {
    bool learned = false;
    bool symmetric = false;
    tensor min, max, dmin, dmax;
    std::vector<float> last_min, last_max;
  };

  struct backward_hooks : nn::no_hooks {
    quantsim* sim;
    explicit backward_hooks(quantsim* s) : sim(s) {}
    template <class L>
    void output_grad(const L& layer, tensor& g) {
      auto it = sim->slots_.find(&layer);
      if (it != sim->slots_.end() && it->second.output >= 0)
        sim->act_backward(static_cast<std::size_t>(it->second.output), g);
    }
    template <class L>
    void param_grad(const L& layer, std::string_view name, tensor& g) {
      auto it = sim->slots_.find(&layer);
      if (it == sim->slots_.end()) return;
      const int idx = name == "weight" ? it->second.weight : name == "bias" ? it->second.bias : -1;
      if (idx >= 0) sim->param_backward(static_cast<std::size_t>(idx), g);
    }
  };

  template <class Q>
  static learned_range start_learning(const Q& q) {
    learned_range r;
    if (!q.enabled() || q.frozen() || q.settings().dtype != dtype::integer || q.bitwidth() >= 32)
      return r;
    QKIT_PRECONDITION(q.has_encodings(), calibration_error,
                      "quantsim: range learning starts from encodings, and quantizer '", q.name(),
                      "' has none (call compute_encodings or load_encodings first)");
    const auto& encs = q.encodings();
    const std::size_t C = encs.size();
    r.learned = true;
    r.symmetric = q.settings().s.symmetric;
    r.min = tensor::from_shape({C});
    r.max = tensor::from_shape({C});
    for (std::size_t c = 0; c < C; ++c) {
      r.min(c) = static_cast<float>(encs[c].min);
      r.max(c) = static_cast<float>(encs[c].max);
    }
    r.dmin = tensor::from_shape({C});
    r.dmin.fill(0.0f);
    r.dmax = r.dmin;
    r.last_min.assign(r.min.begin(), r.min.end());
    r.last_max.assign(r.max.begin(), r.max.end());
    return r;
  }

  // Clamps a learned range to a valid grid and makes it the quantizer's encodings.
  template <class Q>
  void install_learned(learned_range& r, Q& q) {
    if (!r.learned || q.frozen()) return;
    const std::size_t C = r.max.size();
    std::vector<encoding> encs(C);
    for (std::size_t c = 0; c < C; ++c) {
      double lo = r.min(c), hi = r.max(c);
      bool changed = false;
      if (!std::isfinite(lo) || !std::isfinite(hi)) {
        lo = r.last_min[c];
        hi = r.last_max[c];
        changed = true;
      }
      if (r.symmetric) {
        if (hi < minimum_learned_range) {
          hi = minimum_learned_range;
          changed = true;
        }
        // min is not learned: −max, or 0 on an unsigned-symmetric grid.
        lo = lo >= 0.0 && q.settings().s.unsigned_symmetric ? 0.0 : -hi;
      } else {
        if (lo > 0.0) lo = 0.0, changed = true;  // zero stays representable
        if (hi < 0.0) hi = 0.0, changed = true;
        if (hi - lo < minimum_learned_range) hi = lo + minimum_learned_range, changed = true;
      }
      clamped_ += changed;
      r.min(c) = static_cast<float>(lo);
      r.max(c) = static_cast<float>(hi);
      r.last_min[c] = r.min(c);
      r.last_max[c] = r.max(c);
      encs[c] = encoding_from_range(r.min(c), r.max(c), q.bitwidth(), q.settings().s);
    }
    q.set_encodings(std::move(encs));
  }

  void begin_recorded_forward() {
    if (qat_ == qat_mode::range_learning) install_learned_ranges();
    if (saved_.size() != acts_.size()) saved_.assign(acts_.size(), tensor());
    saved_valid_.assign(acts_.size(), false);
    param_used_.assign(params_.size(), false);
    recorded_ = false;
  }

  void record_pre_quantization(std::size_t i, const tensor& x) {
    tensor& s = saved_[i];
    if (s.shape() != x.shape()) s = tensor::from_shape(x.shape());
    std::copy(x.begin(), x.end(), s.begin());
    saved_valid_[i] = true;
  }

  void act_backward(std::size_t i, tensor& g) {
    if (i >= saved_valid_.size() || !saved_valid_[i]) return;  // it did not quantize
    ste_at(acts_[i], act_ranges_.empty() ? nullptr : &act_ranges_[i], saved_[i], g);
  }
  void param_backward(std::size_t i, tensor& g) {
    if (i >= param_used_.size() || !param_used_[i]) return;
    ste_at(params_[i], param_ranges_.empty() ? nullptr : &param_ranges_[i], *param_values_[i], g);
  }

  // The straight-through backward of one quantizer at x (its input in the forward), and in
  // range learning the gradients of its learned range.
  template <class Q>
  void ste_at(const Q& q, learned_range* r, const tensor& x, tensor& g) {
    QKIT_PRECONDITION(g.shape() == x.shape(), shape_error, "quantsim: backward: quantizer '",
                      q.name(), "' got a gradient of shape ", shape_string(g.shape()),
                      " for an input of shape ", shape_string(x.shape()));
    if (q.settings().dtype == dtype::floating) {
      ste_backward(x.data(), g.data(), x.size(), encoding::fp16());
      return;
    }
    const bool learn = r && r->learned;
    const auto& encs = q.encodings();
    std::vector<ste_sums> sums(learn ? encs.size() : 0);
    if (!q.per_channel()) {
      ste_backward(x.data(), g.data(), x.size(), encs[0], R, learn ? sums.data() : nullptr);
    } else {
      const channel_layout l = channel_layout_of(
          std::span<const std::size_t>(x.shape().data(), x.shape().size()), *q.channel_axis(),
          encs.size());
      ste_backward_per_channel(x.data(), g.data(), l.outer, l.channels, l.inner, encs.data(), R,
                               learn ? sums.data() : nullptr);
    }
    for (std::size_t c = 0; c < sums.size(); ++c) {
      const range_gradient rg =
          range_gradient_of(sums[c], r->min(c), r->max(c), q.bitwidth(), q.settings().s);
      r->dmin(c) += static_cast<float>(rg.dmin);
      r->dmax(c) += static_cast<float>(rg.dmax);
    }
  }

  bool quantizes_output(const void* layer) const {
    auto it = slots_.find(layer);
    if (it == slots_.end() || it->second.output < 0) return false;
    const auto& q = acts_[it->second.output];
    return !calibrating_ && !passes_through(q);
  }

  void compute_param_encoding(std::size_t i) {
    auto& q = params_[i];
    if (q.frozen() || !q.enabled()) return;
    q.reset_statistics();
    if (q.settings().dtype == dtype::integer && q.bitwidth() >= 32) return;
    q.observe(*param_values_[i]);
    q.compute_encodings();
  }

  const nn::dataflow_node* node_of(const void* layer) const {
    auto it = node_index_.find(layer);
    return it == node_index_.end() ? nullptr : &flow_.nodes[it->second];
  }

  template <class F>
  void visit_nodes(F&& f) {
    nn::visit_layers(*model_, f);
  }

  // Encodings from elsewhere (a file, the user) replace whatever was there and stay put.
  template <class Q>
  static void install_frozen(Q& q, const std::vector<encoding>& encs) {
    q.unfreeze();
    q.set_encodings(encs);
    q.freeze();
  }

  template <class Q>
  static bool passes_through(const Q& q) {
    return !q.enabled() || (q.settings().dtype == dtype::integer && q.bitwidth() >= 32);
  }
  template <class Q>
  static bool exported(const Q& q) {
    return q.enabled() && q.has_encodings() && !passes_through(q);
  }
  template <class Q>
  static bool loadable(const Q& q) {
    return q.enabled() && !passes_through(q);
  }
  template <class Q>
  static int signed_bitwidth(const Q& q) {
    return q.settings().dtype == dtype::floating ? -16 : q.bitwidth();
  }

  const tensor& quantized_param(const void* layer, std::string_view name, const tensor& value) {
    auto it = slots_.find(layer);
    if (it == slots_.end()) return value;
    leaf_slot& slot = it->second;
    const bool is_weight = name == "weight";
    const int idx = is_weight ? slot.weight : name == "bias" ? slot.bias : -1;
    if (idx < 0 || passes_through(params_[idx])) return value;
    if (training_) {
      // Regular QAT: the weight encodings follow the weights (frozen ones stay put).
      if (qat_ == qat_mode::regular) compute_param_encoding(static_cast<std::size_t>(idx));
      if (idx < static_cast<int>(param_used_.size())) param_used_[static_cast<std::size_t>(idx)] = true;
    }
    tensor& buf = is_weight ? slot.weight_q : slot.bias_q;
    if (buf.shape() != value.shape()) buf = tensor::from_shape(value.shape());
    params_[idx].qdq(value.data(), buf.data(),
                     std::span<const std::size_t>(value.shape().data(), value.shape().size()));
    return buf;
  }

  void on_output(const void* layer, tensor& y) {
    auto it = slots_.find(layer);
    if (it == slots_.end() || it->second.output < 0) return;
    auto& q = acts_[it->second.output];
    if (calibrating_) {
      if (q.enabled()) q.observe(y);
      return;
    }
    if (passes_through(q)) return;
    if (training_) record_pre_quantization(static_cast<std::size_t>(it->second.output), y);
    q.qdq_inplace(y);
  }

  [[noreturn]] void unknown(const std::string& name, const char* kind) const {
    std::ostringstream os;
    std::size_t shown = 0;
    for (const auto& n : quantizer_names()) {
      if (shown++ == 12) {
        os << ", ...";
        break;
      }
      os << (shown > 1 ? ", " : "") << n;
    }
    QKIT_THROW(config_error, "quantsim: no ", kind, (*kind ? " " : ""), "quantizer named '",
               name, "' (quantizers: ", os.str(), ")");
  }

  // The config decides where it says something (op_type, then defaults); else the preset.
  bool per_channel_for(const std::string& op) const {
    if (auto it = config_.op_type.find(op);
        it != config_.op_type.end() && it->second.per_channel_quantization)
      return *it->second.per_channel_quantization;
    return config_.defaults.per_channel_quantization.value_or(Preset::per_channel);
  }

  void add_activation(const std::string& name, bool enabled, const scheme& s,
                      const ActRangeSetter& proto) {
    quantizer_settings st;
    st.bitwidth = Preset::activation_bitwidth;
    st.dtype = Preset::activation_dtype;
    st.s = s;
    st.enabled = enabled;
    act_index_[name] = acts_.size();
    acts_.emplace_back(name, st, proto);
  }

  void build(const ActRangeSetter& act_proto, const ParamRangeSetter& param_proto) {
    add_activation("input", config_.model_input_quantized.value_or(false),
                   config_.scheme_for(config_.defaults.is_symmetric.value_or(false)), act_proto);
    flow_ = nn::describe_dataflow(*model_, [&](const nn::dataflow_node& node, auto& leaf) {
      const auto op = config_.resolve_op(node.op_type);
      leaf_slot slot;
      slot.output = static_cast<int>(acts_.size());
      add_activation(node.output, op.output_quantized, op.scheme, act_proto);
      if (auto it = config_.op_type.find(node.op_type);
          it != config_.op_type.end() && it->second.encoding_constraints &&
          Preset::activation_dtype == dtype::integer && Preset::activation_bitwidth < 32) {
        // AIMET's encoding_constraints: the op's output range is fixed, not calibrated.
        const auto [lo, hi] = *it->second.encoding_constraints;
        auto& q = acts_.back();
        q.set_encoding(encoding_from_range(lo, hi, Preset::activation_bitwidth, op.scheme));
        q.freeze();
      }
      leaf.for_each_parameter([&](std::string_view suffix, tensor& value, tensor* grad) {
        if (!grad) return;  // running statistics are state, not parameters
        const std::string kind(suffix);
        const auto pr = config_.resolve_param(node.op_type, kind);
        quantizer_settings st;
        st.bitwidth = Preset::param_bitwidth;
        st.dtype = Preset::param_dtype;
        st.s = pr.scheme;
        st.enabled = pr.quantized;
        // Per output channel: axis 0 of Conv's OIHW and Gemm's [out, in] weights.
        if (kind == "weight" && per_channel_for(node.op_type)) st.channel_axis = 0;
        const std::string name = node.name + "." + kind;
        (kind == "weight" ? slot.weight : slot.bias) = static_cast<int>(params_.size());
        param_index_[name] = params_.size();
        params_.emplace_back(name, st, param_proto);
        param_values_.push_back(&value);
      });
      slots_[node.layer] = std::move(slot);
    });

    for (std::size_t i = 0; i < flow_.nodes.size(); ++i) node_index_[flow_.nodes[i].layer] = i;
    // A live batch norm is fused with the conv or linear before it on the target (it folds at
    // export): no quantizer between them.
    // Its γ and β fold into the layer's weights and bias there, which are what is quantized:
    // AIMET's QuantSim disables a foldable batch norm's parameter quantizers too. (Quantized
    // live, a per-channel γ would even become a learned per-channel gain in range learning,
    // one that the fold would then have to carry.)
    for (const auto& n : flow_.nodes) {
      const auto* next = n.weighted ? flow_.sole_consumer(n) : nullptr;
      if (!next || next->kind != nn::op_kind::batch_norm) continue;
      acts_[act_index_.at(n.output)].set_enabled(false);
      for (const char* kind : {".weight", ".bias"})
        if (auto it = param_index_.find(next->name + kind); it != param_index_.end())
          params_[it->second].set_enabled(false);
    }
    // An op that wants its inputs quantized gets the quantizer of whatever feeds it.
    for (const auto& node : flow_.nodes) {
      if (!config_.resolve_op(node.op_type).input_quantized) continue;
      for (const auto& in : node.inputs) acts_[act_index_.at(in)].set_enabled(true);
    }
    // Supergroups: an op chain the target fuses keeps only its last output quantizer. A link
    // counts only when the tensor has no other reader (a skip connection keeps it).
    for (const auto& group : config_.supergroups) {
      for (const auto& start : flow_.nodes) {
        std::vector<const nn::dataflow_node*> chain{&start}, live_bns;
        if (start.op_type != group[0]) continue;
        for (std::size_t j = 1; j < group.size(); ++j) {
          const nn::dataflow_node* next = flow_.sole_consumer(*chain.back());
          // A live batch norm after a conv/linear is part of it (fused on the target): the
          // group continues behind it, as it does behind a folded one.
          if (next && chain.back()->weighted && next->kind == nn::op_kind::batch_norm) {
            live_bns.push_back(next);
            next = flow_.sole_consumer(*next);
          }
          if (!next || next->op_type != group[j]) break;
          chain.push_back(next);
        }
        if (chain.size() != group.size()) continue;
        for (std::size_t j = 0; j + 1 < chain.size(); ++j)
          acts_[act_index_.at(chain[j]->output)].set_enabled(false);
        for (const auto* bn : live_bns) acts_[act_index_.at(bn->output)].set_enabled(false);
      }
    }
    if (config_.model_output_quantized.has_value() && !flow_.nodes.empty())
      acts_[act_index_.at(flow_.output)].set_enabled(*config_.model_output_quantized);

    for (const auto& q : acts_) act_placed_.push_back(q.enabled());
    for (const auto& q : params_) param_placed_.push_back(q.enabled());
  }

  std::unique_ptr<Model> model_;
  sim_config config_;
  quantsim_options options_;
  std::vector<nn::batch_norm_fold> folds_;
  nn::dataflow flow_;
  std::vector<activation_quantizer_type> acts_;  // [0] is the model input
  std::vector<param_quantizer_type> params_;
  std::vector<tensor*> param_values_;            // the model's parameter for params_[i]
  std::vector<bool> act_placed_, param_placed_;  // enabled as the config placed them
  std::unordered_map<std::string, std::size_t> act_index_, param_index_;
  std::unordered_map<const void*, leaf_slot> slots_;
  std::unordered_map<const void*, std::size_t> node_index_;  // layer -> flow_.nodes index
  std::vector<std::size_t> input_shape_, output_shape_;
  bool calibrating_ = false;
  // QAT: the mode, the learned ranges (range learning; index-aligned with acts_/params_), and
  // what the last training forward recorded for backward.
  qat_mode qat_ = qat_mode::regular;
  std::vector<learned_range> act_ranges_, param_ranges_;
  bool training_ = false, recorded_ = false;
  std::vector<tensor> saved_;          // each activation quantizer's input, before quantization
  std::vector<bool> saved_valid_;      // ... recorded in the last training forward
  std::vector<bool> param_used_;       // parameter quantizers that quantized in it
  std::vector<std::size_t> recorded_output_shape_;
  std::size_t clamped_ = 0;
};

}  // namespace qkit
