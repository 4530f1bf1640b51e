// ONNX QDQ export: small Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm graphs are
// exported, checked by ONNX's checker, run in ONNX Runtime and compared with qkit's own
// simulation of the same graph (qkit's qdq on weights and activations, plain float conv/gemm).
//
// Exactness: the "dyadic" cases use power-of-two scales and biases on a power-of-two grid, so
// every product and partial sum is a small integer times a power of two, exactly representable
// in float; then the order in which ONNX Runtime accumulates cannot matter and its output must
// equal the simulation bit for bit. The calibrated-scale and float16 cases have real rounding in
// the accumulations, so they are compared within one quantization step (one float16 ulp).
#ifdef QKIT_WITH_ONNX

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <qkit/io/onnx_export.hpp>
#include <qkit/quant/qdq.hpp>

#include "ort_runner.hpp"

namespace unit_onnx_export {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using qkit::encoding;
using qkit::tensor;
using qkit::io::export_graph;
using qkit::io::export_node;
using qkit::io::tensor_quant;

namespace {

fs::path out_dir() {
  fs::path d = fs::path(QKIT_TEST_OUTPUT) / "export";
  fs::create_directories(d);
  return d;
}

// Deterministic values in [-1, 1).
struct lcg {
  std::uint64_t s;
  float next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<float>((s >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
  }
};

tensor random_tensor(const qkit::shape_type& shape, float amp, std::uint64_t seed,
                     float grid = 0.0f) {
  tensor t = tensor::from_shape(shape);
  lcg g{seed};
  for (auto& v : t) {
    v = amp * g.next();
    if (grid > 0.0f) v = std::round(v / grid) * grid;
  }
  return t;
}

// A grid with a power-of-two scale: scale 2^-k, the given offset.
encoding pow2(int bits, int k, std::int64_t offset, bool symmetric) {
  return qkit::encoding_from_scale_offset(std::ldexp(1.0, -k), offset, bits, symmetric);
}
encoding sym(int bits, int k) { return pow2(bits, k, -(std::int64_t{1} << (bits - 1)), true); }

constexpr std::int64_t C_in = 2, H = 4, W = 4, C_out = 4, classes = 3, batch = 32;

qkit::shape_type shp(std::initializer_list<std::int64_t> dims) {
  qkit::shape_type s;
  for (auto d : dims) s.push_back(static_cast<std::size_t>(d));
  return s;
}

// input [N,2,4,4] -> Conv(4,3x3,pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(3).
export_graph make_graph(const std::string& name) {
  export_graph g;
  g.name = name;
  g.input_name = "input";
  g.input_shape = {-1, C_in, H, W};
  g.output_name = "output";
  g.output_shape = {-1, classes};
  g.initializers.emplace_back("conv.weight", random_tensor(shp({C_out, C_in, 3, 3}), 0.6f, 11));
  // Biases on a 2^-10 grid keep the float sums exact when they are left unquantized.
  g.initializers.emplace_back("conv.bias", random_tensor(shp({C_out}), 0.3f, 12, 1.0f / 1024));
  g.initializers.emplace_back("fc.weight", random_tensor(shp({classes, C_out}), 0.9f, 13));
  g.initializers.emplace_back("fc.bias", random_tensor(shp({classes}), 0.2f, 14, 1.0f / 1024));
  g.nodes.push_back({"Conv", "conv", {"input", "conv.weight", "conv.bias"}, {"conv_out"},
                     {{"pads", std::vector<std::int64_t>{1, 1, 1, 1}},
                      {"kernel_shape", std::vector<std::int64_t>{3, 3}}}});
  g.nodes.push_back({"Relu", "relu", {"conv_out"}, {"relu_out"}, {}});
  g.nodes.push_back({"GlobalAveragePool", "gap", {"relu_out"}, {"gap_out"}, {}});
  g.nodes.push_back({"Flatten", "flatten", {"gap_out"}, {"flat_out"}, {{"axis", std::int64_t{1}}}});
  g.nodes.push_back({"Gemm", "fc", {"flat_out", "fc.weight", "fc.bias"}, {"output"},
                     {{"transB", std::int64_t{1}}}});
  return g;
}

// ---- qkit's simulation of an export_graph: the reference ------------------------------------

void apply_qdq(const export_graph& g, const std::string& name, tensor& t) {
  auto it = g.quantized.find(name);
  if (it == g.quantized.end()) return;
  const tensor_quant& q = it->second;
  if (q.encodings.size() == 1) {
    qkit::qdq(t.data(), t.data(), t.size(), q.encodings[0]);
  } else {
    const qkit::shape_type shape(t.shape().begin(), t.shape().end());
    qkit::qdq_per_channel(t.data(), t.data(), std::span<const std::size_t>(shape), q.axis,
                          q.encodings);
  }
}

tensor simulate(const export_graph& g, const tensor& input) {
  std::map<std::string, tensor> v;
  v["input"] = input;
  apply_qdq(g, "input", v["input"]);
  for (const auto& [n, t] : g.initializers) {
    v[n] = t;
    apply_qdq(g, n, v[n]);
  }
  const auto N = input.shape()[0];
  // Conv 3x3, pad 1, stride 1, accumulated in double (exact for the dyadic cases anyway).
  {
    const tensor &x = v["input"], &w = v["conv.weight"], &b = v["conv.bias"];
    tensor y = tensor::from_shape({N, std::size_t(C_out), std::size_t(H), std::size_t(W)});
    for (std::size_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < C_out; ++o)
        for (std::int64_t i = 0; i < H; ++i)
          for (std::int64_t j = 0; j < W; ++j) {
            double acc = b(o);
            for (std::int64_t c = 0; c < C_in; ++c)
              for (std::int64_t ki = 0; ki < 3; ++ki)
                for (std::int64_t kj = 0; kj < 3; ++kj) {
                  const std::int64_t ii = i + ki - 1, jj = j + kj - 1;
                  if (ii < 0 || jj < 0 || ii >= H || jj >= W) continue;
                  acc += double(x(n, c, ii, jj)) * double(w(o, c, ki, kj));
                }
            y(n, o, i, j) = static_cast<float>(acc);
          }
    v["conv_out"] = y;
    apply_qdq(g, "conv_out", v["conv_out"]);
  }
  {
    tensor y = v["conv_out"];
    for (auto& e : y) e = e > 0.0f ? e : 0.0f;
    v["relu_out"] = y;
    apply_qdq(g, "relu_out", v["relu_out"]);
  }
  {
    const tensor& x = v["relu_out"];
    tensor y = tensor::from_shape({N, std::size_t(C_out), 1, 1});
    for (std::size_t n = 0; n < N; ++n)
      for (std::int64_t o = 0; o < C_out; ++o) {
        double acc = 0.0;
        for (std::int64_t i = 0; i < H; ++i)
          for (std::int64_t j = 0; j < W; ++j) acc += x(n, o, i, j);
        y(n, o, 0, 0) = static_cast<float>(acc / double(H * W));
      }
    v["gap_out"] = y;
    apply_qdq(g, "gap_out", v["gap_out"]);
  }
  {
    tensor y = v["gap_out"];
    y.reshape({N, static_cast<std::size_t>(C_out)});
    v["flat_out"] = y;
    apply_qdq(g, "flat_out", v["flat_out"]);
  }
  {
    const tensor &x = v["flat_out"], &w = v["fc.weight"], &b = v["fc.bias"];
    tensor y = tensor::from_shape({N, static_cast<std::size_t>(classes)});
    for (std::size_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < classes; ++k) {
        double acc = b(k);
        for (std::int64_t c = 0; c < C_out; ++c) acc += double(x(n, c)) * double(w(k, c));
        y(n, k) = static_cast<float>(acc);
      }
    v["output"] = y;
    apply_qdq(g, "output", v["output"]);
  }
  return v["output"];
}

// ---- export, run, compare -------------------------------------------------------------------

struct comparison {
  double max_abs = 0.0;
  std::size_t differing = 0;
  std::size_t total = 0;
};

comparison compare(const std::vector<float>& got, const tensor& want) {
  comparison c;
  c.total = want.size();
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(double(got[i]) - double(want.data()[i]));
    c.max_abs = std::max(c.max_abs, d);
    if (got[i] != want.data()[i]) ++c.differing;
  }
  return c;
}

enum class expect { exact, within };

// Exports, checks, runs at "disabled" (asserted) and "all" (reported).
void export_and_compare(const export_graph& g, expect how, double tolerance,
                        const qkit::io::onnx_export_options& opts = {}) {
  const fs::path path = out_dir() / (g.name + ".onnx");
  qkit::io::write_onnx(g, path, opts);
  REQUIRE(fs::exists(path));

  const tensor x = random_tensor(shp({batch, C_in, H, W}), 2.0f, 99);  // saturates some grids
  const tensor want = simulate(g, x);
  const std::vector<float> in(x.begin(), x.end());
  const std::vector<std::int64_t> shape{batch, C_in, H, W};

  std::vector<float> got;
  REQUIRE(qkit_test::run_ort(path, in, shape, got, "disabled"));
  const comparison c = compare(got, want);
  MESSAGE(g.name << " (opset " << qkit::io::onnx_export_opset(g, opts)
                 << "), ORT optimizations disabled: " << c.differing << "/" << c.total
                 << " outputs differ from qkit's simulation, max |diff| " << c.max_abs);
  if (how == expect::exact) CHECK(c.differing == 0);
  CHECK(c.max_abs <= tolerance);

  std::vector<float> opt;
  REQUIRE(qkit_test::run_ort(path, in, shape, opt, "all"));
  const comparison o = compare(opt, want);
  MESSAGE(g.name << ", ORT optimizations all: " << o.differing << "/" << o.total
                 << " outputs differ from qkit's simulation, max |diff| " << o.max_abs);
}

onnx::ModelProto load_model(const fs::path& p) {
  onnx::ModelProto m;
  std::ifstream in(p, std::ios::binary);
  REQUIRE(m.ParseFromIstream(&in));
  return m;
}

const onnx::TensorProto* find_init(const onnx::ModelProto& m, const std::string& name) {
  for (const auto& t : m.graph().initializer())
    if (t.name() == name) return &t;
  return nullptr;
}

int count_ops(const onnx::ModelProto& m, const std::string& op) {
  int n = 0;
  for (const auto& node : m.graph().node()) n += node.op_type() == op;
  return n;
}

// Dyadic W8A8 encodings: asymmetric activations with negative offsets, symmetric weights.
void quantize_w8a8(export_graph& g) {
  g.quantized["input"] = {{pow2(8, 6, -100, false)}};     // [-1.5625, 2.42]
  g.quantized["relu_out"] = {{pow2(8, 5, 0, false)}};     // [0, 7.97]
  g.quantized["gap_out"] = {{pow2(8, 6, 0, false)}};
  g.quantized["output"] = {{pow2(8, 5, -128, false)}};    // [-4, 3.97]
  g.quantized["conv.weight"] = {{sym(8, 7)}};
  g.quantized["fc.weight"] = {{sym(8, 7)}};
}

}  // namespace

TEST_CASE("onnx export: W8A8 per-tensor, bit-exact in ONNX Runtime") {
  export_graph g = make_graph("w8a8_per_tensor");
  quantize_w8a8(g);
  export_and_compare(g, expect::exact, 0.0);

  // What was written: opset 13, int8 weights with zero point 0, uint8 activations with zero
  // point -offset, consumers rewired, dynamic batch on input and output.
  const auto m = load_model(out_dir() / "w8a8_per_tensor.onnx");
  CHECK(m.opset_import(0).version() == 13);
  CHECK(qkit::io::check_onnx_model(m));  // full check ran (opset 13 is known to ONNX 1.12)
  CHECK(count_ops(m, "QuantizeLinear") == 4);
  CHECK(count_ops(m, "DequantizeLinear") == 6);
  const auto* wq = find_init(m, "conv.weight_q");
  REQUIRE(wq);
  CHECK(wq->data_type() == onnx::TensorProto::INT8);
  CHECK(find_init(m, "conv.weight") == nullptr);  // only the integer weights are stored
  const auto* wzp = find_init(m, "conv.weight_zero_point");
  REQUIRE(wzp);
  CHECK(wzp->raw_data() == std::string(1, '\0'));
  const auto* izp = find_init(m, "input_zero_point");
  REQUIRE(izp);
  CHECK(izp->data_type() == onnx::TensorProto::UINT8);
  CHECK(static_cast<unsigned char>(izp->raw_data()[0]) == 100);
  for (const auto& node : m.graph().node())
    if (node.op_type() == "Relu") CHECK(node.input(0) == "conv_out");
    else if (node.op_type() == "GlobalAveragePool") CHECK(node.input(0) == "relu_out_dq");
  CHECK(m.graph().output(0).name() == "output");
  CHECK(m.graph().input(0).type().tensor_type().shape().dim(0).dim_param() == "batch");
  CHECK(m.graph().output(0).type().tensor_type().shape().dim(0).dim_param() == "batch");
  CHECK(m.graph().output(0).type().tensor_type().shape().dim(1).dim_value() == classes);
}

TEST_CASE("onnx export: signed (int8) activations give the same results") {
  export_graph g = make_graph("w8a8_signed_activations");
  quantize_w8a8(g);
  qkit::io::onnx_export_options o;
  o.signed_activations = true;
  export_and_compare(g, expect::exact, 0.0, o);
  const auto m = load_model(out_dir() / "w8a8_signed_activations.onnx");
  const auto* izp = find_init(m, "input_zero_point");
  REQUIRE(izp);
  CHECK(izp->data_type() == onnx::TensorProto::INT8);
  CHECK(static_cast<signed char>(izp->raw_data()[0]) == 100 - 128);
}

TEST_CASE("onnx export: per-channel weights (Conv axis 0, Gemm axis 0) and int32 bias") {
  export_graph g = make_graph("w8a8_per_channel");
  quantize_w8a8(g);
  g.quantized["conv.weight"] = {{sym(8, 7), sym(8, 6), sym(8, 8), sym(8, 7)}, 0};
  g.quantized["fc.weight"] = {{sym(8, 6), sym(8, 7), sym(8, 8)}, 0};
  // 24-bit symmetric bias on a 2^-16 grid: stored as int32 with zero point 0.
  g.quantized["conv.bias"] = {{sym(24, 16)}};
  export_and_compare(g, expect::exact, 0.0);
  const auto m = load_model(out_dir() / "w8a8_per_channel.onnx");
  const auto* scale = find_init(m, "conv.weight_scale");
  REQUIRE(scale);
  CHECK(scale->dims_size() == 1);
  CHECK(scale->dims(0) == C_out);
  const auto* bias = find_init(m, "conv.bias_q");
  REQUIRE(bias);
  CHECK(bias->data_type() == onnx::TensorProto::INT32);
}

TEST_CASE("onnx export: 16-bit activations raise the opset to 21") {
  export_graph g = make_graph("w8a16");
  g.quantized["input"] = {{pow2(16, 10, -32768, false)}};
  g.quantized["relu_out"] = {{pow2(16, 10, 0, false)}};
  g.quantized["gap_out"] = {{pow2(16, 10, 0, false)}};
  g.quantized["output"] = {{pow2(16, 10, -32768, false)}};
  g.quantized["conv.weight"] = {{sym(8, 7)}};
  g.quantized["fc.weight"] = {{sym(16, 8)}};
  CHECK(qkit::io::onnx_export_opset(g) == 21);
  export_and_compare(g, expect::exact, 0.0);
  const auto m = load_model(out_dir() / "w8a16.onnx");
  CHECK(m.opset_import(0).version() == 21);
  CHECK(find_init(m, "input_zero_point")->data_type() == onnx::TensorProto::UINT16);
  CHECK(find_init(m, "fc.weight_q")->data_type() == onnx::TensorProto::INT16);
  // ONNX 1.12 knows opsets up to 17: only the structural check can run on this model.
  CHECK(qkit::io::check_onnx_model(m) == (qkit::io::onnx_library_max_opset() >= 21));
}

TEST_CASE("onnx export: 4-bit weights in int8 storage and 4-bit activations") {
  export_graph g = make_graph("w4a8");
  quantize_w8a8(g);
  g.quantized["conv.weight"] = {{sym(4, 3), sym(4, 2), sym(4, 4), sym(4, 3)}, 0};
  g.quantized["fc.weight"] = {{sym(4, 3)}};
  // A 4-bit activation grid in uint8 storage: [0, 3.75], clamped before QuantizeLinear.
  g.quantized["relu_out"] = {{pow2(4, 2, 0, false)}};
  export_and_compare(g, expect::exact, 0.0);
  const auto m = load_model(out_dir() / "w4a8.onnx");
  CHECK(m.opset_import(0).version() == 13);
  const auto* wq = find_init(m, "conv.weight_q");
  REQUIRE(wq);
  CHECK(wq->data_type() == onnx::TensorProto::INT8);
  for (char c : wq->raw_data()) {
    CHECK(static_cast<signed char>(c) >= -8);
    CHECK(static_cast<signed char>(c) <= 7);
  }
  CHECK(count_ops(m, "Clip") == 1);
}

TEST_CASE("onnx export: float16 activations and weights via Cast") {
  export_graph g = make_graph("fp16");
  g.quantized["input"] = {{encoding::fp16()}};
  g.quantized["relu_out"] = {{encoding::fp16()}};
  g.quantized["output"] = {{encoding::fp16()}};
  g.quantized["conv.weight"] = {{encoding::fp16()}};
  g.quantized["fc.weight"] = {{encoding::fp16()}};
  // Outputs are below 4 in magnitude: one float16 ulp there is 2^-9.
  export_and_compare(g, expect::within, std::ldexp(1.0, -9));
  const auto m = load_model(out_dir() / "fp16.onnx");
  CHECK(count_ops(m, "Cast") == 8);
  CHECK(count_ops(m, "QuantizeLinear") == 0);
  CHECK(find_init(m, "conv.weight_fp16")->data_type() == onnx::TensorProto::FLOAT16);
}

TEST_CASE("onnx export: calibrated (non power-of-two) scales agree within one step") {
  export_graph g = make_graph("w8a8_calibrated");
  g.quantized["input"] = {{qkit::encoding_from_range(-1.0, 1.0, 8)}};
  g.quantized["relu_out"] = {{qkit::encoding_from_range(0.0, 2.3, 8)}};
  g.quantized["gap_out"] = {{qkit::encoding_from_range(0.0, 1.1, 8)}};
  const encoding out = qkit::encoding_from_range(-1.7, 1.9, 8);
  g.quantized["output"] = {{out}};
  g.quantized["conv.weight"] = {{qkit::encoding_from_range(-0.6, 0.6, 8, qkit::scheme::symmetric_signed)}};
  g.quantized["fc.weight"] = {{qkit::encoding_from_range(-0.9, 0.9, 8, qkit::scheme::symmetric_signed)}};
  // 32-bit grids are pass-through: no QDQ for the biases.
  g.quantized["fc.bias"] = {{qkit::encoding_from_range(-1.0, 1.0, 32)}};
  export_and_compare(g, expect::within, out.scale * 1.0001);
}

TEST_CASE("onnx export: a quantized graph output consumed by nothing else keeps its name") {
  export_graph g = make_graph("output_name");
  g.quantized["output"] = {{pow2(8, 5, -128, false)}};
  const auto m = qkit::io::onnx_export_model(g);
  bool found = false;
  for (const auto& node : m.graph().node()) {
    if (node.op_type() == "Gemm") CHECK(node.output(0) == "output_float");
    if (node.op_type() == "DequantizeLinear" && node.output(0) == "output") found = true;
  }
  CHECK(found);
}

TEST_CASE("onnx export: bad graphs and encodings are errors; nothing half-written") {
  const fs::path p = out_dir() / "bad.onnx";
  { std::ofstream(p) << "previous"; }
  auto previous_kept = [&] {
    std::ifstream in(p);
    std::string s;
    in >> s;
    return s == "previous";
  };
  {
    export_graph g = make_graph("bad");
    g.quantized["nonexistent"] = {{sym(8, 7)}};
    CHECK_THROWS_WITH_AS(qkit::io::write_onnx(g, p), doctest::Contains("'nonexistent'"),
                         qkit::config_error);
  }
  {
    export_graph g = make_graph("bad");
    g.quantized["relu_out"] = {{pow2(24, 10, 0, false)}};
    CHECK_THROWS_WITH_AS(qkit::io::write_onnx(g, p),
                         doctest::Contains("activation 'relu_out': bitwidth 24"),
                         qkit::config_error);
  }
  {
    export_graph g = make_graph("bad");
    g.quantized["conv.bias"] = {{pow2(24, 10, -5, false)}};
    CHECK_THROWS_WITH_AS(qkit::io::write_onnx(g, p), doctest::Contains("zero point 0"),
                         qkit::config_error);
  }
  {
    export_graph g = make_graph("bad");
    g.quantized["conv.weight"] = {{sym(8, 7), sym(4, 3), sym(8, 7), sym(8, 7)}, 0};
    CHECK_THROWS_WITH_AS(qkit::io::write_onnx(g, p), doctest::Contains("channel 1 differs"),
                         qkit::config_error);
  }
  {
    export_graph g = make_graph("bad");
    g.quantized["conv.weight"] = {{sym(8, 7), sym(8, 7), sym(8, 7)}, 0};  // 4 channels
    CHECK_THROWS_AS(qkit::io::write_onnx(g, p), qkit::shape_error);
  }
  {
    export_graph g = make_graph("bad");
    std::swap(g.nodes[1], g.nodes[2]);
    CHECK_THROWS_WITH_AS(qkit::io::write_onnx(g, p), doctest::Contains("topological order"),
                         qkit::config_error);
  }
  {
    export_graph g = make_graph("bad");
    g.nodes[1].op_type = "NoSuchOp";
    CHECK_THROWS_WITH_AS(qkit::io::write_onnx(g, p), doctest::Contains("ONNX's checker"),
                         qkit::format_error);
  }
  CHECK(previous_kept());
}

#endif  // QKIT_WITH_ONNX
}  // namespace unit_onnx_export
