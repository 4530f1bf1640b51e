// Tests that qkit's readers of untrusted files check every size a file states against the
// file's real length (and a stated bound) before allocating, and refuse out-of-range values by
// name: each case is a small hand-made bad file and the exact qkit error type it must give.
// Several are inputs the fuzz targets (fuzz/) found or were seeded with.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include <zlib.h>

#include <qkit/io/encodings_file.hpp>
#include <qkit/io/idx.hpp>
#include <qkit/io/npz.hpp>
#include <qkit/io/tensor_proto.hpp>

#include "io_test_util.hpp"

namespace unit_reader_limits {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit::io;
using qkit::io::detail::put_u16;
using qkit::io::detail::put_u32;

using io_test::format_error_of;

namespace {
fs::path limits_dir() {
  fs::path p = fs::path(QKIT_TEST_OUTPUT) / "io" / "limits";
  fs::create_directories(p);
  return p;
}
fs::path write(const std::string& name, const std::string& bytes) {
  const fs::path p = limits_dir() / name;
  io_test::write_bytes(p, bytes);
  return p;
}
std::string be32(std::uint32_t v) {
  return {char(v >> 24), char((v >> 16) & 0xFF), char((v >> 8) & 0xFF), char(v & 0xFF)};
}
void put_u64(std::string& s, std::uint64_t v) {
  put_u32(s, static_cast<std::uint32_t>(v));
  put_u32(s, static_cast<std::uint32_t>(v >> 32));
}
std::string deflate_raw(const std::string& in) { return io_test::deflate_raw(in, 9); }
/// A one-entry zip holding `data` deflated, whose directory states `claimed` uncompressed
/// bytes (through a zip64 extra field when that does not fit 32 bits).
std::string deflated_zip(const std::string& data, std::uint64_t claimed) {
  const std::string name = "a.npy", payload = deflate_raw(data);
  const auto crc = static_cast<std::uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
  const bool z64 = claimed >= 0xFFFFFFFFu;
  const auto claimed32 = z64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(claimed);
  std::string body, dir, end;
  put_u32(body, 0x04034b50u); put_u16(body, 20); put_u16(body, 0); put_u16(body, 8);
  put_u16(body, 0); put_u16(body, 33); put_u32(body, crc);
  put_u32(body, static_cast<std::uint32_t>(payload.size())); put_u32(body, claimed32);
  put_u16(body, static_cast<std::uint32_t>(name.size())); put_u16(body, 0);
  body += name + payload;
  put_u32(dir, 0x02014b50u); put_u16(dir, 45); put_u16(dir, 45); put_u16(dir, 0);
  put_u16(dir, 8); put_u16(dir, 0); put_u16(dir, 33); put_u32(dir, crc);
  put_u32(dir, static_cast<std::uint32_t>(payload.size())); put_u32(dir, claimed32);
  put_u16(dir, static_cast<std::uint32_t>(name.size())); put_u16(dir, z64 ? 12 : 0);
  put_u16(dir, 0); put_u16(dir, 0); put_u16(dir, 0); put_u32(dir, 0); put_u32(dir, 0);
  dir += name;
  if (z64) {
    put_u16(dir, 1); put_u16(dir, 8); put_u64(dir, claimed);
  }
  put_u32(end, 0x06054b50u); put_u16(end, 0); put_u16(end, 0); put_u16(end, 1); put_u16(end, 1);
  put_u32(end, static_cast<std::uint32_t>(dir.size()));
  put_u32(end, static_cast<std::uint32_t>(body.size())); put_u16(end, 0);
  return body + dir + end;
}
std::string small_npy() {
  qkit::tensor t(qkit::shape_type{2, 2});
  for (std::size_t i = 0; i < 4; ++i) t.data()[i] = static_cast<float>(i);
  return qkit::io::detail::npy_bytes(t);
}
}  // namespace

TEST_CASE("npz limits: a deflated entry's claimed size is bounded by its compressed bytes before any allocation") {
  const std::string npy = small_npy();
  SUBCASE("the honest file loads") {
    const auto p = write("honest.npz", deflated_zip(npy, npy.size()));
    CHECK(load_npz(p).size() == 1);
  }
  SUBCASE("a file of a few hundred bytes claiming 2^62 bytes is a format_error") {
    const std::string bytes = deflated_zip(npy, std::uint64_t{1} << 62);
    CHECK(bytes.size() < 300);
    const auto p = write("claims-2e62.npz", bytes);
    const auto m = format_error_of([&] { load_npz(p); });
    CHECK(m.find("entry 'a.npy': entry claims 4611686018427387904 uncompressed bytes from") !=
          std::string::npos);
    CHECK(m.find("corrupt size?") != std::string::npos);
    CHECK_THROWS_AS(load_npz_entries(p), qkit::format_error);
  }
  SUBCASE("2^64 - 1 and 3 GiB claims are format_errors too") {
    CHECK_THROWS_AS(load_npz(write("claims-max.npz", deflated_zip(npy, ~std::uint64_t{0}))),
                    qkit::format_error);
    CHECK_THROWS_AS(load_npz(write("claims-3g.npz", deflated_zip(npy, 3ull << 30))),
                    qkit::format_error);
  }
  SUBCASE("a claim within the bound but beyond the data is corrupt, not an over-read") {
    const auto p = write("claims-more.npz", deflated_zip(npy, npy.size() + 1));
    CHECK(format_error_of([&] { load_npz(p); }).find("deflated data is corrupt or truncated") !=
          std::string::npos);
  }
  SUBCASE("a claim smaller than the data: the stream does not end within it") {
    const auto p = write("claims-less.npz", deflated_zip(npy, npy.size() - 1));
    CHECK(format_error_of([&] { load_npz(p); }).find("deflated data is corrupt or truncated") !=
          std::string::npos);
  }
}

TEST_CASE("npz limits: an .npy shape with a 0 must not have other dims whose product overflows") {
  std::string h = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 999999999999999, 999999999999999), }";
  h.append(128 - 10 - h.size() - 1, ' ');
  h.push_back('\n');
  std::string npy = std::string("\x93NUMPY\x01\x00", 8);
  put_u16(npy, static_cast<std::uint32_t>(h.size()));
  npy += h;
  const auto p = write("zero-huge.npy", npy);
  CHECK(format_error_of([&] { load_npy(p); }).find("implausible shape (0, 999999999999999") !=
        std::string::npos);
}

