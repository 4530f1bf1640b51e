// ONNX operator conformance of qkit's layers: every relevant node test of ONNX's own test
// suite (Debian's libonnx-testdata) is read with qkit::io::load_onnx_test_case, mapped onto a
// qkit layer, run, and compared with ONNX's expected output. Cases a layer cannot express are
// listed with the reason (MESSAGE) and the list itself is checked, so a new gap shows up as a
// failure instead of passing silently.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <qkit/io/tensor_proto.hpp>
#include <qkit/nn/activation.hpp>
#include <qkit/nn/add.hpp>
#include <qkit/nn/batch_norm.hpp>
#include <qkit/nn/conv2d.hpp>
#include <qkit/nn/flatten.hpp>
#include <qkit/nn/linear.hpp>
#include <qkit/nn/pooling.hpp>
#include <qkit/tensor/gemm.hpp>

namespace unit_onnx_ops {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit::io;
using qkit::tensor;

namespace {

// ---- attributes --------------------------------------------------------------------------

std::int64_t int_attr(const onnx_node& n, std::string_view name, std::int64_t def) {
  const auto* a = n.attr(name);
  return a ? a->i : def;
}
float float_attr(const onnx_node& n, std::string_view name, float def) {
  const auto* a = n.attr(name);
  return a ? a->f : def;
}
std::string string_attr(const onnx_node& n, std::string_view name, const std::string& def) {
  const auto* a = n.attr(name);
  return a ? a->s : def;
}
std::vector<std::int64_t> ints_attr(const onnx_node& n, std::string_view name,
                                    std::vector<std::int64_t> def) {
  const auto* a = n.attr(name);
  return a ? a->ints : def;
}
/// The first attribute of `n` not in `known`, or "" when all are understood: a case with an
/// attribute this file does not map must not pass by ignoring it.
std::string unknown_attribute(const onnx_node& n, std::initializer_list<std::string_view> known) {
  for (const auto& a : n.attributes)
    if (std::find(known.begin(), known.end(), a.name) == known.end()) return a.name;
  return "";
}

/// The test-data tensor feeding node input `k` (nullptr when the input is omitted).
const onnx_tensor* input_of(const onnx_test_case& tc, std::size_t k) {
  const onnx_node& n = tc.nodes.at(0);
  if (k >= n.inputs.size() || n.inputs[k].empty()) return nullptr;
  for (const auto& t : tc.inputs)
    if (t.name == n.inputs[k]) return &t;
  for (const auto& t : tc.initializers)
    if (t.name == n.inputs[k]) return &t;
  return nullptr;
}

/// Pads (begin, end) of one spatial axis for auto_pad SAME_UPPER / SAME_LOWER: the output
/// keeps ceil(in / stride) positions and the odd padding goes to the end (UPPER) or the
/// beginning (LOWER).
std::pair<std::size_t, std::size_t> same_pads(std::size_t in, std::size_t extent,
                                              std::size_t stride, bool upper) {
  const std::size_t out = (in + stride - 1) / stride;
  const std::size_t needed = (out - 1) * stride + extent;
  const std::size_t total = needed > in ? needed - in : 0;
  const std::size_t small = total / 2, large = total - small;
  return upper ? std::pair{small, large} : std::pair{large, small};
}

/// Spatial pads [top, left, bottom, right] from `pads` or `auto_pad`; "" or a skip reason.
std::string spatial_pads(const onnx_node& n, const std::vector<std::int64_t>& in_hw,
                         const std::vector<std::int64_t>& extent_hw,
                         const std::vector<std::int64_t>& strides, std::array<std::size_t, 4>& pads) {
  const std::string auto_pad = string_attr(n, "auto_pad", "NOTSET");
  pads = {0, 0, 0, 0};
  if (auto_pad == "NOTSET") {
    const auto p = ints_attr(n, "pads", {0, 0, 0, 0});
    if (p.size() != 4) return "pads has " + std::to_string(p.size()) + " entries";
    for (int i = 0; i < 4; ++i) pads[i] = static_cast<std::size_t>(p[i]);
  } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    for (int a = 0; a < 2; ++a) {
      const auto [b, e] = same_pads(std::size_t(in_hw[a]), std::size_t(extent_hw[a]),
                                    std::size_t(strides[a]), auto_pad == "SAME_UPPER");
      pads[a] = b;
      pads[a + 2] = e;
    }
  } else if (auto_pad != "VALID") {
    return "unknown auto_pad " + auto_pad;
  }
  return "";
}

// ---- comparison --------------------------------------------------------------------------

/// Compares qkit's output with ONNX's: exact when rel == 0, else |got - want| <= rel * |want|
/// + abs_floor (the floor only matters for values that cancel to about zero).
void expect_close(const std::string& case_name, const onnx_tensor& want, const tensor& got,
                  double rel, double abs_floor = 1e-6) {
  INFO("case ", case_name, ", output '", want.name, "'");
  const qkit::shape_type want_shape(want.dims.begin(), want.dims.end());
  REQUIRE(qkit::shape_string(got.shape()) == qkit::shape_string(want_shape));
  const tensor w = to_tensor(want);
  std::size_t bad = 0, worst = 0;
  double worst_err = -1;
  for (std::size_t i = 0; i < w.size(); ++i) {
    const double a = got.data()[i], b = w.data()[i];
    const double err = std::abs(a - b);
    const bool ok = rel == 0.0 ? a == b : err <= rel * std::abs(b) + abs_floor;
    if (!ok) ++bad;
    if (err > worst_err) {
      worst_err = err;
      worst = i;
    }
  }
  std::ostringstream detail;
  if (w.size() > 0)
    detail << "worst at flat index " << worst << ": qkit " << got.data()[worst] << ", ONNX "
           << w.data()[worst];
  INFO(detail.str());
  CHECK_MESSAGE(bad == 0, bad, " of ", w.size(), " values differ");
}

// ---- the driver --------------------------------------------------------------------------

/// Runs `run` on every case whose name starts with `prefix`. `run` checks the case and returns
/// "" or returns why the case cannot be run. Checks that exactly `expected_skips` were
/// skipped and that `expected_runs` cases ran.
void run_family(const std::string& prefix,
                const std::function<std::string(const onnx_test_case&)>& run,
                const std::set<std::string>& expected_skips, std::size_t expected_runs) {
  const auto dirs = list_onnx_test_cases(QKIT_ONNX_TESTDATA, prefix);
  std::set<std::string> skipped;
  std::size_t ran = 0;
  for (const auto& dir : dirs) {
    const onnx_test_case tc = load_onnx_test_case(dir);
    REQUIRE(tc.nodes.size() == 1);
    const std::string reason = run(tc);
    if (reason.empty()) {
      ++ran;
    } else {
      MESSAGE(tc.name, ": skipped: ", reason);
      skipped.insert(tc.name);
    }
  }
  CHECK(skipped == expected_skips);
  CHECK(ran == expected_runs);
}

bool is_float(const onnx_tensor* t) { return t && t->data_type == onnx_dtype::float32; }

// ---- per operator ------------------------------------------------------------------------

std::string run_conv(const onnx_test_case& tc) {
  const onnx_node& n = tc.nodes[0];
  if (n.op_type != "Conv") return "op " + n.op_type + " is not Conv (no qkit layer)";
  const auto* x = input_of(tc, 0);
  const auto* w = input_of(tc, 1);
  const auto* b = input_of(tc, 2);
  REQUIRE(is_float(x));
  REQUIRE(is_float(w));
  if (x->dims.size() != 4) return std::to_string(x->dims.size() - 2) + "-d convolution";
  if (auto u = unknown_attribute(n, {"auto_pad", "dilations", "group", "kernel_shape", "pads",
                                     "strides"});
      !u.empty())
    return "attribute " + u + " not mapped";
  const auto strides = ints_attr(n, "strides", {1, 1});
  const auto dil = ints_attr(n, "dilations", {1, 1});
  const auto group = static_cast<std::size_t>(int_attr(n, "group", 1));
  const std::size_t O = w->dims[0], C = x->dims[1], KH = w->dims[2], KW = w->dims[3];
  const auto ks = ints_attr(n, "kernel_shape", {std::int64_t(KH), std::int64_t(KW)});
  CHECK(ks == std::vector<std::int64_t>{std::int64_t(KH), std::int64_t(KW)});
  std::array<std::size_t, 4> pads{};
  const std::string why = spatial_pads(n, {x->dims[2], x->dims[3]},
                                       {dil[0] * (std::int64_t(KH) - 1) + 1,
                                        dil[1] * (std::int64_t(KW) - 1) + 1},
                                       strides, pads);
  if (!why.empty()) return why;
  qkit::conv2d_params p;
  p.stride_h = std::size_t(strides[0]);
  p.stride_w = std::size_t(strides[1]);
  p.pad_top = pads[0];
  p.pad_left = pads[1];
  p.pad_bottom = pads[2];
  p.pad_right = pads[3];
  p.dilation_h = std::size_t(dil[0]);
  p.dilation_w = std::size_t(dil[1]);
  p.groups = group;
  qkit::nn::conv2d layer(C, O, KH, KW, p, b != nullptr);
  layer.set_name(tc.name);
  layer.weight() = to_tensor(*w);
  if (b) layer.bias() = to_tensor(*b);
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*x), h), 1e-5);
  return "";
}

