// Tests for qkit/nn/graph.hpp and what builds on it: hierarchical names, visitor order, the
// structural visit, parameters by name, hooks, training mode, gradient checks through
// sequential + residual compositions, thread-count independence, batch-norm folding,
// optimizers and .npz weight files.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <qkit/nn/nn.hpp>
#include <qkit/nn/batch_norm_fold.hpp>

#include "gradient_check.hpp"

namespace unit_graph {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit::nn;
using qkit::tensor;
using qkit_test::random_tensor;

namespace {

auto small_net() {
  return sequential(
      named("features",
            sequential(conv2d(2, 4, 3, {.padding = 1}), batch_norm(4), relu6{},
                       residual(sequential(conv2d(4, 4, 3, {.padding = 1, .groups = 4, .bias = false}),
                                           batch_norm(4), relu{}, conv2d(4, 4, 1), batch_norm(4))),
                       max_pool(2, 2))),
      global_avg_pool{}, flatten{}, named("classifier", linear(4, 3)));
}

/// Non-trivial batch-norm statistics, so folding and inference mode are really exercised.
template <class Model>
void randomize_batch_norms(Model& m, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-0.5f, 0.5f), v(0.5f, 2.0f);
  visit_layers(m, [&](const std::string&, auto& leaf) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(leaf)>, batch_norm>) {
      for (auto& e : leaf.weight()) e = 1.0f + d(rng);
      for (auto& e : leaf.bias()) e = d(rng);
      for (auto& e : leaf.running_mean()) e = d(rng);
      for (auto& e : leaf.running_var()) e = v(rng);
    }
  });
}

bool same_bits(const tensor& a, const tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Records every hook call, and scales one layer's output to show hooks can change it.
struct recording_hooks : no_hooks {
  std::vector<std::string> events;
  std::string scale_output_of;
  template <class L>
  const tensor& param(const L& l, std::string_view p, const tensor& v) {
    events.push_back("param " + l.name() + "." + std::string(p));
    return v;
  }
  template <class L>
  void output(const L& l, tensor& y) {
    events.push_back("output " + l.name() + " " + std::string(L::op_type));
    if (l.name() == scale_output_of) y *= 0.0f;
  }
  template <class L>
  void output_grad(const L& l, tensor&) {
    events.push_back("output_grad " + l.name());
  }
  template <class L>
  void param_grad(const L& l, std::string_view p, tensor&) {
    events.push_back("param_grad " + l.name() + "." + std::string(p));
  }
};

struct structure_recorder {
  std::vector<std::string> events;
  template <class L>
  void leaf(const std::string& name, L&) {
    events.push_back(std::string(L::op_type) + " " + name);
  }
  void residual_begin(const std::string& name) { events.push_back("begin " + name); }
  void residual_end(const std::string& name) { events.push_back("end " + name); }
};

}  // namespace

TEST_CASE("names are hierarchical, assigned once and visited in execution order") {
  auto net = small_net();
  std::vector<std::string> names;
  visit_layers(net, [&](const std::string& name, auto& leaf) {
    CHECK(name == leaf.name());
    names.push_back(name);
  });
  const std::vector<std::string> want{
      "features.0",   "features.1",   "features.2",     "features.3.0", "features.3.1",
      "features.3.2", "features.3.3", "features.3.4",   "features.3.add", "features.4",
      "1",            "2",            "classifier"};
  CHECK(names == want);

  // A copy keeps the names; wrapping a model renames it under the wrapper.
  auto copy = net;
  CHECK(copy.get<0>().get<3>().add_layer().name() == "features.3.add");
  auto wrapped = sequential(linear(2, 2), std::move(copy));
  CHECK(wrapped.get<1>().get<3>().name() == "1.classifier");
  CHECK(net.get<3>().name() == "classifier");
  CHECK_THROWS_AS(named("a.b", relu{}), qkit::config_error);
}

TEST_CASE("structural visit reports residual begin and end around the body and its add") {
  auto net = small_net();
  structure_recorder r;
  visit_structure(net, r);
  const std::vector<std::string> want{
      "Conv features.0", "BatchNormalization features.1", "Clip features.2", "begin features.3",
      "Conv features.3.0", "BatchNormalization features.3.1", "Relu features.3.2",
      "Conv features.3.3", "BatchNormalization features.3.4", "Add features.3.add",
      "end features.3", "MaxPool features.4", "GlobalAveragePool 1", "Flatten 2",
      "Gemm classifier"};
  CHECK(r.events == want);
}

