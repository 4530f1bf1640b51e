// qkit/sim/calibrate.hpp — calibration from a data set: computes a simulation's encodings by
// forwarding the data set's first samples in batches, the forward-pass callback AIMET's users
// write by hand. Generic over the simulation: anything with compute_encodings(callback) whose
// callback gets the simulation to call forward(const tensor&) on.
#pragma once

#include <cstddef>

#include "../config.hpp"
#include "../data/batch.hpp"
#include "../data/dataset.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"

namespace qkit {

/// Batch size calibrate() forwards unless told otherwise.
inline constexpr std::size_t default_calibration_batch_size = 100;

/// sim.compute_encodings over the first min(n_samples, ds.size()) samples of `ds`, in
/// order, in batches of `batch_size`. No data (an empty data set, n_samples 0) and a batch size
/// of 0 are errors raised before the simulation is touched.
template <class Sim>
void calibrate(Sim& sim, const data::dataset& ds, std::size_t n_samples,
               std::size_t batch_size = default_calibration_batch_size) {
  QKIT_PRECONDITION(!ds.empty(), calibration_error, "calibrate: the data set is empty");
  QKIT_PRECONDITION(n_samples > 0, calibration_error, "calibrate: n_samples is 0");
  const auto range = data::batches(ds, batch_size, n_samples);
  sim.compute_encodings([&](auto& s) {
    for (const data::batch& b : range) (void)s.forward(b.samples);
  });
}

}  // namespace qkit