std::string run_gemm(const onnx_test_case& tc) {
  const onnx_node& n = tc.nodes[0];
  if (auto u = unknown_attribute(n, {"alpha", "beta", "transA", "transB"}); !u.empty())
    return "attribute " + u + " not mapped";
  const auto* A = input_of(tc, 0);
  const auto* B = input_of(tc, 1);
  const auto* C = input_of(tc, 2);
  REQUIRE(is_float(A));
  REQUIRE(is_float(B));
  const float alpha = float_attr(n, "alpha", 1.0f), beta = float_attr(n, "beta", 1.0f);
  const bool ta = int_attr(n, "transA", 0) != 0, tb = int_attr(n, "transB", 0) != 0;
  const std::size_t M = ta ? A->dims[1] : A->dims[0], K = ta ? A->dims[0] : A->dims[1];
  const std::size_t N = tb ? B->dims[0] : B->dims[1];
  REQUIRE((tb ? B->dims[1] : B->dims[0]) == std::int64_t(K));
  const std::size_t c_size = C ? C->numel() : 0;
  const bool bias_is_vector = C && (c_size == N || c_size == 1) && C->dims.size() <= 2 &&
                              (C->dims.size() < 2 || C->dims[0] == 1);

  if (!ta && alpha == 1.0f && (beta == 1.0f || !C) && (!C || bias_is_vector)) {
    // qkit::nn::linear: y = x·Wᵀ + b, so W is B transposed unless transB already holds it.
    qkit::nn::linear layer(K, N, C != nullptr);
    layer.set_name(tc.name);
    const tensor b = to_tensor(*B);
    layer.weight() = tb ? b : tensor(xt::transpose(b));
    if (C) {
      const tensor c = to_tensor(*C);
      for (std::size_t j = 0; j < N; ++j) layer.bias()(j) = c.data()[c_size == 1 ? 0 : j];
    }
    qkit::nn::no_hooks h;
    expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*A), h), 1e-5);
    return "";
  }
  // transA, alpha/beta != 1 or a matrix bias: the layer has no such form; qkit::gemm has.
  MESSAGE(tc.name, ": via qkit::gemm (qkit::nn::linear has no transA, alpha, beta or matrix "
                   "bias)");
  tensor y = tensor::from_shape({M, N});
  y.fill(0.0f);
  if (C) {
    const tensor c = to_tensor(*C);
    const std::size_t rows = C->dims.size() == 2 ? C->dims[0] : 1;
    const std::size_t cols = C->dims.empty() ? 1 : C->dims.back();
    for (std::size_t i = 0; i < M; ++i)
      for (std::size_t j = 0; j < N; ++j)
        y(i, j) = c.data()[(rows == 1 ? 0 : i) * cols + (cols == 1 ? 0 : j)];
  }
  const tensor a = to_tensor(*A), b = to_tensor(*B);
  qkit::gemm(ta ? qkit::transpose::yes : qkit::transpose::no,
             tb ? qkit::transpose::yes : qkit::transpose::no, M, N, K, alpha, a.data(),
             A->dims[1], b.data(), B->dims[1], C ? beta : 0.0f, y.data(), N);
  expect_close(tc.name, tc.outputs.at(0), y, 1e-5);
  return "";
}

