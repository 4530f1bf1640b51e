// Encodings files: both AIMET formats round-trip exactly (per-channel, float16, negative
// offsets), AIMET-written text parses, and every kind of bad file is a format_error naming it.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <qkit/io/encodings_file.hpp>

namespace unit_encodings_file {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using qkit::encoding;
using qkit::io::encodings_file;
using qkit::io::format_version;

namespace {

fs::path out_dir() {
  fs::path d = fs::path(QKIT_TEST_OUTPUT) / "export";
  fs::create_directories(d);
  return d;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

encodings_file sample_file() {
  encodings_file f;
  // Asymmetric activation with a negative offset, 8 bits.
  f.activation_encodings["input"] = {qkit::encoding_from_range(-1.3, 2.7, 8)};
  // 16-bit activation.
  f.activation_encodings["conv1_out"] = {qkit::encoding_from_range(-0.5, 6.0, 16)};
  // float16 activation.
  f.activation_encodings["fc_out"] = {encoding::fp16()};
  // Per-channel symmetric weights (offset -128) and a 4-bit per-tensor weight.
  f.param_encodings["conv1.weight"] = {
      qkit::encoding_from_range(-0.2, 0.3, 8, qkit::scheme::symmetric_signed),
      qkit::encoding_from_range(-1.0, 0.1, 8, qkit::scheme::symmetric_signed),
      qkit::encoding_from_range(-0.01, 0.02, 8, qkit::scheme::symmetric_signed)};
  f.param_encodings["fc.weight"] = {
      qkit::encoding_from_range(-0.7, 0.4, 4, qkit::scheme::symmetric_signed)};
  f.param_encodings["fc.bias"] = {
      qkit::encoding_from_scale_offset(1e-6, -(std::int64_t{1} << 31), 32, true)};
  f.excluded_layers = {"head.softmax"};
  f.quantizer_args = nlohmann::json{{"activation_bitwidth", 8}, {"dtype", "int"},
                                    {"is_symmetric", true},     {"param_bitwidth", 8},
                                    {"per_channel_quantization", true},
                                    {"quant_scheme", "post_training_tf_enhanced"}};
  return f;
}

void check_same(const encodings_file& a, const encodings_file& b, bool with_min_max) {
  auto same = [&](const std::map<std::string, std::vector<encoding>>& x,
                  const std::map<std::string, std::vector<encoding>>& y) {
    REQUIRE(x.size() == y.size());
    for (const auto& entry : x) {  // not a structured binding: CAPTURE is a lambda (clang < 16)
      const std::string& name = entry.first;
      const std::vector<encoding>& encs = entry.second;
      CAPTURE(name);
      REQUIRE(y.count(name));
      const auto& other = y.at(name);
      REQUIRE(encs.size() == other.size());
      for (std::size_t c = 0; c < encs.size(); ++c) {
        CAPTURE(c);
        CHECK(encs[c].bitwidth == other[c].bitwidth);
        CHECK(encs[c].dtype == other[c].dtype);
        if (encs[c].dtype == qkit::dtype::floating) continue;
        CHECK(encs[c].scale == other[c].scale);  // written with 17 digits: exact
        CHECK(encs[c].offset == other[c].offset);
        CHECK(encs[c].symmetric == other[c].symmetric);
        if (with_min_max) {
          CHECK(encs[c].min == other[c].min);
          CHECK(encs[c].max == other[c].max);
        } else {
          // 1.0.0 keeps no min/max; derived from scale/offset they equal the grid's ends.
          CHECK(other[c].min == doctest::Approx(encs[c].min).epsilon(1e-12));
          CHECK(other[c].max == doctest::Approx(encs[c].max).epsilon(1e-12));
        }
      }
    }
  };
  same(a.activation_encodings, b.activation_encodings);
  same(a.param_encodings, b.param_encodings);
  CHECK(a.excluded_layers == b.excluded_layers);
  CHECK(a.quantizer_args == b.quantizer_args);
}

}  // namespace

TEST_CASE("encodings file 0.6.1 round-trips exactly") {
  const auto f = sample_file();
  const auto path = out_dir() / "roundtrip_0_6_1.encodings";
  qkit::io::write_encodings(f, path, format_version::v0_6_1);
  const auto back = qkit::io::read_encodings(path);
  CHECK(back.version == "0.6.1");
  CHECK(back.source == path.string());
  check_same(f, back, true);

  // AIMET's layout: name -> list, string booleans, float entries with only bitwidth/dtype.
  const auto doc = nlohmann::json::parse(read_text(path));
  CHECK(doc["param_encodings"]["conv1.weight"].size() == 3);
  CHECK(doc["param_encodings"]["conv1.weight"][0]["is_symmetric"] == "True");
  CHECK(doc["param_encodings"]["conv1.weight"][0]["offset"] == -128);
  CHECK(doc["activation_encodings"]["input"][0]["is_symmetric"] == "False");
  CHECK(doc["activation_encodings"]["fc_out"][0] ==
        nlohmann::json{{"bitwidth", 16}, {"dtype", "float"}});
  // Written again, the text is identical (deterministic order).
  const auto path2 = out_dir() / "roundtrip_0_6_1_again.encodings";
  qkit::io::write_encodings(back, path2, format_version::v0_6_1);
  CHECK(read_text(path) == read_text(path2));
}

TEST_CASE("encodings file 1.0.0 round-trips and has AIMET's layout") {
  const auto f = sample_file();
  const auto path = out_dir() / "roundtrip_1_0_0.encodings";
  qkit::io::write_encodings(f, path, format_version::v1_0_0);
  const auto back = qkit::io::read_encodings(path);
  CHECK(back.version == "1.0.0");
  check_same(f, back, false);

  const std::string text = read_text(path);
  const auto doc = nlohmann::json::parse(text);
  CHECK(doc["version"] == "1.0.0");
  REQUIRE(doc["param_encodings"].is_array());
  // Sorted keys, indent 4.
  CHECK(text.find("{\n    \"activation_encodings\": [") == 0);
  bool saw_conv = false, saw_fp16 = false;
  for (const auto& e : doc["param_encodings"]) {
    if (e["name"] == "conv1.weight") {
      saw_conv = true;
      CHECK(e["enc_type"] == "PER_CHANNEL");
      CHECK(e["dtype"] == "INT");
      CHECK(e["is_sym"] == true);
      CHECK(e["bw"] == 8);
      CHECK(e["scale"].size() == 3);
      CHECK(e["offset"] == nlohmann::json{-128, -128, -128});
      CHECK(e.size() == 7);  // name, dtype, enc_type, bw, is_sym, scale, offset
    }
  }
  for (const auto& e : doc["activation_encodings"]) {
    if (e["name"] == "fc_out") {
      saw_fp16 = true;
      CHECK(e == nlohmann::json{{"name", "fc_out"}, {"dtype", "FLOAT"}, {"bw", 16},
                                {"enc_type", "PER_TENSOR"}});
    }
  }
  CHECK(saw_conv);
  CHECK(saw_fp16);
  // Converting 1.0.0 -> 0.6.1 -> 1.0.0 gives the same 1.0.0 text.
  const auto p061 = out_dir() / "converted.encodings";
  qkit::io::write_encodings(back, p061, format_version::v0_6_1);
  const auto p100 = out_dir() / "converted_back.encodings";
  qkit::io::write_encodings(qkit::io::read_encodings(p061), p100, format_version::v1_0_0);
  CHECK(read_text(p100) == text);
}

TEST_CASE("encodings file: AIMET-written text parses (0.4 float offsets, 0.6.1, 1.0.0)") {
  // As AIMET's spec shows it for 0.4.0: no dtype, offset as a float.
  const auto old = qkit::io::encodings_from_json(nlohmann::json::parse(R"({
    "version": "0.4.0",
    "activation_encodings": {"20": [{"bitwidth": 8, "is_symmetric": "False",
        "max": 2.6086959838867188, "min": -2.109158515930176, "offset": -114.0,
        "scale": 0.018501389771699905}]},
    "param_encodings": {}})"));
  REQUIRE(old.activation_encodings.at("20").size() == 1);
  CHECK(old.activation_encodings.at("20")[0].offset == -114);
  CHECK(old.activation_encodings.at("20")[0].dtype == qkit::dtype::integer);

  const auto v1 = qkit::io::encodings_from_json(nlohmann::json::parse(R"({
    "version": "1.0.0",
    "activation_encodings": [{"bw": 8, "dtype": "INT", "enc_type": "PER_TENSOR", "is_sym": false,
        "name": "input", "offset": [-60], "scale": [0.0125]}],
    "param_encodings": [{"bw": 4, "dtype": "INT", "enc_type": "PER_CHANNEL", "is_sym": true,
        "name": "fc.weight", "offset": [-8, -8], "scale": [0.5, 0.25]}],
    "excluded_layers": [], "quantizer_args": {"activation_bitwidth": 8}})"));
  const auto& w = v1.param_encodings.at("fc.weight");
  REQUIRE(w.size() == 2);
  CHECK(w[1].scale == 0.25);
  CHECK(w[1].min == -2.0);   // -8 * 0.25
  CHECK(w[1].max == 1.75);   // 7 * 0.25
  CHECK(v1.activation_encodings.at("input")[0].min == doctest::Approx(-0.75));
}

TEST_CASE("encodings file: bad files are format errors naming the file and entry") {
  const auto dir = out_dir();
  auto expect_error = [&](const std::string& text, const std::string& needle) {
    const auto p = dir / "bad.encodings";
    write_text(p, text);
    CAPTURE(text);
    try {
      qkit::io::read_encodings(p);
      FAIL("no error for a bad file");
    } catch (const qkit::format_error& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find("bad.encodings") != std::string::npos);
      CHECK(msg.find(needle) != std::string::npos);
    }
  };
  expect_error("{\"version\": \"0.6.1\", \"activation_encodings\": {", "not valid JSON");
  expect_error("", "not valid JSON");
  expect_error(R"({"version": "2.0.0", "activation_encodings": []})", "unknown version '2.0.0'");
  expect_error(R"({"version": "0.6.1"})", "neither");
  expect_error(R"({"version": "0.6.1", "activation_encodings": {"x": [{"bitwidth": 8,
      "dtype": "int", "is_symmetric": "False", "max": 1.0, "min": 0.0, "offset": 0}]}})",
               "'x': encoding entry has no \"scale\" field");
  expect_error(R"({"version": "0.6.1", "param_encodings": {"w": [{"bitwidth": 40,
      "dtype": "int", "is_symmetric": "False", "max": 1.0, "min": 0.0, "offset": 0,
      "scale": 0.1}]}})",
               "'w': encoding field \"bitwidth\" 40 is outside 2..32");
  expect_error(R"({"version": "0.6.1", "param_encodings": {"w": [{"bitwidth": 8,
      "dtype": "int", "is_symmetric": "maybe", "max": 1.0, "min": 0.0, "offset": 0,
      "scale": 0.1}]}})",
               "is_symmetric");
  expect_error(R"({"version": "0.6.1", "param_encodings": {"w": [{"bitwidth": "8",
      "dtype": "int", "is_symmetric": "True", "max": 1.0, "min": 0.0, "offset": 0,
      "scale": 0.1}]}})",
               "'w': encoding field \"bitwidth\" must be an integer");
  expect_error(R"({"version": "0.6.1", "param_encodings": {"w": [{"bitwidth": 8,
      "dtype": "int", "is_symmetric": "True", "max": 1.0, "min": 0.0, "offset": 0.5,
      "scale": 0.1}]}})",
               "'w': encoding field \"offset\" must be an integer");
  expect_error(R"({"version": "0.6.1", "param_encodings": {"w": {"bitwidth": 8}}})",
               "non-empty list");
  expect_error(R"({"version": "1.0.0", "param_encodings": {"w": []}})", "list of entries");
  expect_error(R"({"version": "1.0.0", "param_encodings": [{"name": "w", "dtype": "INT",
      "enc_type": "PER_TENSOR", "bw": 8, "is_sym": true, "scale": [0.1, 0.2],
      "offset": [-128, -128]}]})",
               "'w': PER_TENSOR entry has 2 scales");
  expect_error(R"({"version": "1.0.0", "param_encodings": [{"name": "w", "dtype": "INT",
      "enc_type": "PER_CHANNEL", "bw": 8, "is_sym": true, "scale": [0.1, 0.2],
      "offset": [-128]}]})",
               "'scale' has 2 values and 'offset' 1");
  expect_error(R"({"version": "1.0.0", "param_encodings": [{"name": "w", "dtype": "INT",
      "enc_type": "PER_BLOCK", "bw": 4, "is_sym": true, "scale": [0.1], "offset": [-8],
      "block_size": 32}]})",
               "PER_BLOCK");
  expect_error(R"({"version": "1.0.0", "param_encodings": [{"name": "w", "dtype": "INT",
      "enc_type": "PER_TENSOR", "bw": 1, "is_sym": true, "scale": [0.1], "offset": [-1]}]})",
               "bitwidth 1 is outside 2..32");
  expect_error(R"({"version": "1.0.0", "param_encodings": [{"name": "w", "dtype": "INT",
      "enc_type": "PER_TENSOR", "bw": 8, "is_sym": true, "scale": [-0.1], "offset": [-128]}]})",
               "channel 0: scale -0.1");
  expect_error(R"({"version": "1.0.0", "activation_encodings": [{"name": "a", "dtype": "FLOAT",
      "enc_type": "PER_TENSOR", "bw": 8}]})",
               "float bitwidth 8");
  expect_error(R"({"version": "1.0.0", "activation_encodings": [{"name": "a", "dtype": "FLOAT",
      "enc_type": "PER_TENSOR", "bw": 16}, {"name": "a", "dtype": "FLOAT",
      "enc_type": "PER_TENSOR", "bw": 16}]})",
               "'a': name appears twice");
  CHECK_THROWS_AS(qkit::io::read_encodings(dir / "does_not_exist.encodings"), qkit::format_error);
}