TEST_CASE("parameters by name, gradients, zero_grad") {
  auto net = small_net();
  std::vector<std::string> names;
  std::size_t stateful = 0;
  for_each_parameter(net, [&](const std::string& n, tensor&, tensor* g) {
    names.push_back(n);
    if (!g) ++stateful;
  });
  CHECK(names.front() == "features.0.weight");
  CHECK(names[1] == "features.0.bias");
  CHECK(names[2] == "features.1.weight");
  CHECK(names[4] == "features.1.running_mean");
  CHECK(names[6] == "features.3.0.weight");  // the depthwise conv has no bias
  CHECK(names[7] == "features.3.1.weight");
  CHECK(names.back() == "classifier.bias");
  CHECK(stateful == 6);
  tensor* w = find_parameter(net, "features.3.3.weight");
  REQUIRE(w != nullptr);
  CHECK(w->shape() == qkit::shape_type{4, 4, 1, 1});
  CHECK(w == &net.get<0>().get<3>().body().get<3>().weight());
  CHECK(find_parameter(net, "features.3.0.bias") == nullptr);
  CHECK(find_gradient(net, "features.1.running_var") == nullptr);
  CHECK(find_gradient(net, "classifier.weight") == &net.get<3>().weight_grad());
  CHECK(parameter_count(net) == (2 * 9 * 4 + 4) + 8 + (4 * 9) + 8 + (16 + 4) + 8 + (12 + 3));

  init_parameters(net, 1);
  set_training(net, true);
  std::mt19937 rng(2);
  const tensor x = random_tensor({2, 2, 6, 6}, rng);
  (void)forward(net, x);
  (void)backward(net, random_tensor({2, 3}, rng));
  const tensor g1 = net.get<3>().weight_grad();
  (void)forward(net, x);
  (void)backward(net, random_tensor({2, 3}, rng));
  CHECK_FALSE(same_bits(g1, net.get<3>().weight_grad()));  // accumulated
  zero_grad(net);
  for_each_parameter(net, [&](const std::string&, tensor& v, tensor* g) {
    if (g) {
      CHECK(g->shape() == v.shape());
      CHECK(std::all_of(g->begin(), g->end(), [](float e) { return e == 0.0f; }));
    }
  });
}

TEST_CASE("init_parameters is seeded and Kaiming-scaled") {
  auto a = small_net(), b = small_net();
  init_parameters(a, 7);
  init_parameters(b, 7);
  CHECK(same_bits(*find_parameter(a, "features.0.weight"), *find_parameter(b, "features.0.weight")));
  init_parameters(b, 8);
  CHECK_FALSE(same_bits(*find_parameter(a, "features.0.weight"), *find_parameter(b, "features.0.weight")));
  conv2d big(64, 64, 3);
  std::mt19937 rng(1);
  big.reset_parameters(rng);
  double ss = 0;
  for (float v : big.weight()) ss += double(v) * v;
  CHECK(ss / double(big.weight().size()) == doctest::Approx(2.0 / (64 * 9)).epsilon(0.05));
}

TEST_CASE("gradient check through sequential + residual compositions") {
  auto net = small_net();
  init_parameters(net, 3);
  randomize_batch_norms(net, 4);
  std::mt19937 rng(5);
  const tensor x = random_tensor({3, 2, 6, 6}, rng);
  for (bool training : {false, true}) {
    CAPTURE(training);
    set_training(net, training);
    qkit_test::gradient_check_options o;
    o.eps = 1e-3f;
    o.max_checks_per_tensor = 24;
    auto rep = qkit_test::check_gradients(net, x, o);
    INFO(rep.failure_text);
    CHECK(rep.failures == 0);
    CHECK(rep.checked > 100);
    CHECK(rep.kinks_skipped * 5 <= rep.checked);
  }
  // A bare residual around a leaf: d(x + f(x))/dx.
  auto res = residual(linear(5, 5));
  init_parameters(res, 9);
  auto rep = qkit_test::check_gradients(res, random_tensor({2, 5}, rng));
  CHECK(rep.failures == 0);
  CHECK(res.add_layer().name() == "add");
  CHECK(res.body().name() == "");
}

