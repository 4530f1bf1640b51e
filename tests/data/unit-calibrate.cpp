// qkit::calibrate: which samples reach the simulation, in which batches, and the encodings a
// real QuantSim gets from them, checked against AIMET's asymmetric min-max rule in closed form.
#include <doctest/doctest.h>

#include <cmath>
#include <vector>

#include <qkit/nn/nn.hpp>
#include <qkit/sim/calibrate.hpp>
#include <qkit/sim/quantsim.hpp>

namespace unit_calibrate {  // the suite is one translation unit: tests/CMakeLists.txt

using qkit::tensor;
using namespace qkit;

namespace {

// Stands in for a simulation: records every compute_encodings call and every forwarded batch.
struct recording_sim {
  std::size_t calibrations = 0;
  std::vector<std::vector<float>> batches;
  template <class Callback>
  void compute_encodings(Callback&& cb) {
    ++calibrations;
    cb(*this);
  }
  tensor forward(const tensor& x) {
    batches.emplace_back(x.begin(), x.end());
    return x;
  }
};

// N samples [1]: sample i is the value i.
data::dataset counting(std::size_t n) {
  tensor x = tensor::from_shape({n, 1});
  for (std::size_t i = 0; i < n; ++i) x(i, 0) = float(i);
  return data::dataset(x);
}

// AIMET's 8-bit asymmetric encoding of an observed [lo, hi] with lo < 0 < hi: scale
// (hi - lo) / 255, the grid slid so that zero is the integer round(-lo / scale).
struct grid {
  double min, max;
};
grid asymmetric8(double lo, double hi) {
  const double scale = (hi - lo) / 255.0;
  const double zero = std::round(-lo / scale);
  return {-zero * scale, -zero * scale + (hi - lo)};
}

}  // namespace

TEST_CASE("calibrate forwards the first n samples, in order, in batches, once") {
  recording_sim sim;
  calibrate(sim, counting(10), 7, 3);
  CHECK(sim.calibrations == 1);
  CHECK(sim.batches == std::vector<std::vector<float>>{{0, 1, 2}, {3, 4, 5}, {6}});

  recording_sim all;
  calibrate(all, counting(10), 1000);  // more than there are: all, at the default batch size
  CHECK(all.batches.size() == 1);
  CHECK(all.batches[0].size() == 10);

  recording_sim hundreds;
  calibrate(hundreds, counting(250), 250);
  REQUIRE(hundreds.batches.size() == 3);
  CHECK(hundreds.batches[0].size() == default_calibration_batch_size);
  CHECK(hundreds.batches[2].size() == 50);
}

TEST_CASE("calibrate: no data is an error that leaves the simulation untouched") {
  recording_sim sim;
  CHECK_THROWS_AS(calibrate(sim, data::dataset(), 10), calibration_error);
  CHECK_THROWS_WITH(calibrate(sim, data::dataset(), 10), doctest::Contains("empty"));
  CHECK_THROWS_AS(calibrate(sim, counting(4), 0), calibration_error);
  CHECK_THROWS_AS(calibrate(sim, counting(4), 4, 0), data_error);
  CHECK(sim.calibrations == 0);
}

TEST_CASE("calibrate a QuantSim: min-max encodings of exactly the first n samples") {
  // y = 2x: weight 2 is exact on its 8-bit symmetric grid (127 steps of 2/127).
  auto model = nn::sequential(nn::linear(1, 1));
  model.get<0>().weight().fill(2.0f);
  model.get<0>().bias().fill(0.0f);
  // The first 6 samples span [-1, 3]; the later ones go far beyond, to show they are unused.
  tensor x = tensor::from_shape({10, 1});
  const float values[] = {0.5f, -1.0f, 2.0f, 3.0f, 0.25f, 1.0f, 50.0f, -40.0f, 7.0f, -9.0f};
  for (std::size_t i = 0; i < 10; ++i) x(i, 0) = values[i];
  const data::dataset ds(x);

  quantsim<decltype(model), presets::w8a8> sim(model, data::first(ds, 1).samples());
  calibrate(sim, ds, 6, 4);
  const auto& in = sim.activation_quantizer("input").encodings().at(0);
  const auto& out = sim.activation_quantizer("0").encodings().at(0);
  REQUIRE_FALSE(in.symmetric);
  const grid gi = asymmetric8(-1.0, 3.0), go = asymmetric8(-2.0, 6.0);
  CHECK(in.min == doctest::Approx(gi.min).epsilon(1e-6));
  CHECK(in.max == doctest::Approx(gi.max).epsilon(1e-6));
  CHECK(out.min == doctest::Approx(go.min).epsilon(1e-6));
  CHECK(out.max == doctest::Approx(go.max).epsilon(1e-6));

  // All ten: the range the later samples add.
  calibrate(sim, ds, 10);
  const auto& in10 = sim.activation_quantizer("input").encodings().at(0);
  const grid g10 = asymmetric8(-40.0, 50.0);
  CHECK(in10.min == doctest::Approx(g10.min).epsilon(1e-6));
  CHECK(in10.max == doctest::Approx(g10.max).epsilon(1e-6));
}
}  // namespace unit_calibrate
