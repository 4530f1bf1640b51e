// Sequential MSE against independent truths: on one linear layer the range it picks never has
// a higher reconstruction loss than the min-max range, both losses worked out in the test from
// the symmetric grid formula; the chosen encoding is one of AIMET's candidates max·(i + 1)/N;
// layers over 4 bits are left alone; bad input leaves the simulation as it was.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include <qkit/nn/nn.hpp>
#include <qkit/ptq/sequential_mse.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>
#include <qkit/tensor/thread_pool.hpp>

#include "ptq_test_util.hpp"

namespace unit_sequential_mse {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using namespace qkit::nn;

namespace {

using ptq_test::normal_tensor;

// AIMET's symmetric grid of absmax at bw bits: delta = absmax / (2^(bw-1) - 1),
// integers [-2^(bw-1), 2^(bw-1) - 1], round half to even.
float symmetric_qdq(float w, double absmax, int bw) {
  const double half = std::ldexp(1.0, bw - 1);
  const float delta = float(absmax / (half - 1.0));
  const float q = std::clamp(std::nearbyint(w / delta), float(-half), float(half - 1.0));
  return q * delta;
}

}  // namespace

TEST_CASE("sequential MSE: the chosen ranges never reconstruct worse than min-max") {
  // Heavy-tailed weights (a few large ones per row) are where a clipped range wins.
  auto model = sequential(linear(32, 6));
  auto& L = model.get<0>();
  L.weight() = normal_tensor({6, 32}, 3, 0.2f);
  for (std::size_t o = 0; o < 6; ++o) L.weight()(o, o) = 1.5f + 0.3f * float(o);
  for (auto& v : L.bias()) v = 0.0f;
  const tensor x = normal_tensor({256, 32}, 4);
  const data::dataset ds(x);
  // AIMET's per-channel config quantizes Gemm per tensor; per channel here.
  sim_config cfg = presets::w4a8_per_channel::default_config();
  cfg.op_type["Gemm"].per_channel_quantization = true;
  quantsim<decltype(model), presets::w4a8_per_channel> sim(model, data::first(ds, 1).samples(), cfg);
  ptq::sequential_mse_options o;
  o.num_batches = 8;
  o.batch_size = 32;
  o.calibration_samples = 256;
  const auto report = ptq::apply_sequential_mse(sim, ds, o);
  REQUIRE(report.layers.size() == 1);
  MESSAGE(report.summary());
  const auto& encs = sim.param_quantizer("0.weight").encodings();
  REQUIRE(encs.size() == 6);
  CHECK(sim.param_quantizer("0.weight").frozen());

  const auto& W = L.weight();
  bool clipped = false;
  for (std::size_t o2 = 0; o2 < 6; ++o2) {
    double absmax = 0.0;
    for (std::size_t i = 0; i < 32; ++i) absmax = std::max(absmax, double(std::fabs(W(o2, i))));
    // The chosen encoding is a candidate absmax·(k + 1)/20 on the 4-bit symmetric grid.
    const double k = encs[o2].scale * 7.0 / absmax * 20.0;
    CHECK(std::fabs(k - std::nearbyint(k)) < 1e-4);
    clipped |= std::nearbyint(k) < 20.0;
    // Its output error, worked here, is at most min-max's.
    auto loss = [&](double range) {
      double s = 0.0;
      for (std::size_t n = 0; n < 256; ++n) {
        double d = 0.0;
        for (std::size_t i = 0; i < 32; ++i)
          d += double(symmetric_qdq(W(o2, i), range, 4) - W(o2, i)) * x(n, i);
        s += d * d;
      }
      return s / 256.0;
    };
    const double chosen = loss(encs[o2].scale * 7.0), minmax = loss(absmax);
    CAPTURE(o2);
    CHECK(chosen <= minmax * (1.0 + 1e-9));
    CHECK(report.layers[0].candidate_losses[o2].back() == doctest::Approx(minmax).epsilon(1e-3));
    CHECK(report.layers[0].candidate_losses[o2][report.layers[0].chosen[o2]] ==
          doctest::Approx(chosen).epsilon(1e-3));
  }
  CHECK(clipped);  // the outliers make some channel prefer a clipped range
  CHECK(report.layers[0].chosen_loss <= report.layers[0].minmax_loss);
}

TEST_CASE("sequential MSE: every loss and input symmetry picks no worse than min-max") {
  auto model = sequential(conv2d(3, 8, 3, {.padding = 1}), relu(), conv2d(8, 4, 1));
  std::mt19937 rng(7);
  model.get<0>().reset_parameters(rng);
  model.get<2>().reset_parameters(rng);
  const data::dataset ds(normal_tensor({96, 3, 6, 6}, 8));
  for (auto loss : {ptq::reconstruction_loss::mse, ptq::reconstruction_loss::l1,
                    ptq::reconstruction_loss::sqnr})
    for (auto sym : {ptq::input_symmetry::symqt, ptq::input_symmetry::asym,
                     ptq::input_symmetry::symfp}) {
      quantsim<decltype(model), presets::w4a8> sim(model, data::first(ds, 1).samples());
      ptq::sequential_mse_options o;
      o.num_batches = 3;
      o.loss = loss;
      o.inputs = sym;
      o.calibration_samples = 96;
      const auto report = ptq::apply_sequential_mse(sim, ds, o);
      REQUIRE(report.layers.size() == 2);
      for (const auto& l : report.layers) {
        CHECK(l.chosen_loss <= l.minmax_loss);
        CHECK(l.candidate_losses.size() == 1);  // per-tensor: one choice for the tensor
      }
    }
}

TEST_CASE("sequential MSE: weights over 4 bits are left to the range setter") {
  auto model = sequential(linear(8, 4));
  const data::dataset ds(normal_tensor({64, 8}, 9));
  quantsim<decltype(model), presets::w8a8> sim(model, data::first(ds, 1).samples());
  const auto report = ptq::apply_sequential_mse(sim, ds);
  CHECK(report.layers.empty());
  CHECK(report.skipped == std::vector<std::string>{"0"});
  CHECK_FALSE(sim.param_quantizer("0.weight").frozen());
}

TEST_CASE("sequential MSE: bad input is refused and leaves the simulation as it was") {
  auto model = sequential(conv2d(3, 8, 3, {.padding = 1}), relu(), conv2d(8, 4, 1));
  std::mt19937 rng(9);
  model.get<0>().reset_parameters(rng);
  model.get<2>().reset_parameters(rng);
  const data::dataset ds(normal_tensor({64, 3, 6, 6}, 10));
  quantsim<decltype(model), presets::w4a8_per_channel> sim(model, data::first(ds, 1).samples());
  calibrate(sim, ds, 64, 32);
  const std::string before = sim.summary();
  CHECK_THROWS_AS(ptq::apply_sequential_mse(sim, data::dataset()), calibration_error);
  ptq::sequential_mse_options o;
  o.layers_to_ignore = {"1"};
  CHECK_THROWS_WITH_AS(ptq::apply_sequential_mse(sim, ds, o), doctest::Contains("not a conv"),
                       config_error);
  tensor bad = ds.samples();
  bad(3, 0, 0, 0) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(ptq::apply_sequential_mse(sim, data::dataset(bad)),
                       doctest::Contains("sample 3"), calibration_error);
  CHECK(sim.summary() == before);
}

TEST_CASE("sequential MSE: the same encodings with 1 and 2 threads and again") {
  const data::dataset ds(normal_tensor({128, 3, 8, 8}, 12));
  auto run = [&](std::size_t threads) {
    set_num_threads(threads);
    auto model = sequential(conv2d(3, 16, 3, {.padding = 1}), relu(), conv2d(16, 8, 1));
    std::mt19937 rng(13);
    model.get<0>().reset_parameters(rng);
    model.get<2>().reset_parameters(rng);
    quantsim<decltype(model), presets::w4a8_per_channel> sim(model, data::first(ds, 1).samples());
    ptq::sequential_mse_options o;
    o.num_batches = 4;
    o.calibration_samples = 128;
    (void)ptq::apply_sequential_mse(sim, ds, o);
    return sim.encodings();
  };
  const auto one = run(1), two = run(2), again = run(2);
  set_num_threads(2);
  CHECK(one.param_encodings == two.param_encodings);
  CHECK(one.activation_encodings == two.activation_encodings);
  CHECK(two.param_encodings == again.param_encodings);
}
}  // namespace unit_sequential_mse
