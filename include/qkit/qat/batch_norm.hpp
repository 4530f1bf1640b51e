// qkit/qat/batch_norm.hpp — batch norms after QAT with batch norms live in the simulation
// (AIMET's advice for range learning with per-channel weights): re-estimating their running
// statistics on the quantized model (AIMET's reestimate_bn_stats), then folding them into the
// layers before them together with the weight encodings (fold_all_batch_norms_to_scale).
#pragma once

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../data/batch.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../nn/batch_norm.hpp"
#include "../nn/batch_norm_fold.hpp"
#include "../nn/graph.hpp"

namespace qkit::qat {

/// What reestimate_bn_stats replaced: restore() puts the old running statistics back (and is
/// a no-op after the first call). It points into the simulation's model, so it must not
/// outlive the simulation.
class bn_stats_handle {
 public:
  struct saved {
    nn::batch_norm* layer;
    tensor mean, var;
  };
  bn_stats_handle() = default;
  explicit bn_stats_handle(std::vector<saved> s) : saved_(std::move(s)) {}
  /// Names of the batch norms whose statistics were re-estimated, in forward order.
  std::vector<std::string> layers() const {
    std::vector<std::string> n;
    for (const auto& s : saved_) n.push_back(s.layer->name());
    return n;
  }
  void restore() {
    for (auto& s : saved_) {
      s.layer->running_mean() = s.mean;
      s.layer->running_var() = s.var;
    }
    saved_.clear();
  }

 private:
  std::vector<saved> saved_;
};

/// AIMET's BN re-estimation: every live (unfolded) batch norm of `sim`'s model gets as running
/// mean and variance the average over `num_batches` batches of `batch_size` samples of `data`
/// (in order) of the per-batch mean and (unbiased) variance it sees, with the batch norms in
/// training mode and everything else — quantizers included — in inference mode. Returns the
/// handle that restores the old statistics. Errors: no live batch norm (config_error: build the
/// QuantSim with batch_norm_mode::keep), no data (data_error), a batch the model rejects (the
/// statistics are then as they were).
template <class Sim>
bn_stats_handle reestimate_bn_stats(Sim& sim, const data::dataset& data,
                                    std::size_t num_batches = 100, std::size_t batch_size = 64) {
  QKIT_PRECONDITION(!data.empty() && num_batches > 0 && batch_size > 0, data_error,
                    "reestimate_bn_stats needs data: ",
                    data.empty() ? "the data set is empty"
                                 : (num_batches == 0 ? "num_batches is 0" : "batch_size is 0"));
  std::vector<bn_stats_handle::saved> saved;
  nn::visit_layers(sim.model(), [&](const std::string&, auto& leaf) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(leaf)>, nn::batch_norm>)
      if (!leaf.folded()) saved.push_back({&leaf, leaf.running_mean(), leaf.running_var()});
  });
  QKIT_PRECONDITION(!saved.empty(), config_error,
                    "reestimate_bn_stats: the simulation has no live batch norm (build the "
                    "QuantSim with batch_norm_mode::keep to keep them)");

  const bool was_training = sim.training();
  std::vector<float> momenta;
  for (auto& s : saved) momenta.push_back(s.layer->momentum());
  std::vector<std::vector<double>> mean_sum(saved.size()), var_sum(saved.size());
  for (std::size_t i = 0; i < saved.size(); ++i) {
    mean_sum[i].assign(saved[i].layer->channels(), 0.0);
    var_sum[i].assign(saved[i].layer->channels(), 0.0);
  }
  auto put_back = [&] {
    for (std::size_t i = 0; i < saved.size(); ++i) {
      saved[i].layer->running_mean() = saved[i].mean;
      saved[i].layer->running_var() = saved[i].var;
      saved[i].layer->set_momentum(momenta[i]);
    }
    sim.set_training(was_training);
  };
  std::size_t seen = 0;
  try {
    sim.set_training(false);
    for (auto& s : saved) {
      s.layer->set_training(true);
      // Momentum 1: after each batch the running statistics are that batch's.
      s.layer->set_momentum(1.0f);
    }
    for (const data::batch& b : data::batches(data, batch_size, num_batches * batch_size)) {
      (void)sim.forward(b.samples);
      for (std::size_t i = 0; i < saved.size(); ++i) {
        const auto& l = *saved[i].layer;
        for (std::size_t c = 0; c < l.channels(); ++c) {
          mean_sum[i][c] += l.running_mean()(c);
          var_sum[i][c] += l.running_var()(c);
        }
      }
      ++seen;
    }
  } catch (...) {
    put_back();
    throw;
  }
  for (std::size_t i = 0; i < saved.size(); ++i) {
    auto& l = *saved[i].layer;
    for (std::size_t c = 0; c < l.channels(); ++c) {
      l.running_mean()(c) = static_cast<float>(mean_sum[i][c] / double(seen));
      l.running_var()(c) = static_cast<float>(var_sum[i][c] / double(seen));
    }
    l.set_momentum(momenta[i]);
  }
  sim.set_training(was_training);
  return bn_stats_handle(std::move(saved));
}

/// AIMET's fold_all_batch_norms_to_scale: folds every live batch norm of `sim` into the conv or
/// linear before it, weights and weight-quantizer grid together (quantsim::
/// fold_batch_norms_to_scale says how). Returns the pairs folded.
template <class Sim>
std::vector<nn::batch_norm_fold> fold_all_batch_norms_to_scale(Sim& sim) {
  return sim.fold_batch_norms_to_scale();
}

}  // namespace qkit::qat
