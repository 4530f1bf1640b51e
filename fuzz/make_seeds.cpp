// fuzz/make_seeds.cpp — writes the seed corpora under fuzz/corpus/<target>/ with qkit's own
// writers (npz, encodings) plus small hand-made valid and edge-case files. Run once by hand
// (scripts/fuzz.sh --seeds); the output is committed, so fuzzing never depends on this step.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <zlib.h>

#include <qkit/io/encodings_file.hpp>
#include <qkit/io/npz.hpp>
#include <qkit/nn/batch_norm.hpp>
#include <qkit/nn/weights_file.hpp>

#include "fuzz_model.hpp"

namespace fs = std::filesystem;
using qkit::io::detail::put_u16;
using qkit::io::detail::put_u32;

namespace {
void spit(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
}
std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
std::string be32(std::uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xFF), char((v >> 8) & 0xFF), char(v & 0xFF)};
}
std::string gzip(const std::string& s) {
  const fs::path tmp = fs::temp_directory_path() / "qkit-make-seeds.gz";
  gzFile f = gzopen(tmp.c_str(), "wb9");
  gzwrite(f, s.data(), static_cast<unsigned>(s.size()));
  gzclose(f);
  return slurp(tmp);
}
std::string deflate_raw(const std::string& in) {
  z_stream zs{};
  deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&zs, in.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}
/// A one-entry zip whose entry is deflated; `claimed` overrides the uncompressed size the
/// directory states (through a zip64 extra field when it does not fit 32 bits).
std::string deflated_zip(const std::string& name, const std::string& data,
                         std::uint64_t claimed) {
  const std::string payload = deflate_raw(data);
  const auto crc = static_cast<std::uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
  const bool z64 = claimed >= 0xFFFFFFFFu;
  std::string body, dir, end;
  put_u32(body, 0x04034b50u); put_u16(body, 20); put_u16(body, 0); put_u16(body, 8);
  put_u16(body, 0); put_u16(body, 33); put_u32(body, crc);
  put_u32(body, static_cast<std::uint32_t>(payload.size()));
  put_u32(body, z64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(claimed));
  put_u16(body, static_cast<std::uint32_t>(name.size())); put_u16(body, 0);
  body += name + payload;
  put_u32(dir, 0x02014b50u); put_u16(dir, 45); put_u16(dir, 45); put_u16(dir, 0);
  put_u16(dir, 8); put_u16(dir, 0); put_u16(dir, 33); put_u32(dir, crc);
  put_u32(dir, static_cast<std::uint32_t>(payload.size()));
  put_u32(dir, z64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(claimed));
  put_u16(dir, static_cast<std::uint32_t>(name.size())); put_u16(dir, z64 ? 12 : 0);
  put_u16(dir, 0); put_u16(dir, 0); put_u16(dir, 0); put_u32(dir, 0); put_u32(dir, 0);
  dir += name;
  if (z64) {
    put_u16(dir, 1); put_u16(dir, 8);
    put_u32(dir, static_cast<std::uint32_t>(claimed)); put_u32(dir, static_cast<std::uint32_t>(claimed >> 32));
  }
  put_u32(end, 0x06054b50u); put_u16(end, 0); put_u16(end, 0); put_u16(end, 1); put_u16(end, 1);
  put_u32(end, static_cast<std::uint32_t>(dir.size()));
  put_u32(end, static_cast<std::uint32_t>(body.size())); put_u16(end, 0);
  return body + dir + end;
}
}  // namespace

