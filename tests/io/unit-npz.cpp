// Tests of atomic file replacement, of the .npy / .npz reader and writer, and of loading a
// PyTorch state_dict saved by np.savez (tests/data/npz, written by numpy; see its README).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <zlib.h>

#include <qkit/io/atomic_file.hpp>
#include <qkit/io/npz.hpp>
#include <qkit/nn/activation.hpp>
#include <qkit/nn/batch_norm.hpp>
#include <qkit/nn/conv2d.hpp>
#include <qkit/nn/flatten.hpp>
#include <qkit/nn/linear.hpp>
#include <qkit/nn/pooling.hpp>
#include <qkit/nn/weights_file.hpp>

#include "io_test_util.hpp"

namespace unit_npz {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit::io;

using io_test::deflate_raw;
using io_test::format_error_of;

namespace {
fs::path out_dir(const std::string& sub) {
  fs::path p = fs::path(QKIT_TEST_OUTPUT) / "io" / sub;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}
std::string slurp(const fs::path& p) { return io_test::read_bytes(p); }
void spit(const fs::path& p, const std::string& s) { io_test::write_bytes(p, s); }
std::size_t files_in(const fs::path& dir) {
  return static_cast<std::size_t>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}
qkit::tensor ramp(const qkit::shape_type& shape, float scale) {
  qkit::tensor t(shape);
  for (std::size_t i = 0; i < t.size(); ++i) t.data()[i] = scale * static_cast<float>(i) - 1.5f;
  return t;
}
bool same(const qkit::tensor& a, const qkit::tensor& b) {
  if (a.shape() != b.shape()) return false;
  // An empty tensor's data() may be null, and memcmp on null is undefined (UBSan says so).
  return a.size() == 0 || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Minimal zip builder for reader tests: deflated (or stored) entries, optionally with numpy's
// zip64 placeholders in the local header.
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries, bool deflated,
                     bool zip64_local) {
  using qkit::io::detail::put_u16;
  using qkit::io::detail::put_u32;
  std::string body, dir;
  for (const auto& [name, data] : entries) {
    const std::string payload = deflated ? deflate_raw(data) : data;
    const auto crc = static_cast<std::uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(data.data()),
                                                      static_cast<uInt>(data.size())));
    const auto offset = static_cast<std::uint32_t>(body.size());
    put_u32(body, 0x04034b50u);
    put_u16(body, 45);
    put_u16(body, 0);
    put_u16(body, deflated ? 8 : 0);
    put_u16(body, 0);
    put_u16(body, 33);
    put_u32(body, crc);
    put_u32(body, zip64_local ? 0xFFFFFFFFu : static_cast<std::uint32_t>(payload.size()));
    put_u32(body, zip64_local ? 0xFFFFFFFFu : static_cast<std::uint32_t>(data.size()));
    put_u16(body, static_cast<std::uint32_t>(name.size()));
    put_u16(body, zip64_local ? 20 : 0);
    body += name;
    if (zip64_local) {
      put_u16(body, 1);
      put_u16(body, 16);
      put_u32(body, static_cast<std::uint32_t>(data.size()));
      put_u32(body, 0);
      put_u32(body, static_cast<std::uint32_t>(payload.size()));
      put_u32(body, 0);
    }
    body += payload;
    put_u32(dir, 0x02014b50u);
    put_u16(dir, 45);
    put_u16(dir, 45);
    put_u16(dir, 0);
    put_u16(dir, deflated ? 8 : 0);
    put_u16(dir, 0);
    put_u16(dir, 33);
    put_u32(dir, crc);
    put_u32(dir, static_cast<std::uint32_t>(payload.size()));
    put_u32(dir, static_cast<std::uint32_t>(data.size()));
    put_u16(dir, static_cast<std::uint32_t>(name.size()));
    put_u16(dir, 0);
    put_u16(dir, 0);
    put_u16(dir, 0);
    put_u16(dir, 0);
    put_u32(dir, 0);
    put_u32(dir, offset);
    dir += name;
  }
  std::string end;
  put_u32(end, 0x06054b50u);
  put_u16(end, 0);
  put_u16(end, 0);
  put_u16(end, static_cast<std::uint32_t>(entries.size()));
  put_u16(end, static_cast<std::uint32_t>(entries.size()));
  put_u32(end, static_cast<std::uint32_t>(dir.size()));
  put_u32(end, static_cast<std::uint32_t>(body.size()));
  put_u16(end, 0);
  return body + dir + end;
}
std::string npy_with_header(const std::string& dict, const std::string& data) {
  std::string h = dict;
  while ((10 + h.size() + 1) % 64 != 0) h.push_back(' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY\x01";
  out.push_back('\0');
  qkit::io::detail::put_u16(out, static_cast<std::uint32_t>(h.size()));
  return out + h + data;
}
}  // namespace

