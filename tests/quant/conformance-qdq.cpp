// Conformance of qkit's quantize / dequantize kernels with ONNX's own operator test vectors
// (libonnx-testdata): every test_quantizelinear* and test_dequantizelinear* case whose storage
// type qkit supports is reproduced exactly, per tensor and per axis.
#include <doctest/doctest.h>

#include <bit>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <qkit/io/tensor_proto.hpp>
#include <qkit/quant/qdq.hpp>

namespace conformance_qdq {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

namespace io = qkit::io;
using qkit::encoding;

/// The tensor feeding input slot k of the node: a test-data input or an initializer.
const io::onnx_tensor* node_input(const io::onnx_test_case& tc, const io::onnx_node& node, std::size_t k) {
  if (k >= node.inputs.size() || node.inputs[k].empty()) return nullptr;
  for (const auto& t : tc.inputs)
    if (t.name == node.inputs[k]) return &t;
  for (const auto& t : tc.initializers)
    if (t.name == node.inputs[k]) return &t;
  return nullptr;
}

/// Storage bits and signedness of an ONNX integer type qkit can hold; bits 0 if unsupported.
struct storage_kind {
  int bits = 0;
  bool is_signed = false;
};

storage_kind storage_of(int data_type) {
  namespace dt = io::onnx_dtype;
  switch (data_type) {
    case dt::uint8: return {8, false};
    case dt::int8: return {8, true};
    case dt::uint16: return {16, false};
    case dt::int16: return {16, true};
    case dt::int32: return {32, true};
    case dt::uint4: return {4, false};
    case dt::int4: return {4, true};
    default: return {};
  }
}

/// qkit encodings for ONNX (scale, zero point) pairs: offset = -zp (unsigned storage) or
/// -zp - 2^(bw-1) (signed storage). int32 storage holds 31-bit grids (32 bits is qkit's
/// pass-through), which covers every int32 test vector's values.
std::vector<encoding> encodings_of(const io::onnx_tensor& scale, const io::onnx_tensor* zp,
                                   storage_kind sk) {
  const int bw = sk.bits == 32 ? 31 : sk.bits;
  std::vector<encoding> out;
  for (std::size_t c = 0; c < scale.floats.size(); ++c) {
    const std::int64_t z = zp ? zp->ints.at(zp->ints.size() == 1 ? 0 : c) : 0;
    const std::int64_t offset = sk.is_signed ? -z - (std::int64_t{1} << (bw - 1)) : -z;
    out.push_back(qkit::encoding_from_scale_offset(scale.floats[c], offset, bw, false));
  }
  return out;
}

template <class Int>
void run_storage_case(const io::onnx_tensor& x, const io::onnx_tensor& y, const std::vector<encoding>& encs,
                      std::ptrdiff_t axis, bool quantize_op) {
  const std::vector<std::size_t> shape(x.dims.begin(), x.dims.end());
  const std::size_t n = x.numel();
  if (quantize_op) {
    std::vector<Int> got(n);
    if (encs.size() == 1) qkit::quantize(x.floats.data(), got.data(), n, encs[0]);
    else qkit::quantize_per_channel(x.floats.data(), got.data(), shape, axis, encs);
    REQUIRE(y.ints.size() == n);
    for (std::size_t i = 0; i < n; ++i) {
      CAPTURE(i);
      CHECK(static_cast<std::int64_t>(got[i]) == y.ints[i]);
    }
  } else {
    std::vector<Int> q(n);
    for (std::size_t i = 0; i < n; ++i) q[i] = static_cast<Int>(x.ints[i]);
    std::vector<float> got(n);
    if (encs.size() == 1) qkit::dequantize(q.data(), got.data(), n, encs[0]);
    else qkit::dequantize_per_channel(q.data(), got.data(), shape, axis, encs);
    REQUIRE(y.floats.size() == n);
    for (std::size_t i = 0; i < n; ++i) {
      CAPTURE(i);
      CHECK(std::bit_cast<std::uint32_t>(got[i]) == std::bit_cast<std::uint32_t>(y.floats[i]));
    }
  }
}

}  // namespace

