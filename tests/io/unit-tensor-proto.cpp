// Tests of the protobuf wire-format reader on ONNX's own operator test vectors.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <qkit/io/tensor_proto.hpp>

#include "io_test_util.hpp"

namespace unit_tensor_proto {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit::io;

namespace {
std::string case_dir(const std::string& name) { return std::string(QKIT_ONNX_TESTDATA) + "/" + name; }

fs::path test_output_dir() {
  fs::path p = fs::path(QKIT_TEST_OUTPUT) / "io";
  fs::create_directories(p);
  return p;
}

using io_test::read_bytes;
using io_test::write_bytes;
}  // namespace

TEST_CASE("tensor_proto: QuantizeLinear test vector, float input and uint8 output") {
  const auto tc = load_onnx_test_case(case_dir("test_quantizelinear"));
  CHECK(tc.name == "test_quantizelinear");
  REQUIRE(tc.nodes.size() == 1);
  CHECK(tc.nodes[0].op_type == "QuantizeLinear");
  CHECK(tc.nodes[0].inputs == std::vector<std::string>{"x", "y_scale", "y_zero_point"});
  CHECK(tc.nodes[0].outputs == std::vector<std::string>{"y"});
  CHECK(tc.graph_inputs == std::vector<std::string>{"x", "y_scale", "y_zero_point"});
  CHECK(tc.graph_outputs == std::vector<std::string>{"y"});
  CHECK(tc.opset >= 10);
  REQUIRE(tc.inputs.size() == 3);
  REQUIRE(tc.outputs.size() == 1);

  const auto& x = tc.inputs[0];
  CHECK(x.name == "x");
  CHECK(x.data_type == onnx_dtype::float32);
  CHECK(x.dims == std::vector<std::int64_t>{6});
  CHECK(x.floats == std::vector<float>{0.f, 2.f, 3.f, 1000.f, -254.f, -1000.f});
  CHECK(x.ints.empty());

  const auto& scale = tc.inputs[1];
  CHECK(scale.dims.empty());
  CHECK(scale.numel() == 1);
  CHECK(scale.floats == std::vector<float>{2.f});

  const auto& zp = tc.inputs[2];
  CHECK(zp.data_type == onnx_dtype::uint8);
  CHECK(zp.ints == std::vector<std::int64_t>{128});

  const auto& y = tc.outputs[0];
  CHECK(y.name == "y");
  CHECK(y.data_type == onnx_dtype::uint8);
  CHECK(y.ints == std::vector<std::int64_t>{128, 129, 130, 255, 1, 0});

  // The same file read alone gives the same tensor.
  const auto y2 = read_tensor_proto(case_dir("test_quantizelinear") + "/test_data_set_0/output_0.pb");
  CHECK(y2.ints == y.ints);
  CHECK(y2.dims == y.dims);
}

TEST_CASE("tensor_proto: Conv with strides and padding, attributes and values") {
  const auto tc = load_onnx_test_case(case_dir("test_conv_with_strides_padding"));
  REQUIRE(tc.nodes.size() == 1);
  const auto& n = tc.nodes[0];
  CHECK(n.op_type == "Conv");
  REQUIRE(n.attr("strides") != nullptr);
  CHECK(n.attr("strides")->type == onnx_attr_type::ints);
  CHECK(n.attr("strides")->ints == std::vector<std::int64_t>{2, 2});
  REQUIRE(n.attr("pads") != nullptr);
  CHECK(n.attr("pads")->ints == std::vector<std::int64_t>{1, 1, 1, 1});
  REQUIRE(n.attr("kernel_shape") != nullptr);
  CHECK(n.attr("kernel_shape")->ints == std::vector<std::int64_t>{3, 3});
  CHECK(n.attr("dilations") == nullptr);

  REQUIRE(tc.inputs.size() == 2);
  const auto& x = tc.inputs[0];
  CHECK(x.dims == std::vector<std::int64_t>{1, 1, 7, 5});
  REQUIRE(x.floats.size() == 35);
  for (std::size_t i = 0; i < 35; ++i) CHECK(x.floats[i] == static_cast<float>(i));
  const auto& w = tc.inputs[1];
  CHECK(w.dims == std::vector<std::int64_t>{1, 1, 3, 3});
  CHECK(w.floats == std::vector<float>(9, 1.0f));

  REQUIRE(tc.outputs.size() == 1);
  const auto& y = tc.outputs[0];
  CHECK(y.dims == std::vector<std::int64_t>{1, 1, 4, 3});
  CHECK(y.floats == std::vector<float>{12, 27, 24, 63, 108, 81, 123, 198, 141, 112, 177, 124});

  const qkit::tensor yt = to_tensor(y);
  CHECK(yt.shape() == qkit::shape_type{1, 1, 4, 3});
  CHECK(yt(0, 0, 1, 1) == 108.0f);
}

TEST_CASE("tensor_proto: Gemm with all attributes, float attributes") {
  const auto tc = load_onnx_test_case(case_dir("test_gemm_all_attributes"));
  REQUIRE(tc.nodes.size() == 1);
  const auto& n = tc.nodes[0];
  CHECK(n.op_type == "Gemm");
  REQUIRE(n.attr("alpha") != nullptr);
  CHECK(n.attr("alpha")->type == onnx_attr_type::f);
  CHECK(n.attr("alpha")->f == 0.25f);
  CHECK(n.attr("beta")->f == 0.35f);
  CHECK(n.attr("transA")->type == onnx_attr_type::i);
  CHECK(n.attr("transA")->i == 1);
  CHECK(n.attr("transB")->i == 1);
  REQUIRE(tc.inputs.size() == 3);
  CHECK(tc.inputs[0].dims == std::vector<std::int64_t>{4, 3});
  CHECK(tc.inputs[1].dims == std::vector<std::int64_t>{5, 4});
  CHECK(tc.inputs[2].dims == std::vector<std::int64_t>{1, 5});
  REQUIRE(tc.outputs.size() == 1);
  CHECK(tc.outputs[0].dims == std::vector<std::int64_t>{3, 5});

  // Y = alpha * A' * B' + beta * C, checked in double against the file's expected output.
  const auto& A = tc.inputs[0].floats;
  const auto& B = tc.inputs[1].floats;
  const auto& C = tc.inputs[2].floats;
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t j = 0; j < 5; ++j) {
      double acc = 0;
      for (std::size_t k = 0; k < 4; ++k) acc += double(A[k * 3 + i]) * double(B[j * 4 + k]);
      const double y = 0.25 * acc + 0.35 * double(C[j]);
      CHECK(tc.outputs[0].floats[i * 5 + j] == doctest::Approx(y).epsilon(1e-5));
    }
}

