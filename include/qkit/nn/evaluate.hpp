// qkit/nn/evaluate.hpp — runs something that maps a batch to outputs over a data set, batch by
// batch, and scores the outputs: top-1 accuracy, or any metric. That something is a model of
// the layer graph (run in inference mode), anything with a `.forward(const tensor&)` member
// (a QuantSim), or a callable tensor(const tensor&).
#pragma once

#include <concepts>
#include <cstddef>
#include <functional>
#include <type_traits>
#include <utility>

#include "../config.hpp"
#include "../data/batch.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"
#include "graph.hpp"
#include "layer.hpp"
#include "loss.hpp"

namespace qkit::nn {

/// Batch size evaluate() and run_forward() use unless told otherwise.
inline constexpr std::size_t default_eval_batch_size = 500;

namespace detail {
template <class M>
concept graph_model = is_composite_v<M> || leaf_layer<std::remove_cvref_t<M>>;
template <class F>
concept has_forward_member = requires(F& f, const tensor& x) {
  { f.forward(x) } -> std::convertible_to<tensor>;
};
template <class F>
concept forward_callable = std::is_invocable_r_v<tensor, F&, const tensor&>;
}  // namespace detail

/// What evaluate() and run_forward() can run: a model, something with `.forward(x)`, or a
/// callable. A model is tried first, then the member, then the call.
template <class R>
concept runnable =
    detail::graph_model<R> || detail::has_forward_member<R> || detail::forward_callable<R>;

/// A metric sees every batch's outputs beside the batch (samples, labels, position) and then
/// gives its score.
template <class M>
concept metric = requires(M& m, const tensor& outputs, const data::batch& b) {
  m.update(outputs, b);
  m.result();
};

/// Top-1 accuracy over outputs [B, classes]: the fraction of samples whose largest output
/// (the first one on ties) is at their label.
class top1_accuracy {
 public:
  void update(const tensor& outputs, const data::batch& b) {
    QKIT_PRECONDITION(outputs.dimension() == 2 && outputs.shape(0) == b.size(), shape_error,
                      "top1_accuracy: outputs have shape ", shape_string(outputs.shape()),
                      " for a batch of ", b.size(), ", expected [", b.size(), ", classes]");
    QKIT_PRECONDITION(b.labels.size() == b.size(), data_error,
                      "top1_accuracy: the data set has no labels");
    const std::size_t classes = outputs.shape(1);
    for (std::size_t i = 0; i < b.size(); ++i) {
      QKIT_PRECONDITION(std::size_t(b.labels[i]) < classes, data_error, "top1_accuracy: label ",
                        b.labels[i], " of sample ", b.first + i, " is not one of the ", classes,
                        " classes the outputs have");
      correct_ += argmax_row(outputs, i) == std::size_t(b.labels[i]);
    }
    seen_ += b.size();
  }
  double result() const {
    QKIT_PRECONDITION(seen_ > 0, data_error, "top1_accuracy: no samples seen");
    return double(correct_) / double(seen_);
  }
  std::size_t correct() const { return correct_; }
  std::size_t seen() const { return seen_; }

 private:
  std::size_t correct_ = 0, seen_ = 0;
};

/// Runs `r` on every batch of `ds` in order and calls on_output(outputs, batch). A model is
/// switched to inference mode first (and left in it).
template <class R, class OnOutput>
  requires runnable<R> && std::invocable<OnOutput&, const tensor&, const data::batch&>
void run_forward(R&& r, const data::dataset& ds, OnOutput&& on_output,
                 std::size_t batch_size = default_eval_batch_size) {
  const auto range = data::batches(ds, batch_size);
  if constexpr (detail::graph_model<R>) set_training(r, false);
  for (const data::batch& b : range) {
    const tensor y = [&]() -> tensor {
      if constexpr (detail::graph_model<R>) return forward(r, b.samples);
      else if constexpr (detail::has_forward_member<R>) return r.forward(b.samples);
      else return std::invoke(r, b.samples);
    }();
    on_output(y, b);
  }
}

/// `m`'s score of `r`'s outputs over all of `ds` (which must not be empty). `m` is taken by
/// reference when passed as an lvalue, so it can be read afterwards too.
template <class R, metric M>
  requires runnable<R>
auto evaluate(R&& r, const data::dataset& ds, M&& m,
              std::size_t batch_size = default_eval_batch_size) {
  QKIT_PRECONDITION(!ds.empty(), data_error, "evaluate: the data set is empty");
  run_forward(r, ds, [&](const tensor& y, const data::batch& b) { m.update(y, b); }, batch_size);
  return m.result();
}

/// Top-1 accuracy of `r` over `ds`, which needs labels and at least one sample.
template <class R>
  requires runnable<R>
double evaluate(R&& r, const data::dataset& ds,
                std::size_t batch_size = default_eval_batch_size) {
  QKIT_PRECONDITION(ds.has_labels() || ds.empty(), data_error,
                    "evaluate: top-1 accuracy needs labels and the data set has none");
  top1_accuracy acc;
  return evaluate(r, ds, acc, batch_size);
}

}  // namespace qkit::nn