TEST_CASE("hooks see parameters, outputs, output gradients and parameter gradients in order") {
  recording_hooks h;
  std::mt19937 rng(1);
  auto net2 = sequential(linear(3, 2), relu{}, residual(sequential(linear(2, 2))));
  init_parameters(net2, 1);
  const tensor y = forward(net2, random_tensor({2, 3}, rng), h);
  (void)backward(net2, tensor(y), h);
  const std::vector<std::string> want{
      "param 0.weight", "param 0.bias", "output 0 Gemm", "output 1 Relu",
      "param 2.0.weight", "param 2.0.bias", "output 2.0 Gemm", "output 2.add Add",
      "output_grad 2.add", "output_grad 2.0", "param_grad 2.0.weight", "param_grad 2.0.bias",
      "output_grad 1", "output_grad 0", "param_grad 0.weight", "param_grad 0.bias"};
  CHECK(h.events == want);

  // An output hook changes what flows on: zeroing the relu zeroes the residual's input.
  recording_hooks zero;
  zero.scale_output_of = "1";
  const tensor x3 = random_tensor({2, 3}, rng);
  const tensor z = forward(net2, x3, zero);
  auto& inner = net2.get<2>().body().get<0>();
  for (std::size_t n = 0; n < 2; ++n)
    for (std::size_t j = 0; j < 2; ++j) CHECK(z(n, j) == doctest::Approx(inner.bias()(j)));
}

TEST_CASE("shape errors inside a model name the hierarchical layer and both shapes") {
  auto net = sequential(named("features", sequential(conv2d(1, 4, 3), residual(sequential(conv2d(3, 4, 1))))));
  std::mt19937 rng(1);
  CHECK_THROWS_WITH_AS((void)forward(net, random_tensor({1, 1, 5, 5}, rng)),
                       doctest::Contains("Conv 'features.1.0': input has shape [1, 4, 3, 3], expected [*, 3, *, *]"),
                       qkit::shape_error);
  auto mismatch = residual(conv2d(2, 2, 3));  // no padding: the body shrinks the image
  mismatch.add_layer();
  CHECK_THROWS_WITH_AS((void)forward(mismatch, random_tensor({1, 2, 5, 5}, rng)),
                       doctest::Contains("Add 'add': operands have shapes [1, 2, 3, 3] and [1, 2, 5, 5]"),
                       qkit::shape_error);
}

TEST_CASE("a layer held by std::ref is shared: visited twice, one set of weights") {
  linear shared(3, 3);
  auto net = sequential(std::ref(shared), relu{}, std::ref(shared));
  int visits = 0;
  visit_layers(net, [&](const std::string&, auto& leaf) {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(leaf)>, linear>) {
      CHECK(&leaf == &shared);
      ++visits;
    }
  });
  CHECK(visits == 2);
  init_parameters(net, 1);
  std::mt19937 rng(1);
  const tensor x = random_tensor({2, 3}, rng);
  no_hooks h;
  tensor manual = shared.forward(x, h);
  manual = relu{}.forward(manual, h);
  manual = shared.forward(manual, h);
  CHECK(same_bits(forward(net, x), manual));
}

TEST_CASE("results do not depend on the thread count") {
  auto net = small_net();
  init_parameters(net, 11);
  randomize_batch_norms(net, 12);
  std::mt19937 rng(13);
  const tensor x = random_tensor({4, 2, 8, 8}, rng);
  const tensor dy = random_tensor({4, 3}, rng);
  std::vector<tensor> runs[2];
  const std::size_t before = qkit::get_num_threads();
  for (int t = 0; t < 2; ++t) {
    qkit::set_num_threads(std::size_t(t + 1));
    auto m = net;
    set_training(m, true);
    zero_grad(m);
    runs[t].push_back(forward(m, x));
    runs[t].push_back(backward(m, dy));
    for_each_parameter(m, [&](const std::string&, tensor& v, tensor* g) {
      runs[t].push_back(v);
      if (g) runs[t].push_back(*g);
    });
  }
  qkit::set_num_threads(before);
  REQUIRE(runs[0].size() == runs[1].size());
  for (std::size_t i = 0; i < runs[0].size(); ++i) {
    CAPTURE(i);
    CHECK(same_bits(runs[0][i], runs[1][i]));
  }
}

