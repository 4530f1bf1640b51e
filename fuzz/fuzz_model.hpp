// fuzz/fuzz_model.hpp — the small model and calibrated QuantSim that the encodings target loads
// into and make_seeds exports its seed encodings from, so the seeds name its quantizers.
#pragma once

#include <qkit/nn/activation.hpp>
#include <qkit/nn/conv2d.hpp>
#include <qkit/nn/flatten.hpp>
#include <qkit/nn/linear.hpp>
#include <qkit/nn/pooling.hpp>
#include <qkit/sim/quantsim.hpp>

namespace qkit_fuzz {

inline auto sim_model() {
  using namespace qkit::nn;
  return sequential(conv2d(1, 2, 2), relu{}, global_avg_pool{}, flatten{}, linear(2, 3));
}

inline qkit::tensor sim_input() {
  qkit::tensor x(qkit::shape_type{2, 1, 3, 3});
  for (std::size_t i = 0; i < x.size(); ++i) x.data()[i] = static_cast<float>(i) / 8.0f - 1.0f;
  return x;
}

inline auto calibrated_sim() {
  static const auto model = sim_model();
  qkit::quantsim sim(model, sim_input());
  sim.compute_encodings([](auto& s) { (void)s.forward(sim_input()); });
  return sim;
}

}  // namespace qkit_fuzz