TEST_CASE("npz limits: a zip64 end record offset near 2^64 does not wrap around the length check") {
  // An empty archive whose end record sends the reader to a zip64 record at 2^64 - 8; leading
  // bytes (which zip allows) make the file longer than the wrapped-around 2^64 - 8 + 56.
  std::string b(64, '\0');
  put_u32(b, 0x07064b50u);  // zip64 locator
  put_u32(b, 0);
  put_u64(b, ~std::uint64_t{0} - 7);
  put_u32(b, 1);
  put_u32(b, 0x06054b50u);
  put_u16(b, 0); put_u16(b, 0); put_u16(b, 0xFFFF); put_u16(b, 0xFFFF);
  put_u32(b, 0xFFFFFFFFu); put_u32(b, 0xFFFFFFFFu); put_u16(b, 0);
  const auto p = write("zip64-wrap.npz", b);
  CHECK(format_error_of([&] { load_npz(p); }).find("zip64 end record missing at offset "
                                                   "18446744073709551608") != std::string::npos);
}

TEST_CASE("idx limits: header sizes are checked against the file before allocating") {
  SUBCASE("a 16-byte plain file announcing 60000 images of 4096x4096") {
    const auto p = write("claims-gigabytes.idx3", be32(0x803) + be32(60000) + be32(4096) + be32(4096));
    REQUIRE(fs::file_size(p) == 16);
    const auto m = format_error_of([&] { read_idx_images(p.string()); });
    CHECK(m.find("header announces 60000x4096x4096 images of pixel data (1006632960000 bytes) "
                 "but the file can hold at most 0") != std::string::npos);
    // With a limit, the first images must still be there.
    CHECK_THROWS_AS(read_idx_images(p.string(), 1), qkit::format_error);
  }
  SUBCASE("dimensions whose product does not fit 64 bits") {
    const auto p = write("overflow.idx3", be32(0x803) + be32(0xFFFFFFFFu) + be32(0xFFFFFFFFu) +
                                              be32(0xFFFFFFFFu));
    CHECK(format_error_of([&] { read_idx_images(p.string()); })
              .find("more bytes than can be counted") != std::string::npos);
  }
  SUBCASE("a gzip file can hold at most 1032 times its size") {
    const fs::path p = limits_dir() / "claims.idx1.gz";
    gzFile f = gzopen(p.c_str(), "wb");
    const std::string header = be32(0x801) + be32(0x7FFFFFFFu);
    gzwrite(f, header.data(), static_cast<unsigned>(header.size()));
    gzclose(f);
    const auto m = format_error_of([&] { read_idx_labels(p.string()); });
    CHECK(m.find("header announces 2147483647 labels") != std::string::npos);
    CHECK(m.find("but the file can hold at most") != std::string::npos);
  }
  SUBCASE("an exact file still reads") {
    const auto p = write("ok.idx1", be32(0x801) + be32(3) + std::string("\x01\x02\x03", 3));
    CHECK(read_idx_labels(p.string()) == std::vector<std::uint8_t>{1, 2, 3});
  }
}