TEST_CASE("fold_batch_norms keeps the inference function and reports what it folded") {
  auto net = small_net();
  init_parameters(net, 21);
  randomize_batch_norms(net, 22);
  set_training(net, false);
  std::mt19937 rng(23);
  const tensor x = random_tensor({2, 2, 8, 8}, rng);
  const tensor before = forward(net, x);
  CHECK(qkit::nn::unfoldable_batch_norms(net).empty());
  const auto folded = qkit::nn::fold_batch_norms(net);
  const std::vector<qkit::nn::batch_norm_fold> want{
      {"features.0", "features.1"}, {"features.3.0", "features.3.1"}, {"features.3.3", "features.3.4"}};
  CHECK(folded == want);
  const tensor after = forward(net, x);
  for (std::size_t i = 0; i < before.size(); ++i)
    CHECK(after.data()[i] == doctest::Approx(before.data()[i]).epsilon(1e-5).scale(1e-4));
  CHECK(net.get<0>().get<3>().body().get<0>().has_bias());  // the bias-free conv got one
  CHECK(net.get<0>().get<1>().folded());
  CHECK(find_parameter(net, "features.1.weight") == nullptr);
  std::size_t leaves = 0;
  visit_layers(net, [&](const std::string&, auto&) { ++leaves; });
  CHECK(leaves == 13);  // folded batch norms stay in the graph
  CHECK(qkit::nn::fold_batch_norms(net).empty());

  // Batch norms with no conv or linear right before them cannot be folded.
  auto odd = sequential(relu{}, batch_norm(3), residual(batch_norm(3)), linear(3, 3), batch_norm(3));
  const auto lone = qkit::nn::unfoldable_batch_norms(odd);
  CHECK(lone == std::vector<std::string>{"1", "2", });
  CHECK(qkit::nn::fold_batch_norms(odd) == std::vector<qkit::nn::batch_norm_fold>{{"3", "4"}});
}

TEST_CASE("optimizers: SGD with momentum and weight decay, Adam; training reduces the loss") {
  linear l(2, 1, false);
  l.weight() = tensor{{1.0f, -2.0f}};
  l.weight_grad() = tensor{{0.5f, 0.25f}};
  sgd opt({.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f});
  opt.step(l);
  // v = g + wd·w; w -= lr·v
  CHECK(l.weight()(0, 0) == doctest::Approx(1.0 - 0.1 * (0.5 + 0.01)));
  CHECK(l.weight()(0, 1) == doctest::Approx(-2.0 - 0.1 * (0.25 - 0.02)));
  const float w0 = l.weight()(0, 0);
  opt.step(l);  // v = 0.9·v + g'
  CHECK(l.weight()(0, 0) == doctest::Approx(w0 - 0.1 * (0.9 * 0.51 + 0.5 + 0.01 * w0)).epsilon(1e-5));

  linear a(1, 1, false);
  a.weight() = tensor::from_shape({1, 1});
  a.weight().fill(1.0f);
  a.weight_grad() = tensor::from_shape({1, 1});
  a.weight_grad().fill(4.0f);
  adam ad({.lr = 0.01f});
  ad.step(a);  // the first Adam step moves by lr·sign(g)
  CHECK(a.weight()(0, 0) == doctest::Approx(0.99).epsilon(1e-5));
  CHECK(cosine_lr(1.0f, 0, 10) == 1.0f);
  CHECK(cosine_lr(1.0f, 5, 10) == doctest::Approx(0.5));
  CHECK(cosine_lr(1.0f, 10, 10) == 0.0f);

  // A few steps on a separable toy problem lower the loss.
  auto net = sequential(linear(4, 8), relu{}, linear(8, 2));
  init_parameters(net, 3);
  set_training(net, true);
  std::mt19937 rng(4);
  tensor x = random_tensor({32, 4}, rng);
  std::vector<int> labels(32);
  for (std::size_t n = 0; n < 32; ++n) labels[n] = x(n, 0) + x(n, 1) > 0 ? 1 : 0;
  sgd s({.lr = 0.1f, .momentum = 0.9f});
  float first = 0, last = 0;
  for (int it = 0; it < 60; ++it) {
    zero_grad(net);
    auto r = softmax_cross_entropy(forward(net, x), labels);
    (void)backward(net, r.grad);
    s.step(net);
    if (it == 0) first = r.loss;
    last = r.loss;
  }
  CHECK(last < 0.5f * first);
}