TEST_CASE("encodings file: writing what a format cannot hold is an error, old file kept") {
  encodings_file f;
  auto a = qkit::encoding_from_range(-1.0, 1.0, 8, qkit::scheme::symmetric_signed);
  auto b = qkit::encoding_from_range(-1.0, 1.0, 4, qkit::scheme::symmetric_signed);
  f.param_encodings["w"] = {a, b};
  const auto p = out_dir() / "unwritable.encodings";
  write_text(p, "old");
  CHECK_THROWS_WITH_AS(qkit::io::write_encodings(f, p, format_version::v1_0_0),
                       doctest::Contains("channel 1 has bitwidth 4"), qkit::format_error);
  CHECK(read_text(p) == "old");
  // 0.6.1 keeps a bitwidth per entry, so the same encodings are writable there.
  qkit::io::write_encodings(f, p, format_version::v0_6_1);
  CHECK(qkit::io::read_encodings(p).param_encodings.at("w")[1].bitwidth == 4);

  f.param_encodings["w"] = {};
  CHECK_THROWS_WITH_AS(qkit::io::write_encodings(f, p, format_version::v0_6_1),
                       doctest::Contains("'w': no encodings"), qkit::format_error);
}

TEST_CASE("check_encoding_names lists the names that differ in both directions") {
  auto f = sample_file();
  f.source = "model_a.encodings";
  CHECK_NOTHROW(qkit::io::check_encoding_names(
      f, {"conv1.weight", "fc.weight", "fc.bias"}, {"input", "conv1_out", "fc_out"}));
  try {
    qkit::io::check_encoding_names(f, {"conv1.weight", "fc.weight", "fc.bias", "conv2.weight"},
                                   {"input", "fc_out", "relu_out"});
    FAIL("no error for mismatched names");
  } catch (const qkit::format_error& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find("model_a.encodings") != std::string::npos);
    CHECK(msg.find("param encodings the model needs but the file lacks (1): conv2.weight") !=
          std::string::npos);
    CHECK(msg.find("activation encodings the model needs but the file lacks (1): relu_out") !=
          std::string::npos);
    CHECK(msg.find("activation encodings in the file that the model does not have (1): "
                   "conv1_out") != std::string::npos);
  }
}

TEST_CASE("check_encoding_bitwidths reports each mismatch") {
  const auto f = sample_file();
  CHECK_NOTHROW(qkit::io::check_encoding_bitwidths(f, {{"conv1.weight", 8}, {"fc.weight", 4}},
                                                   {{"fc_out", -16}, {"input", 8}}));
  try {
    qkit::io::check_encoding_bitwidths(f, {{"conv1.weight", 4}}, {{"fc_out", 16}, {"input", 8}});
    FAIL("no error for mismatched bitwidths");
  } catch (const qkit::format_error& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find("param 'conv1.weight' channel 0: file has int8, model expects int4") !=
          std::string::npos);
    CHECK(msg.find("activation 'fc_out': file has float16, model expects int16") !=
          std::string::npos);
    CHECK(msg.find("'input'") == std::string::npos);
  }
}
}  // namespace unit_encodings_file