TEST_CASE("encodings limits: offset, scale and bitwidth out of range are format_errors naming the tensor") {
  const auto v1 = [](const std::string& bw, const std::string& scale, const std::string& offset) {
    return R"({"version": "1.0.0", "param_encodings": [{"name": "fc.weight", "dtype": "INT",
      "enc_type": "PER_TENSOR", "bw": )" + bw + R"(, "is_sym": true, "scale": [)" + scale +
           R"(], "offset": [)" + offset + "]}]}";
  };
  const auto v061 = [](const std::string& bw, const std::string& scale, const std::string& offset,
                       const std::string& min = "-1.0", const std::string& max = "1.0") {
    return R"({"version": "0.6.1", "activation_encodings": {"conv.out": [{"bitwidth": )" + bw +
           R"(, "dtype": "int", "is_symmetric": "False", "max": )" + max + R"(, "min": )" + min +
           R"(, "offset": )" + offset + R"(, "scale": )" + scale + "}]}}";
  };
  const auto message = [&](const std::string& name, const std::string& text) {
    const auto p = write(name, text);
    return format_error_of([&] { read_encodings(p); });
  };
  SUBCASE("in range: both formats read") {
    CHECK(read_encodings(write("ok1.encodings", v1("8", "0.5", "-128"))).param_encodings.size() == 1);
    CHECK(read_encodings(write("ok0.encodings", v061("8", "0.0078", "-128")))
              .activation_encodings.size() == 1);
    // AIMET's 32-bit pass-through entry may carry scale 0.
    CHECK(read_encodings(write("pt.encodings", v061("32", "0.0", "0"))).activation_encodings.size() == 1);
  }
  SUBCASE("|offset| beyond 2^bitwidth") {
    auto m = message("off1.encodings", v1("8", "0.5", "-257"));
    CHECK(m.find("param_encodings 'fc.weight' channel 0: offset -257 is outside what 8 bits allow "
                 "(|offset| <= 256)") != std::string::npos);
    m = message("off0.encodings", v061("4", "0.5", "17"));
    CHECK(m.find("activation_encodings 'conv.out': offset 17 is outside what 4 bits allow") !=
          std::string::npos);
    CHECK(message("off-huge.encodings", v1("32", "0.5", "-9000000000000000"))
              .find("'fc.weight' channel 0: offset") != std::string::npos);
  }
  // JSON text cannot hold an infinity (nlohmann refuses 1e999), but a document built in memory
  // can: encodings_from_json gets the same checks as read_encodings.
  const auto from_doc = [](const std::string& text, auto&& edit) {
    nlohmann::json doc = nlohmann::json::parse(text);
    edit(doc);
    return format_error_of([&] { encodings_from_json(doc, "mem"); });
  };
  const double inf = std::numeric_limits<double>::infinity();
  SUBCASE("non-finite, zero or negative scale") {
    CHECK(message("inf-text.encodings", v061("8", "1e999", "-128")).find("is not valid JSON") !=
          std::string::npos);
    CHECK(from_doc(v061("8", "0.5", "-128"), [&](auto& d) {
            d["activation_encodings"]["conv.out"][0]["scale"] = inf;
          }).find("'conv.out': encoding field \"scale\" is not finite") != std::string::npos);
    CHECK(from_doc(v061("8", "0.5", "-128"), [&](auto& d) {
            d["activation_encodings"]["conv.out"][0]["scale"] = std::nan("");
          }).find("'conv.out': encoding field \"scale\" is not finite") != std::string::npos);
    CHECK(from_doc(v1("8", "0.5", "-128"), [&](auto& d) {
            d["param_encodings"][0]["scale"][0] = inf;
          }).find("'fc.weight' channel 0: scale inf must be finite") != std::string::npos);
    CHECK(message("zero1.encodings", v1("8", "0", "-128")).find("'fc.weight' channel 0: scale 0") !=
          std::string::npos);
    CHECK(message("neg0.encodings", v061("32", "-1.0", "0")).find("'conv.out': scale -1") !=
          std::string::npos);
    // A finite scale whose grid reaches infinity.
    CHECK(message("huge1.encodings", v1("8", "1e308", "-128"))
              .find("'fc.weight' channel 0: min -inf and max inf must be finite") != std::string::npos);
  }
  SUBCASE("infinite min or max in 0.6.1") {
    CHECK(from_doc(v061("8", "0.5", "-128"), [&](auto& d) {
            d["activation_encodings"]["conv.out"][0]["min"] = -inf;
            d["activation_encodings"]["conv.out"][0]["max"] = inf;
          }).find("'conv.out': encoding field \"max\" is not finite") != std::string::npos);
  }
  SUBCASE("bitwidth outside 2..32") {
    CHECK(message("bw1.encodings", v1("33", "0.5", "0"))
              .find("'fc.weight': bitwidth 33 is outside 2..32") != std::string::npos);
    CHECK(message("bw0.encodings", v061("1", "0.5", "0")).find("'conv.out'") != std::string::npos);
  }
}

