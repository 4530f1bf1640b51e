// qkit/nn/fit.hpp — the training loop: epochs over a labelled data set in a seeded shuffled
// order (with optional image augmentation), softmax cross-entropy, any of qkit's optimizers, a
// warm-up + cosine learning-rate schedule, evaluation after every epoch, early stopping, the
// best epoch's parameters kept, a progress bar on a terminal (plain lines in a log), and a
// clear stop when the loss turns NaN.
//
// It trains a model of the layer graph, or a QuantSim (QAT): anything with forward(x),
// backward(dy), zero_grad(), set_training(bool) and model(). A QuantSim in range learning also
// lists its learned ranges (for_each_encoding_parameter); fit steps them with a second
// optimizer of the same kind at their own learning rate, without weight decay.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "../data/augment.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../io/terminal.hpp"
#include "evaluate.hpp"
#include "graph.hpp"
#include "loss.hpp"
#include "optimizer.hpp"

namespace qkit::nn {

/// Learning rate at each step: a linear warm-up over the first warmup_steps (step s uses
/// (s + 1)/warmup_steps of the rate), times cosine decay from base to min_lr over all steps
/// (or a constant base).
struct lr_schedule {
  float base = 0.01f;
  std::size_t warmup_steps = 0;
  bool cosine = true;
  float min_lr = 0.0f;