TEST_CASE("tensor_proto: other element types (int8, int32, int64, bool, float16, double)") {
  // DequantizeLinear: int8/uint8 inputs; Cast cases hold FLOAT16 and DOUBLE tensors.
  const auto dq = load_onnx_test_case(case_dir("test_dequantizelinear"));
  REQUIRE(dq.inputs.size() == 3);
  CHECK(dq.inputs[0].data_type == onnx_dtype::uint8);
  CHECK(dq.inputs[0].ints == std::vector<std::int64_t>{0, 3, 128, 255});
  CHECK(dq.outputs[0].floats == std::vector<float>{-256.f, -250.f, 0.f, 254.f});

  const auto f16 = load_onnx_test_case(case_dir("test_cast_FLOAT16_to_FLOAT"));
  REQUIRE(f16.inputs.size() == 1);
  CHECK(f16.inputs[0].data_type == onnx_dtype::float16);
  REQUIRE(f16.inputs[0].floats.size() == f16.outputs[0].floats.size());
  for (std::size_t i = 0; i < f16.inputs[0].floats.size(); ++i) {
    const float a = f16.inputs[0].floats[i], b = f16.outputs[0].floats[i];
    if (std::isnan(b)) CHECK(std::isnan(a));
    else CHECK(a == b);  // half -> float is exact, so it must equal ONNX's own conversion
  }

  const auto f64 = load_onnx_test_case(case_dir("test_cast_DOUBLE_to_FLOAT"));
  CHECK(f64.inputs[0].data_type == onnx_dtype::float64);
  REQUIRE(f64.inputs[0].floats.size() == f64.outputs[0].floats.size());
  for (std::size_t i = 0; i < f64.inputs[0].floats.size(); ++i)
    CHECK(f64.inputs[0].floats[i] == f64.outputs[0].floats[i]);

  const auto nz = load_onnx_test_case(case_dir("test_nonzero_example"));
  CHECK(nz.inputs[0].data_type == onnx_dtype::boolean);
  CHECK(nz.inputs[0].ints == std::vector<std::int64_t>{1, 0, 1, 1});
  CHECK(nz.outputs[0].data_type == onnx_dtype::int64);
  CHECK(nz.outputs[0].dims == std::vector<std::int64_t>{2, 3});
  CHECK(nz.outputs[0].ints == std::vector<std::int64_t>{0, 1, 1, 0, 0, 1});
}