namespace {
std::string varint(std::uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}
std::string tensor_with_dims(std::initializer_list<std::uint64_t> dims, int data_type,
                             const std::string& raw) {
  std::string s;
  for (auto d : dims) s += "\x08" + varint(d);  // field 1 (dims), varint
  s += "\x10" + varint(static_cast<std::uint64_t>(data_type));
  s += "\x4a" + varint(raw.size()) + raw;  // field 9 (raw_data)
  return s;
}
}  // namespace

TEST_CASE("tensor_proto limits: dims are checked against the data before allocating") {
  SUBCASE("a tiny file claiming 2^80 elements") {
    const auto p = write("dims-2e80.pb", tensor_with_dims({1ull << 40, 1ull << 40}, 1, "abcd"));
    CHECK(format_error_of([&] { read_tensor_proto(p.string()); }).find("implausible dims") !=
          std::string::npos);
  }
  SUBCASE("a zero dimension does not excuse a huge one after it") {
    const auto p = write("dims-zero-huge.pb", tensor_with_dims({0, 1ull << 60, 1ull << 60}, 1, ""));
    CHECK(format_error_of([&] { read_tensor_proto(p.string()); }).find("implausible dims") !=
          std::string::npos);
  }
  SUBCASE("zero elements, but strides beyond 2^48 (found by fuzz_tensor_proto: UBSan signed "
          "overflow in xtensor's strides)") {
    const auto p = write("dims-zero-strides.pb", tensor_with_dims({0, 1ull << 25, 1ull << 25}, 1, ""));
    CHECK(format_error_of([&] { read_tensor_proto(p.string()); }).find("implausible dims") !=
          std::string::npos);
    // The fuzzer's own input (its tensor name holds a NUL byte, which cuts what() short, so only
    // the type is checked).
    const fs::path found =
        fs::path(QKIT_SOURCE_DIR) / "fuzz/corpus/tensor_proto/zero-dim-stride-overflow.pb";
    CHECK_THROWS_AS(read_tensor_proto(found.string()), qkit::format_error);
  }
  SUBCASE("to_tensor refuses an onnx_tensor whose values do not match its dims") {
    onnx_tensor t;
    t.name = "hand";
    t.data_type = 1;
    t.dims = {2, 3};
    t.floats = {1.0f, 2.0f};
    CHECK(format_error_of([&] { to_tensor(t); }).find("tensor 'hand' has dims [2, 3] (6 elements) "
                                                      "but holds 2 values") != std::string::npos);
    t.dims = {0, 1ll << 40, 1ll << 40};
    t.floats.clear();
    CHECK(format_error_of([&] { to_tensor(t); }).find("implausible dims") != std::string::npos);
  }
  SUBCASE("2^40 elements announced, 4 bytes of raw data present") {
    const auto p = write("dims-2e40.pb", tensor_with_dims({1ull << 20, 1ull << 20}, 1, "abcd"));
    CHECK(format_error_of([&] { read_tensor_proto(p.string()); })
              .find("raw_data has 4 bytes, expected 4398046511104") != std::string::npos);
  }
  SUBCASE("the honest tensor reads") {
    const auto t = read_tensor_proto(write("ok.pb", tensor_with_dims({2}, 3, "\x01\xff")).string());
    CHECK(t.ints == std::vector<std::int64_t>{1, -1});
  }
}
}  // namespace unit_reader_limits