std::string run_relu(const onnx_test_case& tc) {
  const auto* x = input_of(tc, 0);
  if (!is_float(x)) return "non-float input";
  qkit::nn::relu layer;
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*x), h), 0.0);
  return "";
}

std::string run_clip(const onnx_test_case& tc) {
  const onnx_node& n = tc.nodes[0];
  const auto* x = input_of(tc, 0);
  if (!is_float(x)) return onnx_data_type_name(x->data_type) + " input (qkit layers are float)";
  if (auto u = unknown_attribute(n, {"min", "max"}); !u.empty())
    return "attribute " + u + " not mapped";
  // Opset >= 11 passes the bounds as optional inputs, older opsets as attributes.
  float lo = float_attr(n, "min", -std::numeric_limits<float>::infinity());
  float hi = float_attr(n, "max", std::numeric_limits<float>::infinity());
  if (const auto* t = input_of(tc, 1)) lo = t->floats.at(0);
  if (const auto* t = input_of(tc, 2)) hi = t->floats.at(0);
  qkit::nn::clip layer(lo, hi);
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*x), h), 0.0);
  return "";
}

std::string run_batch_norm(const onnx_test_case& tc) {
  const onnx_node& n = tc.nodes[0];
  if (auto u = unknown_attribute(n, {"epsilon", "momentum", "training_mode"}); !u.empty())
    return "attribute " + u + " not mapped";
  const auto* x = input_of(tc, 0);
  REQUIRE(is_float(x));
  const std::size_t C = x->dims.at(1);
  const float eps = float_attr(n, "epsilon", 1e-5f);
  const float onnx_momentum = float_attr(n, "momentum", 0.9f);
  const bool training = int_attr(n, "training_mode", 0) != 0;
  // ONNX keeps `momentum` of the old running value; qkit (PyTorch) names the new share.
  qkit::nn::batch_norm layer(C, eps, 1.0f - onnx_momentum);
  layer.set_name(tc.name);
  layer.weight() = to_tensor(*input_of(tc, 1));
  layer.bias() = to_tensor(*input_of(tc, 2));
  layer.running_mean() = to_tensor(*input_of(tc, 3));
  layer.running_var() = to_tensor(*input_of(tc, 4));
  layer.set_training(training);
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*x), h), 1e-5);
  if (training) {
    REQUIRE(tc.outputs.size() == 3);
    expect_close(tc.name, tc.outputs[1], layer.running_mean(), 1e-5);
    // ONNX updates running_var with the biased batch variance, qkit (like PyTorch) with the
    // unbiased one: recover the batch variance from ONNX's output and check qkit's rule.
    const std::size_t M = static_cast<std::size_t>(x->numel() / C);
    const tensor in_var = to_tensor(*input_of(tc, 4));
    const tensor onnx_var = to_tensor(tc.outputs[2]);
    onnx_tensor expected = tc.outputs[2];
    for (std::size_t c = 0; c < C; ++c) {
      const double biased =
          (double(onnx_var(c)) - onnx_momentum * double(in_var(c))) / (1.0 - onnx_momentum);
      expected.floats[c] = float(onnx_momentum * double(in_var(c)) +
                                 (1.0 - onnx_momentum) * biased * double(M) / double(M - 1));
    }
    expect_close(tc.name + " (running_var, unbiased update)", expected, layer.running_var(), 1e-4);
  }
  return "";
}

