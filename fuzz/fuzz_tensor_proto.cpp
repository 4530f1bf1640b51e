// fuzz/fuzz_tensor_proto.cpp — libFuzzer target for the ONNX wire-format readers: the bytes as
// a TensorProto (read_tensor_proto, then to_tensor) and as a test case's model.onnx
// (load_onnx_test_case). Any bytes must decode or give a qkit::error.
#include <filesystem>

#include <qkit/io/tensor_proto.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto path = qkit_fuzz::input_file(data, size, ".pb");
  qkit_fuzz::expect_only_qkit_errors([&] {
    const qkit::io::onnx_tensor t = qkit::io::read_tensor_proto(path.string());
    (void)qkit::io::to_tensor(t);
  });
  // The same bytes as the model of a test case with no data files.
  static const std::filesystem::path dir = [&] {
    const auto d = path.parent_path() / "case";
    std::filesystem::create_directories(d / "test_data_set_0");
    return d;
  }();
  qkit_fuzz::write_file(dir / "model.onnx", data, size);
  qkit_fuzz::expect_only_qkit_errors([&] {
    const auto tc = qkit::io::load_onnx_test_case(dir.string());
    for (const auto& t : tc.initializers) (void)qkit::io::to_tensor(t);
    for (const auto& n : tc.nodes)
      for (const auto& a : n.attributes)
        if (a.t) (void)qkit::io::to_tensor(*a.t);
  });
  return 0;
}