int main(int argc, char** argv) {
  const fs::path root = argc > 1 ? fs::path(argv[1]) : fs::path("fuzz/corpus");
  for (const char* t : {"npz", "idx", "encodings", "sim_config", "tensor_proto"})
    fs::create_directories(root / t);

  // npz: the weights of fuzz_npz's model (qkit's writer), a deflated copy, a .npy, edge cases.
  {
    using namespace qkit::nn;
    auto model = sequential(conv2d(1, 2, 2), batch_norm(2), relu{}, global_avg_pool{},
                            flatten{}, linear(2, 3));
    save_weights(model, root / "npz" / "weights.npz");
    qkit::io::save_npz(root / "npz" / "empty.npz", qkit::io::npz_arrays{});
    qkit::tensor t(qkit::shape_type{2, 3});
    for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = static_cast<float>(i) - 2.5f;
    qkit::io::save_npy(root / "npz" / "array.npy", t);
    const std::string npy = qkit::io::detail::npy_bytes(t);
    spit(root / "npz" / "deflated.npz", deflated_zip("a.npy", npy, npy.size()));
    // Sizes a directory may lie about: 2^62 bytes from a few deflated ones (a format_error,
    // never an allocation attempt), and just one byte more than the data holds.
    spit(root / "npz" / "claims-2e62.npz", deflated_zip("a.npy", npy, std::uint64_t{1} << 62));
    spit(root / "npz" / "claims-one-more.npz", deflated_zip("a.npy", npy, npy.size() + 1));
    // An empty archive whose zip64 end-record offset is 2^64 - 8: `z64 + 56 > size` wrapped
    // around and the reader read 8 bytes before its buffer (ASan: heap-buffer-overflow).
    std::string wrap(64, '\0');
    put_u32(wrap, 0x07064b50u); put_u32(wrap, 0); put_u32(wrap, 0xFFFFFFF8u);
    put_u32(wrap, 0xFFFFFFFFu); put_u32(wrap, 1);
    put_u32(wrap, 0x06054b50u); put_u16(wrap, 0); put_u16(wrap, 0); put_u16(wrap, 0xFFFF);
    put_u16(wrap, 0xFFFF); put_u32(wrap, 0xFFFFFFFFu); put_u32(wrap, 0xFFFFFFFFu); put_u16(wrap, 0);
    spit(root / "npz" / "zip64-wrap.npz", wrap);
    // numpy's other dtypes and Fortran order, as hand-made .npy images.
    std::string h = "{'descr': '>i8', 'fortran_order': True, 'shape': (2, 2), }";
    h.append(128 - 10 - h.size() - 1, ' ');
    h.push_back('\n');
    std::string i8 = std::string("\x93NUMPY\x01\x00", 8);
    put_u16(i8, static_cast<std::uint32_t>(h.size()));
    i8 += h + std::string(32, '\0');
    spit(root / "npz" / "int64-fortran.npy", i8);
  }

  // idx: 2 images of 3x3 and 3 labels, plain and gzip; a header claiming gigabytes.
  {
    std::string img = be32(0x803) + be32(2) + be32(3) + be32(3);
    for (int i = 0; i < 18; ++i) img.push_back(static_cast<char>(i * 14));
    std::string lab = be32(0x801) + be32(3) + std::string("\x01\x09\x00", 3);
    spit(root / "idx" / "images.idx3", img);
    spit(root / "idx" / "labels.idx1", lab);
    spit(root / "idx" / "images.idx3.gz", gzip(img));
    spit(root / "idx" / "labels.idx1.gz", gzip(lab));
    spit(root / "idx" / "claims-gigabytes.idx3", be32(0x803) + be32(60000) + be32(4096) + be32(4096));
  }

  // encodings: a calibrated sim's file in both formats (qkit's writer), plus edge cases.
  {
    auto sim = qkit_fuzz::calibrated_sim();
    sim.export_encodings(root / "encodings" / "sim-1.0.0.encodings", qkit::io::format_version::v1_0_0);
    sim.export_encodings(root / "encodings" / "sim-0.6.1.encodings", qkit::io::format_version::v0_6_1);
    spit(root / "encodings" / "passthrough-0.6.1.encodings", R"({"version": "0.6.1",
 "activation_encodings": {"x": [{"bitwidth": 32, "dtype": "int", "is_symmetric": "False",
   "max": 1.0, "min": -1.0, "offset": 0, "scale": 0.0}]},
 "param_encodings": {"w": [{"bitwidth": 16, "dtype": "float"}],
   "b": [{"bitwidth": 4, "is_symmetric": "True", "max": 3.5, "min": -4.0, "offset": -8, "scale": 0.5}]}})");
    spit(root / "encodings" / "per-channel-1.0.0.encodings", R"({"version": "1.0.0",
 "activation_encodings": [{"name": "input", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8,
   "is_sym": false, "scale": [0.0125], "offset": [-60]}],
 "param_encodings": [{"name": "fc.weight", "dtype": "INT", "enc_type": "PER_CHANNEL", "bw": 4,
   "is_sym": true, "scale": [0.5, 0.25], "offset": [-8, -8]},
  {"name": "h", "dtype": "FLOAT", "enc_type": "PER_TENSOR", "bw": 16}],
 "excluded_layers": ["a"], "quantizer_args": {"activation_bitwidth": 8}})");
    spit(root / "encodings" / "negative-passthrough-0.6.1.encodings", R"({"version": "0.6.1",
 "activation_encodings": {"x": [{"bitwidth": 32, "dtype": "int", "is_symmetric": "False",
   "max": 1.0, "min": -1.0, "offset": 0, "scale": -1.0}]}})");
    spit(root / "encodings" / "huge-offset-1.0.0.encodings", R"({"version": "1.0.0",
 "param_encodings": [{"name": "w", "dtype": "INT", "enc_type": "PER_TENSOR", "bw": 8,
   "is_sym": true, "scale": [1e308], "offset": [-9000000000000000]}]})");
  }

  // sim_config: AIMET's default_config.json and a per-channel variant.
  {
    spit(root / "sim_config" / "default_config.json", R"({
  "defaults": {"ops": {"is_output_quantized": "True"},
               "params": {"is_quantized": "True", "is_symmetric": "True"},
               "strict_symmetric": "False", "unsigned_symmetric": "True",
               "per_channel_quantization": "False"},
  "params": {"bias": {"is_quantized": "False"}},
  "op_type": {"Squeeze": {"is_output_quantized": "False"},
              "Pad": {"is_output_quantized": "False"},
              "Mean": {"is_output_quantized": "False"},
              "Conv": {"per_channel_quantization": "True", "params": {"weight": {"is_symmetric": "True"}}}},
  "supergroups": [{"op_list": ["Conv", "Relu"]}, {"op_list": ["Conv", "Clip"]},
                  {"op_list": ["Add", "Relu"]}, {"op_list": ["Gemm", "Relu"]}],
  "model_input": {"is_input_quantized": "True"},
  "model_output": {}
})");
    spit(root / "sim_config" / "minimal.json", R"({"defaults": {"ops": {}, "params": {}}})");
  }

  // tensor_proto: ONNX's own test vectors (libonnx-testdata), tensors and model files.
  {
    const fs::path node = "/usr/share/libonnx-testdata/data/node";
    for (const char* c : {"test_relu", "test_dequantizelinear", "test_quantizelinear",
                          "test_cast_FLOAT_to_FLOAT16", "test_constant", "test_gemm_default_no_bias"}) {
      if (!fs::exists(node / c)) continue;
      fs::copy_file(node / c / "model.onnx", root / "tensor_proto" / (std::string(c) + "-model.onnx"),
                    fs::copy_options::overwrite_existing);
      for (const char* f : {"input_0.pb", "output_0.pb"})
        if (fs::exists(node / c / "test_data_set_0" / f))
          fs::copy_file(node / c / "test_data_set_0" / f,
                      root / "tensor_proto" / (std::string(c) + "-" + f),
                      fs::copy_options::overwrite_existing);
    }
  }
  std::puts("seeds written");
  return 0;
}