/// MaxPool and AveragePool share their attribute mapping.
std::string pool_params(const onnx_test_case& tc, bool average, qkit::pool2d_params& p) {
  const onnx_node& n = tc.nodes[0];
  const auto* x = input_of(tc, 0);
  if (x->dims.size() != 4) return std::to_string(x->dims.size() - 2) + "-d pooling";
  if (auto u = unknown_attribute(n, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                     "kernel_shape", "pads", "storage_order", "strides"});
      !u.empty())
    return "attribute " + u + " not mapped";
  const auto dil = ints_attr(n, "dilations", {1, 1});
  if (dil != std::vector<std::int64_t>{1, 1})
    return "dilations " + std::to_string(dil[0]) + "," + std::to_string(dil[1]) +
           " (qkit::pool2d_params has no dilation)";
  const auto ks = ints_attr(n, "kernel_shape", {});
  REQUIRE(ks.size() == 2);
  const auto strides = ints_attr(n, "strides", {1, 1});
  std::array<std::size_t, 4> pads{};
  const std::string why = spatial_pads(n, {x->dims[2], x->dims[3]}, ks, strides, pads);
  if (!why.empty()) return why;
  p = qkit::pool2d_params{std::size_t(ks[0]), std::size_t(ks[1]), std::size_t(strides[0]),
                          std::size_t(strides[1]), pads[0], pads[1], pads[2], pads[3],
                          int_attr(n, "ceil_mode", 0) != 0,
                          average && int_attr(n, "count_include_pad", 0) != 0};
  return "";
}

std::string run_max_pool(const onnx_test_case& tc) {
  qkit::pool2d_params p;
  if (auto why = pool_params(tc, false, p); !why.empty()) return why;
  const auto* x = input_of(tc, 0);
  qkit::nn::max_pool layer(p);
  layer.set_name(tc.name);
  qkit::nn::no_hooks h;
  // Integer inputs (uint8) are exact in float, and a max picks one of them unchanged.
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*x), h), 0.0);
  if (tc.outputs.size() > 1)
    MESSAGE(tc.name, ": output 'Indices' not compared (the layer keeps its argmax internal)");
  return "";
}

