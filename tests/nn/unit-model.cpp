// Tests for the Fashion-MNIST MobileNet of examples/models (the model the example trains and
// QuantSim later simulates): its names and structure, folding it, and a few training steps on
// real Fashion-MNIST images lowering the loss.
#include <doctest/doctest.h>

#include <filesystem>
#include <numeric>
#include <string>
#include <vector>

#include <qkit/io/idx.hpp>
#include <qkit/nn/nn.hpp>
#include <qkit/nn/batch_norm_fold.hpp>

#include "../../examples/models/fashion_mobilenet.hpp"
#include "../../examples/models/training.hpp"
#include "gradient_check.hpp"

namespace unit_model {  // the suite is one translation unit: tests/CMakeLists.txt

using qkit::tensor;

TEST_CASE("fashion MobileNet: names, structure and size") {
  auto model = fashion::make_model();
  std::vector<std::string> names;
  std::vector<std::string> ops;
  qkit::nn::visit_layers(model, [&](const std::string& n, auto& leaf) {
    names.push_back(n);
    ops.emplace_back(std::remove_cvref_t<decltype(leaf)>::op_type);
  });
  CHECK(names.front() == "features.0.conv");
  CHECK(names[1] == "features.0.bn");
  CHECK(names[2] == "features.0.act");
  CHECK(names[3] == "features.1.dw.conv");
  CHECK(std::find(names.begin(), names.end(), "features.2.project.bn") != names.end());
  CHECK(std::find(names.begin(), names.end(), "features.2.add") != names.end());
  CHECK(std::find(names.begin(), names.end(), "features.4.add") != names.end());
  CHECK(names.back() == "classifier");
  CHECK(std::count(ops.begin(), ops.end(), "Add") == 2);
  CHECK(std::count(ops.begin(), ops.end(), "Conv") == 11);
  CHECK(qkit::nn::parameter_count(model) == 27274);
  qkit::nn::init_parameters(model, 1);
  std::mt19937 rng(1);
  CHECK(qkit::nn::forward(model, qkit_test::random_tensor({2, 1, 28, 28}, rng)).shape() ==
        qkit::shape_type{2, 10});
}

TEST_CASE("fashion MobileNet: every batch norm folds and the output is unchanged") {
  auto model = fashion::make_model();
  qkit::nn::init_parameters(model, 2);
  // Train-mode passes give the batch norms real running statistics.
  std::mt19937 rng(2);
  qkit::nn::set_training(model, true);
  for (int i = 0; i < 3; ++i) (void)qkit::nn::forward(model, qkit_test::random_tensor({8, 1, 28, 28}, rng));
  qkit::nn::set_training(model, false);
  const tensor x = qkit_test::random_tensor({4, 1, 28, 28}, rng);
  const tensor before = qkit::nn::forward(model, x);
  CHECK(qkit::nn::unfoldable_batch_norms(model).empty());
  const auto folded = qkit::nn::fold_batch_norms(model);
  CHECK(folded.size() == 11);
  CHECK(folded.front() == qkit::nn::batch_norm_fold{"features.0.conv", "features.0.bn"});
  const tensor after = qkit::nn::forward(model, x);
  double max_rel = 0.0, max_abs = 0.0;
  for (std::size_t i = 0; i < before.size(); ++i) {
    max_abs = std::max(max_abs, double(std::abs(before.data()[i])));
    max_rel = std::max(max_rel, double(std::abs(after.data()[i] - before.data()[i])));
  }
  CHECK(max_rel <= 1e-5 * std::max(1.0, max_abs) * 10);
}

TEST_CASE("fashion MobileNet: training steps on real images lower the loss") {
  const std::string dir = QKIT_FASHION_MNIST;
  // scripts/deps.sh installs the data set (Debian's dataset-fashion-mnist); a missing one is a
  // failure, not a skip, so that a broken install cannot pass as green.
  REQUIRE_MESSAGE(std::filesystem::exists(std::filesystem::path(dir) / "train-images-idx3-ubyte.gz"),
                  "Fashion-MNIST not installed in " << dir << " (scripts/deps.sh installs it)");
  auto raw = qkit::io::load_fashion_mnist(dir, true, 512);
  fashion::normalize(raw.images, fashion::pixel_mean, fashion::pixel_std);
  const qkit::data::dataset data(std::move(raw.images), raw.labels);
  auto model = fashion::make_model();
  qkit::nn::init_parameters(model, 3);
  qkit::nn::sgd opt({.lr = 0.05f, .momentum = 0.9f});
  qkit::nn::fit_options o;
  o.epochs = 4;
  o.seed = 0;
  o.lr = {.base = 0.05f, .cosine = false};
  std::vector<double> losses;
  o.on_epoch = [&](const qkit::nn::epoch_result& e) { losses.push_back(e.loss); };
  (void)qkit::nn::fit(model, opt, data, o);
  CHECK(losses.back() < 0.8 * losses.front());
  const double acc = qkit::nn::evaluate(model, data, 128);
  CHECK(acc > 0.5);
}
}  // namespace unit_model