TEST_CASE("weights round-trip through .npz; a mismatched file lists every difference") {
  const std::filesystem::path dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "nn";
  std::filesystem::create_directories(dir);
  auto net = small_net();
  init_parameters(net, 31);
  randomize_batch_norms(net, 32);
  save_weights(net, dir / "small.npz");
  auto other = small_net();
  load_weights(other, dir / "small.npz");
  for_each_parameter(net, [&](const std::string& n, tensor& v, tensor*) {
    CAPTURE(n);
    CHECK(same_bits(v, *find_parameter(other, n)));
  });
  std::mt19937 rng(33);
  const tensor x = random_tensor({1, 2, 6, 6}, rng);
  CHECK(same_bits(forward(net, x), forward(other, x)));

  // Another architecture: a wider classifier and no residual.
  auto wrong = sequential(
      named("features", sequential(conv2d(2, 4, 3, {.padding = 1}), batch_norm(4), relu6{})),
      global_avg_pool{}, flatten{}, named("classifier", linear(4, 5)), named("extra", linear(5, 5)));
  try {
    load_weights(wrong, dir / "small.npz");
    FAIL("expected a format error");
  } catch (const qkit::format_error& e) {
    const std::string what = e.what();
    CHECK(what.find("small.npz") != std::string::npos);
    CHECK(what.find("missing: extra.weight, extra.bias") != std::string::npos);
    CHECK(what.find("unexpected: features.3.0.weight") != std::string::npos);
    CHECK(what.find("mis-shaped: classifier.weight (file [3, 4], model [5, 4]), classifier.bias") !=
          std::string::npos);
  }
  CHECK_THROWS_AS(load_weights(wrong, dir / "does-not-exist.npz"), qkit::error);
}

TEST_CASE("training steps are bit-identical for 1 and 2 threads and run to run") {
  // A whole training step — forward in training mode (batch statistics, running averages),
  // softmax cross-entropy, backward, optimizer step — three times with SGD, then three with
  // Adam. Runs 0 and 2 use one thread, run 1 two; each builds its model and data from the same
  // seeds. A batch of 32 images of 16x16 is large enough for the kernels to split work.
  auto run = [](std::size_t threads) {
    qkit::set_num_threads(threads);
    auto net = small_net();
    init_parameters(net, 31);
    randomize_batch_norms(net, 32);
    std::mt19937 rng(33);
    const tensor x = random_tensor({32, 2, 16, 16}, rng);
    std::vector<std::size_t> labels(32);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = i % 3;
    std::vector<tensor> out;
    std::vector<float> losses;
    sgd s({.lr = 0.05f, .momentum = 0.9f, .weight_decay = 1e-4f});
    adam a({.lr = 1e-3f});
    set_training(net, true);
    for (int step = 0; step < 6; ++step) {
      zero_grad(net);
      const auto ce = softmax_cross_entropy(forward(net, x), labels);
      losses.push_back(ce.loss);
      (void)backward(net, ce.grad);
      if (step < 3) s.step(net);
      else a.step(net);
    }
    // Every parameter, gradient and running statistic after the steps.
    for_each_parameter(net, [&](const std::string&, tensor& v, tensor* g) {
      out.push_back(v);
      if (g) out.push_back(*g);
    });
    tensor l = tensor::from_shape({losses.size()});
    std::copy(losses.begin(), losses.end(), l.begin());
    out.push_back(l);
    return out;
  };
  const std::size_t before = qkit::get_num_threads();
  const std::vector<tensor> runs[3] = {run(1), run(2), run(1)};
  qkit::set_num_threads(before);
  REQUIRE(runs[0].size() > 10);
  for (int r : {1, 2}) {
    REQUIRE(runs[r].size() == runs[0].size());
    for (std::size_t i = 0; i < runs[0].size(); ++i) {
      CAPTURE(r);
      CAPTURE(i);
      CHECK(same_bits(runs[r][i], runs[0][i]));
    }
  }
  // The steps really trained: the loss moved.
  const tensor& l = runs[0].back();
  CHECK(l.data()[5] != l.data()[0]);
}
}  // namespace unit_graph
