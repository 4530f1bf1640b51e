// The typed dataflow view passes work on: op kinds (ordinary vs depthwise conv, ReLU vs ReLU6 vs
// other clips, decided by bounds at run time), typed access, folded batch norms recorded on the
// layer they went into, chains across sequential/residual boundaries that stop at a tensor
// with a second reader, and the weighted-layer arithmetic checked against direct forwards.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

#include <qkit/nn/nn.hpp>

namespace unit_dataflow {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;
using namespace qkit::nn;

namespace {
auto mobile_block() {
  return sequential(
      conv2d(1, 4, 3, {.padding = 1, .bias = false}), batch_norm(4), relu6(),
      conv2d(4, 4, 3, {.padding = 1, .groups = 4}), relu(), conv2d(4, 8, 1), clip(-1.0f, 1.0f),
      residual(sequential(conv2d(8, 8, 1), relu(), conv2d(8, 8, 1))), global_avg_pool(),
      flatten(), linear(8, 3));
}

tensor random_tensor(shape_type shape, std::uint32_t seed) {
  tensor x = tensor::from_shape(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& v : x) v = d(rng);
  return x;
}
}  // namespace

TEST_CASE("dataflow: op kinds, typed access and folded batch norms") {
  auto m = mobile_block();
  fold_batch_norms(m);
  const auto flow = describe_dataflow(m);
  CHECK(flow.find("0")->kind == op_kind::conv);
  CHECK(flow.find("0")->weighted == &m.get<0>());
  CHECK(flow.find("0")->folded_batch_norm == &m.get<1>());
  CHECK(flow.find("1") == nullptr);  // folded: no node
  CHECK(flow.find("2")->kind == op_kind::relu6);
  CHECK(flow.find("2")->clip_layer == &m.get<2>());
  CHECK(flow.find("3")->kind == op_kind::depthwise_conv);
  CHECK(flow.find("3")->folded_batch_norm == nullptr);
  CHECK(flow.find("4")->kind == op_kind::relu);
  CHECK(flow.find("6")->kind == op_kind::clip);
  CHECK(flow.find("7.add")->kind == op_kind::add);
  CHECK(flow.find("10")->kind == op_kind::linear);
  CHECK(flow.find("8")->kind == op_kind::other);  // pooling: passes leave it alone
  CHECK(flow.find("8")->weighted == nullptr);

  // A ReLU6 whose bound is lifted is a ReLU.
  m.get<2>().set_bounds(0.0f, std::numeric_limits<float>::infinity());
  CHECK(describe_dataflow(m).find("2")->kind == op_kind::relu);
  CHECK_THROWS_AS(m.get<2>().set_bounds(1.0f, 0.0f), config_error);
}

TEST_CASE("dataflow: chains cross boundaries and stop at a second reader") {
  auto m = mobile_block();
  const auto flow = describe_dataflow(m);
  // conv -> (relu|relu6) -> depthwise conv: found from the stem.
  const auto c = flow.find_chains({{op_kind::conv, op_kind::depthwise_conv},
                                   {op_kind::relu, op_kind::relu6},
                                   {op_kind::conv, op_kind::depthwise_conv}});
  std::vector<std::pair<std::string, std::string>> ends;
  for (const auto& ch : c) ends.emplace_back(ch.front()->name, ch.back()->name);
  // "0" -> BN -> "2" -> "3" (the live BN is a node: no chain from "0"), "3" -> "4" -> "5", and
  // inside the residual body "7.0" -> "7.1" -> "7.2".
  CHECK(ends == std::vector<std::pair<std::string, std::string>>{{"3", "5"}, {"7.0", "7.2"}});
  // layer -> batch norm (a live one), with its typed access.
  const auto bn = flow.find_chains({{op_kind::conv}, {op_kind::batch_norm}});
  REQUIRE(bn.size() == 1);
  CHECK(bn[0][0]->name == "0");
  CHECK(bn[0][1]->live_batch_norm == &m.get<1>());
  // The clip's output is read by the body and by the add: no sole consumer.
  CHECK(flow.sole_consumer(*flow.find("6")) == nullptr);
  CHECK(flow.sole_consumer(*flow.find("7.0"))->name == "7.1");
  CHECK(flow.sole_producer(*flow.find("7.add")) == nullptr);  // two inputs
  CHECK(flow.sole_producer(*flow.find("4"))->name == "3");
}

TEST_CASE("weighted layer: channel ranges and scaling on a grouped conv") {
  conv2d g(4, 6, 1, {.groups = 2});  // weight [6, 2, 1, 1]: outputs 0-2 read inputs 0-1
  float v = 1.0f;
  for (auto& w : g.weight()) w = v++;  // 1..12
  CHECK(g.input_channels() == 4);
  CHECK(g.output_channels() == 6);
  // Input 0 is read by outputs 0-2 at ci = 0: weights 1, 3, 5; input 3 by outputs 3-5 at ci = 1.
  const auto in = g.input_channel_absmax();
  CHECK(in == std::vector<float>{5, 6, 11, 12});
  CHECK(g.output_channel_absmax() == std::vector<float>{2, 4, 6, 8, 10, 12});
  g.scale_input_channels({1, 1, 1, 0.5f});
  CHECK(g.weight()(5, 1, 0, 0) == 6.0f);
  CHECK(g.weight()(5, 0, 0, 0) == 11.0f);
}

TEST_CASE("weighted layer: input_response is what a constant input shift adds to the output") {
  conv2d c(3, 2, 3, {.groups = 1});  // no padding: every output sees the whole kernel
  std::mt19937 rng(4);
  c.reset_parameters(rng);
  const tensor x = random_tensor({1, 3, 5, 5}, 9);
  const std::vector<float> shift{0.5f, -1.25f, 2.0f};
  tensor xs = x;
  for (std::size_t ch = 0; ch < 3; ++ch)
    for (std::size_t i = 0; i < 25; ++i) xs.data()[ch * 25 + i] += shift[ch];
  const tensor y = forward(c, x), ys = forward(c, xs);
  const auto r = c.input_response(shift);
  for (std::size_t o = 0; o < 2; ++o)
    for (std::size_t i = 0; i < 9; ++i)
      CHECK(ys.data()[o * 9 + i] - y.data()[o * 9 + i] == doctest::Approx(r[o]).epsilon(1e-4));

  linear l(3, 2);
  l.reset_parameters(rng);
  tensor a = random_tensor({1, 3}, 10), b = a;
  for (std::size_t i = 0; i < 3; ++i) b.data()[i] += shift[i];
  const tensor ya = forward(l, a), yb = forward(l, b);
  const auto rl = l.input_response(shift);
  for (std::size_t o = 0; o < 2; ++o)
    CHECK(yb.data()[o] - ya.data()[o] == doctest::Approx(rl[o]).epsilon(1e-4));
}
}  // namespace unit_dataflow