TEST_CASE("conformance: ONNX QuantizeLinear / DequantizeLinear test vectors") {
  std::vector<std::string> cases = io::list_onnx_test_cases(QKIT_ONNX_TESTDATA, "test_quantizelinear");
  const auto deq = io::list_onnx_test_cases(QKIT_ONNX_TESTDATA, "test_dequantizelinear");
  cases.insert(cases.end(), deq.begin(), deq.end());
  REQUIRE(cases.size() >= 4);

  std::string ran, skipped;
  for (const auto& dir : cases) {
    const io::onnx_test_case tc = io::load_onnx_test_case(dir);
    CAPTURE(tc.name);
    REQUIRE(tc.nodes.size() == 1);
    const io::onnx_node& node = tc.nodes[0];
    const bool quantize_op = node.op_type == "QuantizeLinear";
    REQUIRE((quantize_op || node.op_type == "DequantizeLinear"));
    const io::onnx_tensor* x = node_input(tc, node, 0);
    const io::onnx_tensor* scale = node_input(tc, node, 1);
    const io::onnx_tensor* zp = node_input(tc, node, 2);
    REQUIRE(x != nullptr);
    REQUIRE(scale != nullptr);
    REQUIRE(tc.outputs.size() == 1);
    const io::onnx_tensor& y = tc.outputs[0];

    const io::onnx_tensor& stored = quantize_op ? y : *x;
    const storage_kind sk = storage_of(stored.data_type);
    const auto* block = node.attr("block_size");
    if (sk.bits == 0 || (block && block->i != 0)) {
      skipped += " " + tc.name + " (" + io::onnx_data_type_name(stored.data_type) +
                 (block && block->i != 0 ? ", blocked" : "") + ")";
      continue;
    }
    const auto* axis_attr = node.attr("axis");
    const std::ptrdiff_t axis = axis_attr ? static_cast<std::ptrdiff_t>(axis_attr->i) : 1;
    const std::vector<encoding> encs = encodings_of(*scale, zp, sk);
    REQUIRE(!encs.empty());
    switch (stored.data_type) {
      case io::onnx_dtype::uint8:
      case io::onnx_dtype::uint4: run_storage_case<std::uint8_t>(*x, y, encs, axis, quantize_op); break;
      case io::onnx_dtype::int8:
      case io::onnx_dtype::int4: run_storage_case<std::int8_t>(*x, y, encs, axis, quantize_op); break;
      case io::onnx_dtype::uint16: run_storage_case<std::uint16_t>(*x, y, encs, axis, quantize_op); break;
      case io::onnx_dtype::int16: run_storage_case<std::int16_t>(*x, y, encs, axis, quantize_op); break;
      case io::onnx_dtype::int32: run_storage_case<std::int32_t>(*x, y, encs, axis, quantize_op); break;
      default: FAIL("unhandled storage type");
    }
    ran += " " + tc.name;
  }
  MESSAGE("ONNX QDQ cases reproduced:" << ran);
  if (!skipped.empty()) MESSAGE("ONNX QDQ cases skipped (storage qkit does not hold):" << skipped);
  CHECK(!ran.empty());
}

TEST_CASE("conformance: a truncated TensorProto is a format error") {
  namespace fs = std::filesystem;
  const fs::path src = fs::path(QKIT_ONNX_TESTDATA) / "test_quantizelinear_axis" / "test_data_set_0" / "input_0.pb";
  REQUIRE(fs::exists(src));
  std::ifstream in(src, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  REQUIRE(bytes.size() > 8);
  CHECK_NOTHROW(io::read_tensor_proto(src.string()));
  const fs::path dir = fs::path(QKIT_TEST_OUTPUT) / "quant";
  fs::create_directories(dir);
  // Cut inside the raw data, one byte short, and inside the header.
  for (std::size_t keep : {bytes.size() / 2, bytes.size() - 1, std::size_t{3}}) {
    CAPTURE(keep);
    const fs::path cut = dir / ("truncated_" + std::to_string(keep) + ".pb");
    {
      std::ofstream out(cut, std::ios::binary | std::ios::trunc);
      out.write(bytes.data(), static_cast<std::streamsize>(keep));
    }
    CHECK_THROWS_AS(io::read_tensor_proto(cut.string()), qkit::format_error);
  }
}
}  // namespace conformance_qdq