TEST_CASE("tensor_proto: half to float conversion is exact on special values") {
  using qkit::io::detail::half_bits_to_float;
  CHECK(half_bits_to_float(0x3C00) == 1.0f);
  CHECK(half_bits_to_float(0xC000) == -2.0f);
  CHECK(half_bits_to_float(0x7BFF) == 65504.0f);
  CHECK(half_bits_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(half_bits_to_float(0x03FF) == std::ldexp(1023.0f, -24));
  CHECK(half_bits_to_float(0x0400) == std::ldexp(1.0f, -14));
  CHECK(std::signbit(half_bits_to_float(0x8000)));
  CHECK(std::isinf(half_bits_to_float(0x7C00)));
  CHECK(std::isnan(half_bits_to_float(0x7E00)));
}

TEST_CASE("tensor_proto: 4-bit tensors unpack low nibble first") {
  // Hand-made TensorProto: dims=[3], data_type=INT4 (22), raw_data = {0x8F, 0x07}
  // -> elements 0xF (-1), 0x8 (-8), 0x7 (7); the high nibble of the last byte is padding.
  const std::string int4{"\x08\x03\x10\x16\x4a\x02\x8f\x07", 8};
  const fs::path p = test_output_dir() / "int4.pb";
  write_bytes(p, int4);
  const auto t = read_tensor_proto(p.string());
  CHECK(t.data_type == onnx_dtype::int4);
  CHECK(t.ints == std::vector<std::int64_t>{-1, -8, 7});

  // UINT4 (21) through int32_data (field 5, packed): one byte per int32.
  const std::string uint4{"\x08\x03\x10\x15\x2a\x03\x8f\x01\x01", 9};
  const auto& p2 = test_output_dir() / "uint4.pb";
  write_bytes(p2, uint4);
  const auto u = read_tensor_proto(p2.string());
  CHECK(u.ints == std::vector<std::int64_t>{15, 8, 1});
}

TEST_CASE("tensor_proto: truncated and corrupt files are format errors naming file and offset") {
  const fs::path src = fs::path(case_dir("test_conv_with_strides_padding")) / "test_data_set_0" / "input_0.pb";
  const std::string bytes = read_bytes(src);
  REQUIRE(bytes.size() > 40);
  const fs::path cut = test_output_dir() / "truncated_input_0.pb";
  write_bytes(cut, bytes.substr(0, bytes.size() - 7));
  const std::string msg = io_test::format_error_of([&] { read_tensor_proto(cut.string()); });
  CHECK(msg.find("truncated_input_0.pb") != std::string::npos);
  CHECK(msg.find("at byte") != std::string::npos);

  // A model cut in half fails while parsing the graph, before any test data is read.
  const fs::path model_src = fs::path(case_dir("test_gemm_all_attributes")) / "model.onnx";
  const std::string model = read_bytes(model_src);
  const fs::path dir = test_output_dir() / "test_gemm_truncated";
  fs::create_directories(dir / "test_data_set_0");
  write_bytes(dir / "model.onnx", model.substr(0, model.size() / 2));
  const std::string msg2 = io_test::format_error_of([&] { load_onnx_test_case(dir.string()); });
  CHECK(msg2.find("model.onnx") != std::string::npos);
  CHECK(msg2.find("at byte") != std::string::npos);

  // A varint that never ends.
  const fs::path junk = test_output_dir() / "junk.pb";
  write_bytes(junk, std::string(12, '\xff'));
  CHECK_THROWS_AS(read_tensor_proto(junk.string()), qkit::format_error);

  // raw_data whose size disagrees with dims: dims=[3], FLOAT, raw 8 bytes.
  const fs::path wrong = test_output_dir() / "wrong_count.pb";
  write_bytes(wrong, std::string{"\x08\x03\x10\x01\x4a\x08\0\0\0\0\0\0\0\0", 14});
  const std::string msg3 = io_test::format_error_of([&] { read_tensor_proto(wrong.string()); });
  CHECK(msg3.find("raw_data has 8 bytes, expected 12") != std::string::npos);

  // Corrupt dims must not wrap around or allocate: dims [2^40, 2^40], INT8 with no data.
  const fs::path huge = test_output_dir() / "huge_dims.pb";
  write_bytes(huge, std::string{"\x08\x80\x80\x80\x80\x80\x20\x08\x80\x80\x80\x80\x80\x20\x10\x03", 16});
  const std::string msg4 = io_test::format_error_of([&] { read_tensor_proto(huge.string()); });
  CHECK(msg4.find("implausible dims") != std::string::npos);
  // dims [2^30], INT8, no int32_data: a count error before anything is allocated.
  const fs::path big = test_output_dir() / "big_no_data.pb";
  write_bytes(big, std::string{"\x08\x80\x80\x80\x80\x04\x10\x03", 8});
  const std::string msg5 = io_test::format_error_of([&] { read_tensor_proto(big.string()); });
  CHECK(msg5.find("int32_data holds 0 values, expected 1073741824") != std::string::npos);

  CHECK_THROWS_AS(read_tensor_proto((test_output_dir() / "missing.pb").string()), qkit::format_error);
}

TEST_CASE("tensor_proto: listing test cases by prefix") {
  const auto cases = list_onnx_test_cases(QKIT_ONNX_TESTDATA, "test_gemm_");
  CHECK(cases.size() == 11);
  CHECK(std::is_sorted(cases.begin(), cases.end()));
  for (const auto& c : cases) CHECK(fs::path(c).filename().string().rfind("test_gemm_", 0) == 0);
  CHECK_THROWS_AS(list_onnx_test_cases("/nonexistent/qkit", "test_"), qkit::format_error);
}
}  // namespace unit_tensor_proto