std::string run_avg_pool(const onnx_test_case& tc) {
  qkit::pool2d_params p;
  if (auto why = pool_params(tc, true, p); !why.empty()) return why;
  qkit::nn::avg_pool layer(p);
  layer.set_name(tc.name);
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*input_of(tc, 0)), h), 1e-5);
  return "";
}

std::string run_global_avg_pool(const onnx_test_case& tc) {
  qkit::nn::global_avg_pool layer;
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*input_of(tc, 0)), h), 1e-5);
  return "";
}

std::string run_add(const onnx_test_case& tc) {
  const auto* a = input_of(tc, 0);
  const auto* b = input_of(tc, 1);
  if (!is_float(a) || !is_float(b))
    return onnx_data_type_name(a->data_type) + " inputs (qkit layers are float)";
  if (a->dims != b->dims)
    return "broadcasting " + qkit::shape_string(a->dims) + " + " + qkit::shape_string(b->dims) +
           " (qkit::nn::add adds equally shaped tensors: residual connections)";
  qkit::nn::add layer;
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*a), to_tensor(*b), h), 0.0);
  return "";
}

std::string run_flatten(const onnx_test_case& tc) {
  const onnx_node& n = tc.nodes[0];
  const auto* x = input_of(tc, 0);
  if (auto u = unknown_attribute(n, {"axis"}); !u.empty()) return "attribute " + u + " not mapped";
  std::int64_t axis = int_attr(n, "axis", 1);
  if (axis < 0) axis += std::int64_t(x->dims.size());
  if (axis != qkit::nn::flatten::axis)
    return "axis " + std::to_string(int_attr(n, "axis", 1)) +
           " (qkit::nn::flatten keeps the batch axis: axis 1 only)";
  qkit::nn::flatten layer;
  qkit::nn::no_hooks h;
  expect_close(tc.name, tc.outputs.at(0), layer.forward(to_tensor(*x), h), 0.0);
  return "";
}

}  // namespace

TEST_CASE("onnx conformance: Conv") {
  run_family("test_conv", run_conv,
             {"test_convinteger_with_padding", "test_convinteger_without_padding",
              "test_convtranspose", "test_convtranspose_1d", "test_convtranspose_3d",
              "test_convtranspose_autopad_same", "test_convtranspose_dilations",
              "test_convtranspose_kernel_shape", "test_convtranspose_output_shape",
              "test_convtranspose_pad", "test_convtranspose_pads",
              "test_convtranspose_with_kernel"},
             4);
  run_family("test_basic_conv", run_conv, {"test_basic_convinteger"}, 2);
}

TEST_CASE("onnx conformance: Gemm") { run_family("test_gemm_", run_gemm, {}, 11); }

TEST_CASE("onnx conformance: Relu") { run_family("test_relu", run_relu, {}, 1); }

TEST_CASE("onnx conformance: Clip") {
  run_family("test_clip", run_clip,
             {"test_clip_default_int8_inbounds", "test_clip_default_int8_max",
              "test_clip_default_int8_min"},
             8);
}

TEST_CASE("onnx conformance: BatchNormalization") {
  run_family("test_batchnorm_", run_batch_norm, {}, 4);
}

TEST_CASE("onnx conformance: MaxPool") {
  run_family("test_maxpool_", run_max_pool,
             {"test_maxpool_1d_default", "test_maxpool_3d_default", "test_maxpool_2d_dilations"},
             12);
}

TEST_CASE("onnx conformance: AveragePool") {
  run_family("test_averagepool_", run_avg_pool,
             {"test_averagepool_1d_default", "test_averagepool_3d_default"}, 11);
}

TEST_CASE("onnx conformance: GlobalAveragePool") {
  run_family("test_globalaveragepool", run_global_avg_pool, {}, 2);
}

TEST_CASE("onnx conformance: Add") {
  run_family("test_add", run_add, {"test_add_bcast", "test_add_uint8"}, 1);
}

TEST_CASE("onnx conformance: Flatten") {
  run_family("test_flatten_", run_flatten,
             {"test_flatten_axis0", "test_flatten_axis2", "test_flatten_axis3",
              "test_flatten_negative_axis1", "test_flatten_negative_axis2",
              "test_flatten_negative_axis4"},
             3);
}
}  // namespace unit_onnx_ops