  float at(std::size_t step, std::size_t total) const {
    const float warm =
        warmup_steps ? std::min(1.0f, float(step + 1) / float(warmup_steps)) : 1.0f;
    return warm * (cosine ? cosine_lr(base, step, total, min_lr) : base);
  }
};

/// Where training stands, reported after every batch.
struct fit_progress {
  std::size_t epoch = 0, epochs = 0;   ///< 1-based epoch
  std::size_t seen = 0, total = 0;     ///< samples this epoch
  std::size_t step = 0;                ///< global step (batches so far, all epochs)
  double loss = 0.0, accuracy = 0.0;   ///< running mean over the epoch
  float lr = 0.0f;
  double images_per_second = 0.0;
};

struct epoch_result {
  std::size_t epoch = 0;  ///< 1-based
  double loss = 0.0, accuracy = 0.0;  ///< training loss and running top-1 over the epoch
  /// Top-1 on fit_options::validation after the epoch (NaN without validation data).
  double validation_accuracy = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0.0;
};

struct fit_result {
  std::vector<epoch_result> epochs;
  std::size_t steps = 0;
  /// The epoch with the best validation accuracy (1-based; 0 without validation data).
  std::size_t best_epoch = 0;
  double best_validation_accuracy = std::numeric_limits<double>::quiet_NaN();
  bool stopped_early = false;
  bool restored_best = false;  ///< the parameters are those of best_epoch
};

struct fit_options {
  std::size_t epochs = 1;
  std::size_t batch_size = 64;
  /// Epoch e (0-based) shuffles and augments with seed·1000003 + e.
  std::uint32_t seed = 1;
  data::augmentation augment;
  /// The model parameters' learning rate (it is set on the optimizer every step).
  lr_schedule lr;
  /// Range learning: the learned ranges' base learning rate (same warm-up and decay shape).
  float encoding_lr = 1e-3f;
  /// At most this many batches per epoch (0: the whole data set) — for short runs.
  std::size_t max_steps_per_epoch = 0;
  /// Evaluated (top-1) after every epoch when set; needed by patience and restore_best.
  const data::dataset* validation = nullptr;
  /// Early stop after this many epochs without a better validation accuracy (0: never).
  std::size_t patience = 0;
  /// At the end, put back the parameters (and learned ranges) of the best validation epoch.
  bool restore_best = false;
  /// Progress bar on stderr (rewritten in place on a terminal, four lines an epoch in a log).
  bool verbose = false;
  std::function<void(const fit_progress&)> progress;
  std::function<void(const epoch_result&)> on_epoch;
};

namespace detail {

template <class T>
concept sim_trainable = requires(T& t, const tensor& x) {
  { t.forward(x) } -> std::convertible_to<tensor>;
  { t.backward(x) } -> std::convertible_to<tensor>;
  t.zero_grad();
  t.set_training(true);
  t.model();
};

template <class T>
concept has_encoding_parameters = requires(T& t) {
  t.for_each_encoding_parameter([](const std::string&, tensor&, tensor*) {});
};

template <class T>
void set_mode(T& t, bool training) {
  if constexpr (sim_trainable<T>) t.set_training(training);
  else set_training(t, training);
}

template <class T>
decltype(auto) trained_model(T& t) {
  if constexpr (sim_trainable<T>) return (t.model());
  else return (t);
}

// Every tensor a checkpoint keeps: parameters and running statistics, and learned ranges.
template <class T, class F>
void for_each_state(T& t, F&& f) {
  for_each_parameter(trained_model(t), [&](const std::string&, tensor& v, tensor*) { f(v); });
  if constexpr (has_encoding_parameters<T>)
    t.for_each_encoding_parameter([&](const std::string&, tensor& v, tensor*) { f(v); });
}

template <class T>
std::vector<tensor> save_state(T& t) {
  std::vector<tensor> s;
  for_each_state(t, [&](tensor& v) { s.push_back(v); });
  return s;
}

template <class T>
void load_state(T& t, const std::vector<tensor>& s) {
  std::size_t i = 0;
  for_each_state(t, [&](tensor& v) { v = s[i++]; });
  // Encodings that derive from what was put back follow it.
  if constexpr (requires { t.install_learned_ranges(); }) t.install_learned_ranges();
}

inline bool all_finite(const tensor& x) {
  for (float v : x)
    if (!std::isfinite(v)) return false;
  return true;
}

// The first layer whose output has a NaN or Inf on x ("" if none): forward again, watching.
struct nonfinite_watch : no_hooks {
  std::string* first;
  template <class L>
  void output(const L& layer, tensor& y) {
    if (first->empty() && !all_finite(y)) *first = layer_label(layer);
  }
};
struct nonfinite_observer {
  std::string* first;
  template <class Node, class L>
  void layer_output(const Node&, const L& layer, const tensor& before, const tensor&) {
    if (first->empty() && !all_finite(before)) *first = layer_label(layer);
  }
};
template <class T>
std::string first_nonfinite_layer(T& t, const tensor& x) {
  std::string first;
  if constexpr (sim_trainable<T>) {
    nonfinite_observer o{&first};
    (void)t.forward(x, o);
  } else {
    nonfinite_watch h;
    h.first = &first;
    (void)forward(t, x, h);
  }
  return first;
}

inline void print_fit_progress(const fit_progress& p, bool final_line) {
  constexpr int width = 24;
  const int filled = p.total ? int(double(width) * double(p.seen) / double(p.total)) : width;
  char line[256];
  std::snprintf(line, sizeof line,
                "epoch %zu/%zu [%s%s] %6zu/%zu  loss %.4f  acc %6.2f%%  lr %.3g  %5.0f img/s",
                p.epoch, p.epochs, std::string(std::size_t(filled), '=').c_str(),
                std::string(std::size_t(width - filled), ' ').c_str(), p.seen, p.total, p.loss,
                100.0 * p.accuracy, double(p.lr), p.images_per_second);
  io::progress_line(line, final_line);
}

}  // namespace detail

/// Trains `t` (a graph model or a QuantSim) on `train` with `opt` (nn::sgd, nn::adam) for
/// o.epochs, minimizing softmax cross-entropy. Errors: data without labels or an empty data set
/// (data_error), batch size 0 or patience / restore_best without validation data
/// (config_error); a loss that becomes NaN or Inf stops training with a training_error naming
/// the epoch, the step and the first layer whose output is not finite, and puts the parameters
/// back to where that epoch started. Leaves `t` in inference mode.
template <class Trainable, class Optimizer>
fit_result fit(Trainable& t, Optimizer& opt, const data::dataset& train, const fit_options& o = {}) {
  using clock = std::chrono::steady_clock;
  QKIT_PRECONDITION(!train.empty(), data_error, "fit: the training data set is empty");
  QKIT_PRECONDITION(train.has_labels(), data_error, "fit: the training data set has no labels");
  QKIT_PRECONDITION(o.batch_size > 0, config_error, "fit: the batch size is 0");
  QKIT_PRECONDITION(o.validation || (!o.patience && !o.restore_best), config_error,
                    "fit: patience and restore_best need validation data (fit_options::validation)");
  QKIT_PRECONDITION(!o.validation || (!o.validation->empty() && o.validation->has_labels()),
                    data_error, "fit: the validation data set is empty or has no labels");

  auto encoding_options = opt.options();
  encoding_options.weight_decay = 0.0f;
  Optimizer encoding_opt(encoding_options);

  const std::size_t N = train.size();
  std::size_t steps_per_epoch = (N + o.batch_size - 1) / o.batch_size;
  if (o.max_steps_per_epoch) steps_per_epoch = std::min(steps_per_epoch, o.max_steps_per_epoch);
  const std::size_t total_steps = steps_per_epoch * o.epochs;
  const tensor& samples = train.samples();
  const auto labels = train.labels();

  fit_result result;
  std::vector<tensor> best;
  std::size_t since_best = 0;
  std::size_t global = 0;
  for (std::size_t epoch = 0; epoch < o.epochs; ++epoch) {
    const std::vector<tensor> epoch_start = detail::save_state(t);
    detail::set_mode(t, true);
    std::vector<std::size_t> order(N);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::mt19937 rng(o.seed * 1000003u + std::uint32_t(epoch));
    std::shuffle(order.begin(), order.end(), rng);

    fit_progress p;
    p.epoch = epoch + 1;
    p.epochs = o.epochs;
    p.total = std::min(N, steps_per_epoch * o.batch_size);
    double loss_sum = 0.0;
    std::size_t correct = 0, next_line = 0;
    const auto start = clock::now();
    for (std::size_t s = 0; s < steps_per_epoch; ++s, ++global) {
      const std::size_t b = s * o.batch_size, e = std::min(N, b + o.batch_size);
      tensor x = data::gather_batch(samples, order, b, e, o.augment.any() ? &rng : nullptr,
                                    o.augment);
      const auto y = data::gather_labels(labels, order, b, e);
      const float lr = o.lr.at(global, total_steps);
      opt.set_lr(lr);
      cross_entropy_result r;
      if constexpr (detail::sim_trainable<Trainable>) {
        t.zero_grad();
        r = softmax_cross_entropy(t.forward(x), y);
      } else {
        zero_grad(t);
        r = softmax_cross_entropy(forward(t, x), y);
      }
      if (!std::isfinite(r.loss)) {
        std::string where = detail::first_nonfinite_layer(t, x);
        if (where.empty()) where = detail::all_finite(x) ? "none (the loss itself)" : "the input batch";
        detail::load_state(t, epoch_start);
        detail::set_mode(t, false);
        QKIT_THROW(training_error, "fit: the loss became ", r.loss, " at epoch ", epoch + 1,
                   " step ", s + 1, " (global step ", global + 1, "); first non-finite output: ",
                   where, ". The parameters are back to where epoch ", epoch + 1,
                   " started (lower the learning rate, now ", lr, ")");
      }
      if constexpr (detail::sim_trainable<Trainable>) {
        (void)t.backward(r.grad);
        opt.step(t.model());
        if constexpr (detail::has_encoding_parameters<Trainable>) {
          encoding_opt.set_lr(o.lr.base > 0 ? lr * (o.encoding_lr / o.lr.base) : o.encoding_lr);
          encoding_opt.step_each([&](auto&& f) { t.for_each_encoding_parameter(f); });
        }
      } else {
        (void)backward(t, r.grad);
        opt.step(t);
      }
      loss_sum += double(r.loss) * double(e - b);
      correct += r.correct;
      p.seen = e;
      p.step = global + 1;
      p.loss = loss_sum / double(e);
      p.accuracy = double(correct) / double(e);
      p.lr = lr;
      const double secs = std::chrono::duration<double>(clock::now() - start).count();
      p.images_per_second = secs > 0 ? double(e) / secs : 0.0;
      if (o.progress) o.progress(p);
      if (o.verbose) {
        const bool last = s + 1 == steps_per_epoch;
        if (io::stderr_is_terminal() || last || p.seen >= next_line) {
          detail::print_fit_progress(p, last);
          next_line = p.seen + p.total / 4;
        }
      }
    }
    detail::set_mode(t, false);

    epoch_result er;
    er.epoch = epoch + 1;
    er.loss = p.loss;
    er.accuracy = p.accuracy;
    if (o.validation) er.validation_accuracy = evaluate(t, *o.validation);
    er.seconds = std::chrono::duration<double>(clock::now() - start).count();
    result.epochs.push_back(er);
    result.steps = global;
    if (o.verbose && o.validation)
      std::fprintf(stderr, "epoch %zu/%zu: validation accuracy %.2f%% (%.1f s)\n", er.epoch,
                   o.epochs, 100.0 * er.validation_accuracy, er.seconds);
    if (o.on_epoch) o.on_epoch(er);
    if (o.validation) {
      if (!(er.validation_accuracy <= result.best_validation_accuracy)) {  // NaN at first
        result.best_validation_accuracy = er.validation_accuracy;
        result.best_epoch = er.epoch;
        since_best = 0;
        if (o.restore_best) best = detail::save_state(t);
      } else if (o.patience && ++since_best >= o.patience) {
        result.stopped_early = er.epoch < o.epochs;
        break;
      }
    }
  }
  if (o.restore_best && !best.empty()) {
    if (result.best_epoch != result.epochs.back().epoch) detail::load_state(t, best);
    result.restored_best = true;
  }
  return result;
}

}  // namespace qkit::nn