TEST_CASE("atomic_file: writes, replaces, and leaves no temporary") {
  const fs::path dir = out_dir("atomic");
  const fs::path target = dir / "file.txt";
  write_file_atomically(target, std::string_view("first"));
  CHECK(slurp(target) == "first");
  write_file_atomically(target, [](std::ostream& o) { o << "second " << 2; });
  CHECK(slurp(target) == "second 2");
  CHECK(files_in(dir) == 1);
}

TEST_CASE("atomic_file: a throwing writer leaves the old file untouched and no temporary") {
  const fs::path dir = out_dir("atomic_throw");
  const fs::path target = dir / "weights.bin";
  spit(target, "old content");
  CHECK_THROWS_AS(write_file_atomically(target,
                                        [](std::ostream& o) {
                                          o << std::string(100000, 'x');  // partly written
                                          throw std::runtime_error("writer failed midway");
                                        }),
                  std::runtime_error);
  CHECK(slurp(target) == "old content");
  CHECK(files_in(dir) == 1);

  // A directory that does not exist: qkit::error, nothing created.
  CHECK_THROWS_AS(write_file_atomically(dir / "missing" / "f.txt", std::string_view("x")), qkit::error);
  CHECK(files_in(dir) == 1);
}

TEST_CASE("npz: round trip keeps names, order, shapes and bits") {
  const fs::path dir = out_dir("npz");
  npz_arrays arrays;
  arrays.emplace_back("features.0.conv.weight", ramp({4, 1, 3, 3}, 0.37f));
  arrays.emplace_back("features.0.conv.bias", ramp({4}, -1.0f));
  arrays.emplace_back("classifier.weight", ramp({10, 7}, 1e-3f));
  arrays.emplace_back("empty", qkit::tensor(qkit::shape_type{0, 3}));
  qkit::tensor scalar(qkit::shape_type{});
  scalar() = 3.25f;
  arrays.emplace_back("scalar", scalar);
  arrays[2].second(0, 0) = std::nanf("");  // NaN bits survive a file round trip too
  const fs::path file = dir / "weights.npz";
  save_npz(file, arrays);
  CHECK(files_in(dir) == 1);

  const npz_arrays back = load_npz(file);
  REQUIRE(back.size() == arrays.size());
  for (std::size_t i = 0; i < arrays.size(); ++i) {
    CHECK(back[i].first == arrays[i].first);
    CHECK(same(back[i].second, arrays[i].second));
  }
  CHECK(npz_find(back, "features.0.conv.bias")(3) == doctest::Approx(-4.5f));
  const std::string missing = format_error_of([&] { npz_find(back, "nope"); });
  CHECK(missing.find("classifier.weight") != std::string::npos);

  // Writing the same arrays again gives the same bytes (fixed timestamps).
  const std::string first = slurp(file);
  save_npz(dir / "again.npz", arrays);
  CHECK(slurp(dir / "again.npz") == first);

  // A std::map works as input; load_npz_map keys by name.
  std::map<std::string, qkit::tensor> m{{"b", ramp({2, 2}, 1.f)}, {"a", ramp({3}, 2.f)}};
  save_npz(dir / "map.npz", m);
  const auto mb = load_npz_map(dir / "map.npz");
  REQUIRE(mb.size() == 2);
  CHECK(same(mb.at("a"), m.at("a")));
  CHECK(same(mb.at("b"), m.at("b")));

  // Duplicate names are refused before anything is written.
  npz_arrays dup{{"x", ramp({1}, 1.f)}, {"x", ramp({1}, 1.f)}};
  CHECK_THROWS_AS(save_npz(dir / "dup.npz", dup), qkit::error);
  CHECK_FALSE(fs::exists(dir / "dup.npz"));
}

