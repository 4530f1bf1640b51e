// nn::evaluate and nn::run_forward on hand-built models whose accuracy is known by
// construction: a linear layer whose weight is a permutation (its arg-max is a known function
// of the input's), a bias that forces one class, a batch norm whose training mode would change
// the predictions; the same through a `.forward` member, a callable and a custom metric.
#include <doctest/doctest.h>

#include <vector>

#include <qkit/nn/evaluate.hpp>
#include <qkit/nn/nn.hpp>

namespace unit_evaluate {  // the suite is one translation unit: tests/CMakeLists.txt

using qkit::tensor;
using namespace qkit;

namespace {

constexpr std::size_t K = 3;

// Sample i is 0.1 everywhere and 1 at peak[i]: its arg-max is peak[i].
tensor peaked(const std::vector<std::size_t>& peak) {
  tensor x = tensor::from_shape({peak.size(), K});
  x.fill(0.1f);
  for (std::size_t i = 0; i < peak.size(); ++i) x(i, peak[i]) = 1.0f;
  return x;
}

const std::vector<std::size_t> peaks{0, 1, 2, 2, 1, 0, 0, 1, 2, 1};

// linear(K, K) with weight row k = e_{(k+1) mod K}: output k is input (k+1) mod K, so the
// arg-max output is (peak - 1) mod K.
auto shifting_model() {
  auto m = nn::sequential(nn::linear(K, K));
  tensor& w = m.get<0>().weight();
  w.fill(0.0f);
  for (std::size_t k = 0; k < K; ++k) w(k, (k + 1) % K) = 1.0f;
  m.get<0>().bias().fill(0.0f);
  return m;
}

std::vector<data::label_type> shifted(const std::vector<std::size_t>& peak) {
  std::vector<data::label_type> l;
  for (auto p : peak) l.push_back(data::label_type((p + K - 1) % K));
  return l;
}

}  // namespace

TEST_CASE("evaluate: top-1 accuracy of a linear model is what its weights make it") {
  auto model = shifting_model();
  // Every label is the model's prediction: 100%, at any batch size.
  const data::dataset right(peaked(peaks), shifted(peaks));
  CHECK(nn::evaluate(model, right) == 1.0);
  CHECK(nn::evaluate(model, right, 3) == 1.0);
  CHECK(nn::evaluate(model, right, 1) == 1.0);

  // Labelled with the input's own peak instead: the model (a shift) gets none right.
  std::vector<data::label_type> own(peaks.begin(), peaks.end());
  CHECK(nn::evaluate(model, data::dataset(peaked(peaks), own), 4) == 0.0);

  // Three labels changed: 7 of 10.
  auto seven = shifted(peaks);
  for (std::size_t i : {1, 4, 8}) seven[i] = data::label_type((seven[i] + 1) % K);
  CHECK(nn::evaluate(model, data::dataset(peaked(peaks), seven), 4) == doctest::Approx(0.7));

  // A bias of 5 on class 2 outweighs every input: the model always says 2, so accuracy is
  // the share of labels that are 2 (3 of the 10: the samples peaked at 0).
  model.get<0>().bias()(2) = 5.0f;
  CHECK(nn::evaluate(model, right, 4) == doctest::Approx(3.0 / 10.0));
}

TEST_CASE("evaluate: ties go to the first class, as arg-max has it") {
  // Outputs equal to the inputs; sample 0 ties classes 0 and 1, sample 1 ties 1 and 2.
  tensor x = tensor::from_shape({2, K});
  x.fill(0.0f);
  x(0, 0) = x(0, 1) = 1.0f;
  x(1, 1) = x(1, 2) = 1.0f;
  const auto same = [](const tensor& t) { return t; };
  CHECK(nn::evaluate(same, data::dataset(x, std::vector<data::label_type>{0, 1})) == 1.0);
  CHECK(nn::evaluate(same, data::dataset(x, std::vector<data::label_type>{1, 2})) == 0.0);
}

TEST_CASE("evaluate runs a model in inference mode") {
  // Feature 0 is about 10 and dominates feature 1 (in [0, 0.7]) with the running statistics
  // (mean 0, variance 1): every sample is class 0. Batch statistics would standardize both
  // features and let feature 1 win for some samples.
  const std::size_t N = 8;
  tensor x = tensor::from_shape({N, 2});
  for (std::size_t i = 0; i < N; ++i) {
    x(i, 0) = 10.0f + 0.01f * float(i);
    x(i, 1) = 0.1f * float((3 * i) % N);
  }
  const data::dataset ds(x, std::vector<data::label_type>(N, 0));
  auto model = nn::sequential(nn::batch_norm(2));
  nn::set_training(model, true);
  {
    auto probe = model;  // the premise: in training mode the predictions differ
    CHECK(nn::evaluate([&](const tensor& t) { return nn::forward(probe, t); }, ds, N) < 1.0);
  }
  CHECK(nn::evaluate(model, ds, N) == 1.0);
  // Left in inference mode: the running statistics did not move.
  CHECK(model.get<0>().running_mean()(0) == 0.0f);
}

namespace {

// Stands in for a QuantSim: a `.forward(const tensor&)` member, counting calls.
struct member_forward {
  decltype(shifting_model()) model = shifting_model();
  std::vector<std::size_t> batch_sizes;
  tensor forward(const tensor& x) {
    batch_sizes.push_back(x.shape(0));
    return nn::forward(model, x);
  }
};

// A custom metric: mean absolute output, with the batches it saw.
struct mean_abs {
  double sum = 0.0;
  std::size_t count = 0;
  std::vector<std::size_t> firsts;
  void update(const tensor& y, const data::batch& b) {
    for (float v : y) sum += std::abs(v);
    count += y.size();
    firsts.push_back(b.first);
  }
  double result() const { return sum / double(count); }
};

}  // namespace

TEST_CASE("evaluate: a .forward member, a callable, a custom metric") {
  const data::dataset ds(peaked(peaks), shifted(peaks));
  member_forward sim;
  CHECK(nn::evaluate(sim, ds, 4) == 1.0);
  CHECK(sim.batch_sizes == std::vector<std::size_t>{4, 4, 2});

  auto model = shifting_model();
  CHECK(nn::evaluate([&](const tensor& t) { return nn::forward(model, t); }, ds) == 1.0);

  // Each output row is a permutation of its input row: 1 + 0.1 + 0.1 over 3 values.
  mean_abs m;
  const double v = nn::evaluate(model, ds, m, 3);
  CHECK(v == doctest::Approx(1.2 / 3.0));
  CHECK(m.firsts == std::vector<std::size_t>{0, 3, 6, 9});
  // Labels are not needed by a metric that does not read them.
  CHECK(nn::evaluate(model, data::dataset(peaked(peaks)), mean_abs{}) == doctest::Approx(0.4));
}

TEST_CASE("run_forward hands over each batch's outputs in order") {
  auto model = shifting_model();
  const data::dataset ds(peaked(peaks));
  const tensor whole = nn::forward(model, ds.samples());
  std::vector<float> joined;
  std::size_t next = 0;
  nn::run_forward(model, ds, [&](const tensor& y, const data::batch& b) {
    CHECK(b.first == next);
    CHECK(y.shape() == shape_type{b.size(), K});
    next += b.size();
    joined.insert(joined.end(), y.begin(), y.end());
  }, 4);
  CHECK(next == peaks.size());
  CHECK(std::equal(joined.begin(), joined.end(), whole.begin(), whole.end()));
}

TEST_CASE("evaluate: bad input is an error before or at the first batch") {
  auto model = shifting_model();
  CHECK_THROWS_AS(nn::evaluate(model, data::dataset()), data_error);
  CHECK_THROWS_WITH(nn::evaluate(model, data::dataset()), doctest::Contains("empty"));
  CHECK_THROWS_AS(nn::evaluate(model, data::dataset(peaked(peaks))), data_error);  // no labels
  CHECK_THROWS_AS(nn::evaluate(model, data::dataset(peaked(peaks), shifted(peaks)), 0), data_error);
  // A label the outputs have no class for.
  auto labels = shifted(peaks);
  labels[5] = 3;
  CHECK_THROWS_WITH(nn::evaluate(model, data::dataset(peaked(peaks), labels)),
                    doctest::Contains("label 3 of sample 5"));
  // Outputs that are not [B, classes].
  const auto flat = [](const tensor& t) { return tensor(tensor::from_shape({t.shape(0) * K})); };
  CHECK_THROWS_AS(nn::evaluate(flat, data::dataset(peaked(peaks), shifted(peaks))), shape_error);
}
}  // namespace unit_evaluate
