// Training still works: the example's recipe (examples/models/training.hpp, the one that made
// the committed weights) trains the Fashion-MNIST MobileNet from scratch for one epoch over the
// 60,000 training images (as `fashion_mnist --epochs 1`: 84.95%, about 25 s on two idle cores)
// and must lift its test accuracy from chance to where only a trained model gets. The full
// 12-epoch run is the example's (tests/fashion/data/README.md gives its figures).
#include <doctest/doctest.h>

#include <chrono>

#include <qkit/data/dataset.hpp>
#include <qkit/io/idx.hpp>
#include <qkit/nn/evaluate.hpp>
#include <qkit/nn/nn.hpp>

#include "../../examples/models/fashion_mobilenet.hpp"
#include "../../examples/models/training.hpp"

#if QKIT_FASHION_ACCURACY_STUDIES  // compiled out in the sanitizer build (fixtures.cmake)
namespace unit_fashion_training {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;

namespace {

// A split, normalized as the example does.
data::dataset load_split(bool train) {
  auto d = io::load_fashion_mnist(QKIT_FASHION_MNIST, train);
  fashion::normalize(d.images, fashion::pixel_mean, fashion::pixel_std);
  return data::dataset(std::move(d.images), d.labels);
}

}  // namespace

TEST_CASE("training: one epoch of the example's recipe reaches 80% test accuracy") {
  const data::dataset train = load_split(true);
  const data::dataset test = load_split(false);
  fashion::train_recipe recipe;
  recipe.epochs = 1;
  recipe.seed = 1;
  recipe.augment.fill = (0.0f - fashion::pixel_mean) / fashion::pixel_std;

  // The premise: the model as training starts from it (same seed) is at chance.
  auto model = fashion::make_model();
  nn::init_parameters(model, recipe.seed);
  const double untrained = nn::evaluate(model, test);
  CHECK(untrained < 0.2);

  const auto t0 = std::chrono::steady_clock::now();
  fashion::train(model, train, recipe);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double trained = nn::evaluate(model, test);
  MESSAGE("one epoch on " << train.size() << " images in " << secs << " s: test accuracy "
                          << 100.0 * untrained << "% -> " << 100.0 * trained << "%");
  CHECK(trained >= 0.80);
}
}  // namespace unit_fashion_training
#endif  // QKIT_FASHION_ACCURACY_STUDIES