TEST_CASE("npz: the .npy header is numpy's format 1.0 with 64-byte aligned data (as np.save writes it)") {
  const std::string npy = qkit::io::detail::npy_bytes(ramp({2, 3}, 1.f));
  REQUIRE(npy.size() == 128 + 24);
  CHECK(npy.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  CHECK(npy.find("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }") == 10);
  CHECK(npy[127] == '\n');
  const std::string one = qkit::io::detail::npy_bytes(ramp({5}, 1.f));
  CHECK(one.find("'shape': (5,)") != std::string::npos);

  const fs::path dir = out_dir("npy");
  save_npy(dir / "a.npy", ramp({2, 3}, 0.5f));
  CHECK(same(load_npy(dir / "a.npy"), ramp({2, 3}, 0.5f)));
}

TEST_CASE("npz: reads deflated entries with numpy's zip64 local headers, float64 and Fortran order") {
  const fs::path dir = out_dir("npz_read");
  const qkit::tensor a = ramp({3, 4}, 0.25f);
  const std::string a_npy = qkit::io::detail::npy_bytes(a);
  // float64 [2,2] in Fortran order: memory holds column-major 1,3,2,4 for [[1,2],[3,4]].
  std::string f64;
  for (double v : {1.0, 3.0, 2.0, 4.0}) f64.append(reinterpret_cast<const char*>(&v), 8);
  const std::string b_npy = npy_with_header("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 2), }", f64);

  for (bool deflated : {false, true}) {
    const fs::path file = dir / (deflated ? "deflated.npz" : "stored.npz");
    spit(file, make_zip({{"a.npy", a_npy}, {"b.npy", b_npy}}, deflated, /*zip64_local=*/true));
    const npz_arrays back = load_npz(file);
    REQUIRE(back.size() == 2);
    CHECK(back[0].first == "a");
    CHECK(same(back[0].second, a));
    CHECK(back[1].first == "b");
    REQUIRE(back[1].second.shape() == qkit::shape_type{2, 2});
    CHECK(back[1].second(0, 0) == 1.0f);
    CHECK(back[1].second(0, 1) == 2.0f);
    CHECK(back[1].second(1, 0) == 3.0f);
    CHECK(back[1].second(1, 1) == 4.0f);
  }
}

TEST_CASE("npz: corrupt archives and arrays are format errors naming file and entry") {
  const fs::path dir = out_dir("npz_bad");
  const qkit::tensor a = ramp({3, 4}, 0.25f);
  const fs::path good = dir / "good.npz";
  save_npz(good, npz_arrays{{"layer1.weight", a}});
  const std::string bytes = slurp(good);

  SUBCASE("not a zip") {
    spit(dir / "text.npz", "this is not a zip archive at all, just text........");
    const auto m = format_error_of([&] { load_npz(dir / "text.npz"); });
    CHECK(m.find("text.npz") != std::string::npos);
    CHECK(m.find("end-of-central-directory") != std::string::npos);
  }
  SUBCASE("truncated archive") {
    spit(dir / "cut.npz", bytes.substr(0, bytes.size() / 2));
    const auto m = format_error_of([&] { load_npz(dir / "cut.npz"); });
    CHECK(m.find("cut.npz") != std::string::npos);
  }
  SUBCASE("flipped data byte: CRC mismatch names the entry") {
    std::string b = bytes;
    b[30 + 17 + 70] ^= 0x55;  // inside the float data of the first entry
    spit(dir / "crc.npz", b);
    const auto m = format_error_of([&] { load_npz(dir / "crc.npz"); });
    CHECK(m.find("crc.npz") != std::string::npos);
    CHECK(m.find("layer1.weight.npy") != std::string::npos);
    CHECK(m.find("CRC") != std::string::npos);
  }
  SUBCASE("bad npy magic") {
    spit(dir / "magic.npz", make_zip({{"w.npy", "NOTNUMPY-------"}}, false, false));
    const auto m = format_error_of([&] { load_npz(dir / "magic.npz"); });
    CHECK(m.find("entry 'w.npy'") != std::string::npos);
    CHECK(m.find("bad magic") != std::string::npos);
  }
  SUBCASE("unsupported dtype") {
    // complex64, a two-byte type without byte order, a float width numpy has no dtype for,
    // a structured dtype
    for (const std::string descr : {"<c8", "|i2", "<f3", "[('a', '<f4')]"}) {
      CAPTURE(descr);
      const std::string header = "{'descr': " + (descr[0] == '[' ? descr : "'" + descr + "'") +
                                 ", 'fortran_order': False, 'shape': (1,), }";
      spit(dir / "dtype.npz", make_zip({{"idx.npy", npy_with_header(header, std::string(8, '\0'))}}, true, false));
      const auto m = format_error_of([&] { load_npz(dir / "dtype.npz"); });
      CHECK(m.find("dtype.npz") != std::string::npos);
      CHECK(m.find("entry 'idx.npy'") != std::string::npos);
      CHECK(m.find("unsupported dtype") != std::string::npos);
    }
  }
  SUBCASE("bool byte other than 0 or 1") {
    spit(dir / "bool.npz", make_zip({{"mask.npy", npy_with_header("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }", std::string("\x01\x02\x00", 3))}}, false, false));
    const auto m = format_error_of([&] { load_npz_entries(dir / "bool.npz"); });
    CHECK(m.find("entry 'mask.npy'") != std::string::npos);
    CHECK(m.find("bool element 1 holds byte 2") != std::string::npos);
  }
  SUBCASE("array data shorter than its shape") {
    spit(dir / "short.npz", make_zip({{"s.npy", npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", std::string(20, '\0'))}}, false, false));
    const auto m = format_error_of([&] { load_npz(dir / "short.npz"); });
    CHECK(m.find("entry 's.npy'") != std::string::npos);
    CHECK(m.find("needs 24 bytes of data, found 20 (truncated)") != std::string::npos);
  }
  SUBCASE("corrupt deflate stream") {
    std::string z = make_zip({{"d.npy", qkit::io::detail::npy_bytes(a)}}, true, false);
    for (std::size_t i = 40; i < 60; ++i) z[i] = static_cast<char>(0xFF);
    spit(dir / "inflate.npz", z);
    const auto m = format_error_of([&] { load_npz(dir / "inflate.npz"); });
    CHECK(m.find("entry 'd.npy'") != std::string::npos);
  }
}

// ---- integer and float16 entries; PyTorch state_dicts -----------------------------------------

namespace {
const fs::path npz_data = fs::path(QKIT_SOURCE_DIR) / "tests" / "data" / "npz";

std::vector<float> values_of(const qkit::tensor& t) { return {t.data(), t.data() + t.size()}; }
const npz_entry& entry_named(const npz_entries& es, const std::string& name) {
  for (const auto& e : es)
    if (e.name == name) return e;
  FAIL("no entry ", name);
  throw std::logic_error("unreachable");
}
float pow2(int e) { return std::ldexp(1.0f, e); }

// The model tests/data/npz/torch_state_dict.npz was written for, with PyTorch's child names:
// Sequential(Conv2d(1, 2, 2), BatchNorm2d(2), ReLU(), AdaptiveAvgPool2d(1), Flatten(),
// Linear(2, 3)) names its parameters 0.*, 1.* and 5.*.
auto torch_like_model() {
  using namespace qkit::nn;
  return sequential(conv2d(1, 2, 2), batch_norm(2), relu{}, global_avg_pool{}, flatten{},
                    linear(2, 3));
}
}  // namespace

TEST_CASE("npz: reads every integer, bool and float16 dtype numpy writes, either byte order") {
  const npz_entries es = load_npz_entries(npz_data / "dtypes.npz");
  REQUIRE(es.size() == 16);
  CHECK(es[0].name == "i1");  // archive order
  struct expected {
    const char* name;
    const char* dtype;
    qkit::shape_type shape;
    std::vector<float> values;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<expected> table = {
      {"i1", "int8", {3}, {-128, 127, -1}},
      {"u1", "uint8", {2}, {0, 255}},
      {"i2_be", "int16", {2}, {-300, 12345}},
      {"u2", "uint16", {1}, {65535}},
      {"i4", "int32", {2}, {-16777216, 16777216}},
      {"u4_be", "uint32", {1}, {4294967040.0f}},
      {"i8", "int64", {2}, {-pow2(40), 3}},
      {"i8_scalar", "int64", {}, {-7}},
      {"u8_be", "uint64", {1}, {pow2(63)}},
      {"bool", "bool", {3}, {1, 0, 1}},
      {"f2", "float16", {6}, {1.0f, -2.5f, 65504.0f, pow2(-14), pow2(-24), inf}},
      {"f2_be", "float16", {1}, {0.5f}},
      {"f4_be", "float32", {2}, {1.5f, -0.0f}},
      {"f4_scalar", "float32", {}, {2.5f}},
      {"f8_be", "float64", {2}, {0.1f, -3.0f}},
      {"i2_fortran", "int16", {2, 3}, {1, 2, 3, 4, 5, 6}},  // stored column-major
  };
  for (const auto& x : table) {
    CAPTURE(x.name);
    const npz_entry& e = entry_named(es, x.name);
    CHECK(e.dtype.name() == x.dtype);
    CHECK(e.dtype.is_floating() == (std::string(x.dtype).rfind("float", 0) == 0));
    CHECK(e.exact);
    CHECK(e.values.shape() == x.shape);
    CHECK(values_of(e.values) == x.values);
  }
  CHECK(entry_named(es, "i2_be").dtype.big_endian);
  CHECK_FALSE(entry_named(es, "i4").dtype.big_endian);
  CHECK(std::signbit(entry_named(es, "f4_be").values(1)));

  // The float-only reader gives the same values without the dtypes.
  const npz_arrays arrays = load_npz(npz_data / "dtypes.npz");
  REQUIRE(arrays.size() == es.size());
  for (std::size_t i = 0; i < es.size(); ++i) {
    CHECK(arrays[i].first == es[i].name);
    CHECK(same(arrays[i].second, es[i].values));
  }
}

TEST_CASE("npz: an integer float32 cannot hold exactly is refused by the float-only readers") {
  const fs::path dir = out_dir("npz_inexact");
  std::string data;
  for (std::int64_t v : {std::int64_t(1) << 24, (std::int64_t(1) << 24) + 1}) {
    data.append(reinterpret_cast<const char*>(&v), 8);  // little-endian host
  }
  const std::string npy =
      npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", data);
  spit(dir / "big.npz", make_zip({{"steps.npy", npy}}, false, false));
  spit(dir / "big.npy", npy);

  const npz_entries es = load_npz_entries(dir / "big.npz");
  REQUIRE(es.size() == 1);
  CHECK_FALSE(es[0].exact);
  CHECK(values_of(es[0].values) == std::vector<float>{16777216.0f, 16777216.0f});  // rounded

  const auto m = format_error_of([&] { load_npz(dir / "big.npz"); });
  CHECK(m.find("big.npz") != std::string::npos);
  CHECK(m.find("entry 'steps.npy'") != std::string::npos);
  CHECK(m.find("int64 array holds a value float32 cannot represent exactly") != std::string::npos);
  CHECK(format_error_of([&] { load_npy(dir / "big.npy"); }).find("cannot represent exactly") !=
        std::string::npos);
}

TEST_CASE("load_weights: a PyTorch state_dict saved with np.savez loads by name") {
  const npz_entries es = load_npz_entries(npz_data / "torch_state_dict.npz");
  const npz_entry& counter = entry_named(es, "1.num_batches_tracked");
  CHECK(counter.dtype.name() == "int64");
  CHECK(counter.values.dimension() == 0);
  CHECK(counter.values() == 7.0f);

  auto model = torch_like_model();
  qkit::nn::load_weights(model, npz_data / "torch_state_dict.npz");
  const auto param = [&](const std::string& name) {
    const qkit::tensor* p = qkit::nn::find_parameter(model, name);
    REQUIRE(p != nullptr);
    return values_of(*p);
  };
  // The numbers typed into tests/data/npz/README.md's script.
  CHECK(qkit::nn::find_parameter(model, "0.weight")->shape() == qkit::shape_type{2, 1, 2, 2});
  CHECK(param("0.weight") == std::vector<float>{0.5f, -0.25f, 1.0f, 0.75f, -1.0f, 0.5f, 0.25f, -0.5f});
  CHECK(param("0.bias") == std::vector<float>{0.125f, -0.25f});
  CHECK(param("1.weight") == std::vector<float>{1.5f, 0.5f});
  CHECK(param("1.bias") == std::vector<float>{0.25f, -0.5f});
  CHECK(param("1.running_mean") == std::vector<float>{0.5f, -0.25f});
  CHECK(param("1.running_var") == std::vector<float>{4.0f, 0.25f});
  CHECK(param("5.weight") == std::vector<float>{1.0f, -0.5f, 0.25f, 2.0f, -1.5f, 0.125f});  // float16
  CHECK(param("5.bias") == std::vector<float>{0.1f, -0.2f, 0.3f});  // float64, rounded

  // The output numpy computed in float64 for x = arange(9) / 4 - 1 (README).
  qkit::tensor x(qkit::shape_type{1, 1, 3, 3});
  for (std::size_t i = 0; i < 9; ++i) x.data()[i] = static_cast<float>(i) / 4.0f - 1.0f;
  const qkit::tensor y = qkit::nn::forward(model, x);
  REQUIRE(y.shape() == qkit::shape_type{1, 3});
  CHECK(y(0, 0) == doctest::Approx(0.52187603).epsilon(1e-6));
  CHECK(y(0, 1) == doctest::Approx(-0.06133385).epsilon(1e-5));
  CHECK(y(0, 2) == doctest::Approx(-0.34257791).epsilon(1e-6));
}

TEST_CASE("load_weights: integer entries on float names, stray counters and truncated files are format errors") {
  const fs::path dir = out_dir("torch_bad");
  const fs::path good = npz_data / "torch_state_dict.npz";
  // The good file's arrays as float32 .npy images, the counter as int64 0-d, to rebuild
  // variants of it.
  std::vector<std::pair<std::string, std::string>> images;
  for (const auto& [name, t] : load_npz(good))
    if (name != "1.num_batches_tracked") images.emplace_back(name + ".npy", qkit::io::detail::npy_bytes(t));
  const auto int64_npy = [](const std::string& shape, std::vector<std::int64_t> v) {
    std::string data;
    for (auto x : v) data.append(reinterpret_cast<const char*>(&x), 8);
    return npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': " + shape + ", }", data);
  };
  const std::string counter = int64_npy("()", {7});

  auto model = torch_like_model();
  const auto before = qkit::nn::state_dict(model);
  const auto unchanged = [&] {
    const auto now = qkit::nn::state_dict(model);
    REQUIRE(now.size() == before.size());
    for (std::size_t i = 0; i < now.size(); ++i) CHECK(same(now[i].second, before[i].second));
  };
  const auto load_variant = [&](const std::string& file, auto edit) {
    auto entries = images;
    entries.emplace_back("1.num_batches_tracked.npy", counter);
    edit(entries);
    spit(dir / file, make_zip(entries, false, false));
    return format_error_of([&] { qkit::nn::load_weights(model, dir / file); });
  };

  SUBCASE("the rebuilt file loads (so each variant's error is its edit's)") {
    const auto m = load_variant("same.npz", [](auto&) {});
    CHECK(m == "<no format_error>");
  }
  SUBCASE("an integer entry under a float parameter's name") {
    const auto m = load_variant("int_var.npz", [&](auto& es) {
      for (auto& [n, bytes] : es)
        if (n == "1.running_var.npy") bytes = int64_npy("(2,)", {4, 1});
    });
    CHECK(m.find("weights file '" + (dir / "int_var.npz").string() + "'") != std::string::npos);
    CHECK(m.find("not floating-point: 1.running_var (file int64, model float32)") != std::string::npos);
    CHECK(m.find("unexpected") == std::string::npos);
    unchanged();
  }
  SUBCASE("a float num_batches_tracked is unexpected") {
    const auto m = load_variant("float_counter.npz", [&](auto& es) {
      qkit::tensor seven(qkit::shape_type{});
      seven() = 7.0f;
      es.back().second = qkit::io::detail::npy_bytes(seven);
    });
    CHECK(m.find("float_counter.npz") != std::string::npos);
    CHECK(m.find("unexpected: 1.num_batches_tracked") != std::string::npos);
    unchanged();
  }
  SUBCASE("a counter under a layer that is no batch norm, or under no layer, is unexpected") {
    const auto m = load_variant("stray_counter.npz", [&](auto& es) {
      es.emplace_back("0.num_batches_tracked.npy", counter);
      es.emplace_back("7.num_batches_tracked.npy", counter);
    });
    CHECK(m.find("unexpected: 0.num_batches_tracked, 7.num_batches_tracked") != std::string::npos);
    unchanged();
  }
  SUBCASE("an entry given twice") {
    const auto m = load_variant("twice.npz", [&](auto& es) { es.push_back(es.front()); });
    CHECK(m.find("given twice: 0.weight") != std::string::npos);
    unchanged();
  }
  SUBCASE("truncated file") {
    const std::string bytes = slurp(good);
    for (std::size_t keep : {bytes.size() - 1, bytes.size() / 2, std::size_t(10)}) {
      CAPTURE(keep);
      spit(dir / "cut.npz", bytes.substr(0, keep));
      const auto m = format_error_of([&] { qkit::nn::load_weights(model, dir / "cut.npz"); });
      CHECK(m.find("cut.npz") != std::string::npos);
      CHECK(m.find("not a valid zip/npz archive") != std::string::npos);
    }
    unchanged();
  }
}
}  // namespace unit_npz
