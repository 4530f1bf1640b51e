// Tests of qkit/quant/encoding.hpp (AIMET's range -> encoding rules, worked by hand from
// AIMET_FACTS "Encoding from a range") and qkit/quant/encoding_json.hpp (AIMET 0.6.1 entries).
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <qkit/quant/encoding.hpp>
#include <qkit/quant/encoding_json.hpp>
#include <qkit/quant/qdq.hpp>

namespace unit_encoding {  // the suite is one translation unit: tests/CMakeLists.txt

using qkit::encoding;
using qkit::scheme;

namespace {
/// Zero is exactly on the grid: -offset is an integer within [0, steps] and qdq(0) == 0 under
/// both rounding policies.
void check_zero_representable(const encoding& e) {
  CAPTURE(e.min);
  CAPTURE(e.max);
  CAPTURE(e.offset);
  CHECK(-e.offset >= 0);
  CHECK(-e.offset <= e.qmax());
  CHECK(e.min == static_cast<double>(e.offset) * e.scale);
  for (auto r : {qkit::rounding::half_even, qkit::rounding::half_away}) {
    const float zero = 0.0f;
    float y = 1.0f;
    qkit::qdq(&zero, &y, 1, e, r);
    CHECK(y == 0.0f);
  }
}
}  // namespace

TEST_CASE("encoding_from_range: asymmetric") {
  // [-1, 3] at 8 bits: delta = 4/255; -min/delta = 63.75 -> offset -64; the grid slides to
  // start at -64 delta and keeps the width 4.
  const encoding e = qkit::encoding_from_range(-1.0, 3.0, 8);
  CHECK(e.bitwidth == 8);
  CHECK_FALSE(e.symmetric);
  CHECK(e.scale == doctest::Approx(4.0 / 255.0).epsilon(1e-15));
  CHECK(e.offset == -64);
  CHECK(e.min == doctest::Approx(-64.0 * 4.0 / 255.0).epsilon(1e-15));
  CHECK(e.max == doctest::Approx(e.min + 4.0).epsilon(1e-15));
  CHECK(e.zero_point_unsigned() == 64);
  CHECK(e.zero_point_signed() == -64);
  check_zero_representable(e);
  // [0, 2]: offset 0; [-2, 0]: offset -255 (the whole grid is at or below zero).
  const encoding pos = qkit::encoding_from_range(0.0, 2.0, 8);
  CHECK(pos.offset == 0);
  CHECK(pos.min == 0.0);
  CHECK(pos.max == doctest::Approx(2.0));
  check_zero_representable(pos);
  const encoding neg = qkit::encoding_from_range(-2.0, 0.0, 8);
  CHECK(neg.offset == -255);
  CHECK(neg.max == doctest::Approx(0.0).epsilon(1e-12));
  check_zero_representable(neg);
  // 4 bits, [-1, 2]: delta = 3/15 = 0.2, -min/delta = 5 -> offset -5.
  const encoding e4 = qkit::encoding_from_range(-1.0, 2.0, 4);
  CHECK(e4.scale == doctest::Approx(0.2));
  CHECK(e4.offset == -5);
  // A range away from zero keeps min/max on its grid.
  const encoding away = qkit::encoding_from_range(0.3, 1.0, 8);
  CHECK(away.offset == 109);  // round(0.3 / (0.7/255)) = round(109.29)
  CHECK(away.min == static_cast<double>(away.offset) * away.scale);
  CHECK(away.max == doctest::Approx(away.min + 0.7));
}

TEST_CASE("encoding_from_range: zero is exactly representable for random ranges") {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> d(-10.0, 10.0);
  for (int i = 0; i < 500; ++i) {
    double a = d(rng), b = d(rng);
    if (a > b) std::swap(a, b);
    qkit::widen_to_include_zero(a, b);
    for (int bw : {2, 3, 4, 8, 12, 16}) {
      for (const scheme& s : {scheme::asymmetric, scheme::symmetric_signed, scheme::strict_symmetric,
                              scheme::unsigned_symm}) {
        const encoding e = qkit::encoding_from_range(a, b, bw, s);
        REQUIRE(e.scale > 0.0);
        REQUIRE(std::isfinite(e.scale));
        check_zero_representable(e);
        // The grid covers the range, up to rounding of the slid grid's ends.
        CHECK(e.min <= a + e.scale);
        CHECK(e.max >= b - e.scale);
      }
    }
  }
}

TEST_CASE("encoding_from_range: symmetric, strict symmetric, unsigned symmetric") {
  // Symmetric: absmax 3, delta = 3 / floor(255/2) = 3/127, offset -ceil(255/2) = -128.
  const encoding s = qkit::encoding_from_range(-1.0, 3.0, 8, scheme::symmetric_signed);
  CHECK(s.symmetric);
  CHECK(s.scale == doctest::Approx(3.0 / 127.0).epsilon(1e-15));
  CHECK(s.offset == -128);
  CHECK(s.min == doctest::Approx(-128.0 * 3.0 / 127.0).epsilon(1e-15));
  CHECK(s.max == doctest::Approx(3.0).epsilon(1e-15));
  CHECK(s.zero_point_signed() == 0);
  CHECK(s.zero_point_unsigned() == 128);
  // 4 bits: steps 15 -> delta = absmax/7, offset -8.
  const encoding s4 = qkit::encoding_from_range(-3.5, 0.5, 4, scheme::symmetric_signed);
  CHECK(s4.scale == doctest::Approx(0.5));
  CHECK(s4.offset == -8);
  CHECK(s4.min == doctest::Approx(-4.0));
  CHECK(s4.max == doctest::Approx(3.5));
  // Strict: steps 254 -> delta = 3/127, offset -127, grid exactly [-3, 3].
  const encoding st = qkit::encoding_from_range(-1.0, 3.0, 8, scheme::strict_symmetric);
  CHECK(st.scale == doctest::Approx(3.0 / 127.0).epsilon(1e-15));
  CHECK(st.offset == -127);
  CHECK(st.min == doctest::Approx(-3.0).epsilon(1e-15));
  CHECK(st.max == doctest::Approx(3.0).epsilon(1e-15));
  // 2-bit strict: steps 2 -> grid {-delta, 0, delta}.
  const encoding st2 = qkit::encoding_from_range(-1.0, 1.0, 2, scheme::strict_symmetric);
  CHECK(st2.offset == -1);
  CHECK(st2.scale == doctest::Approx(1.0));
  // Unsigned symmetric over non-negative data: the whole unsigned grid, offset 0.
  const encoding u = qkit::encoding_from_range(0.0, 6.0, 8, scheme::unsigned_symm);
  CHECK(u.symmetric);
  CHECK(u.offset == 0);
  CHECK(u.scale == doctest::Approx(6.0 / 255.0).epsilon(1e-15));
  CHECK(u.min == 0.0);
  CHECK(u.max == doctest::Approx(6.0).epsilon(1e-15));
  // ... but data below zero falls back to signed symmetric.
  const encoding us = qkit::encoding_from_range(-1.0, 6.0, 8, scheme::unsigned_symm);
  CHECK(us.offset == -128);
  CHECK(us.scale == doctest::Approx(6.0 / 127.0).epsilon(1e-15));
}

TEST_CASE("encoding_from_range: all-zero and constant tensors get a valid encoding") {
  for (const scheme& s : {scheme::asymmetric, scheme::symmetric_signed, scheme::strict_symmetric,
                          scheme::unsigned_symm}) {
    const encoding z = qkit::encoding_from_range(0.0, 0.0, 8, s);
    CHECK(z.scale > 0.0);
    CHECK(std::isfinite(z.scale));
    check_zero_representable(z);
    // A constant 5 without widening still has a positive scale; with min-max widening
    // (include zero) its grid spans [0, 5] and 5 is reproduced closely.
    const encoding c = qkit::encoding_from_range(5.0, 5.0, 8, s);
    CHECK(c.scale > 0.0);
    double lo = 5.0, hi = 5.0;
    qkit::widen_to_include_zero(lo, hi);
    CHECK(lo == 0.0);
    CHECK(hi == 5.0);
    const encoding w = qkit::encoding_from_range(lo, hi, 8, s);
    const float five = 5.0f;
    float y = 0.0f;
    qkit::qdq(&five, &y, 1, w);
    CHECK(y == doctest::Approx(5.0).epsilon(w.scale));
  }
  double lo = 0.0, hi = 0.0;
  qkit::widen_to_include_zero(lo, hi);
  CHECK(lo == 0.0);
  CHECK(hi == doctest::Approx(qkit::minimum_encoding_range));
  lo = -3.0;
  hi = -3.0;
  qkit::widen_to_include_zero(lo, hi);
  CHECK(lo == -3.0);
  CHECK(hi == doctest::Approx(0.0));  // max >= min + 0.01 holds already
}

TEST_CASE("encoding_from_range: bitwidths and bad ranges") {
  for (int bw : {-1, 0, 1, 33, 64})
    CHECK_THROWS_WITH_AS(qkit::encoding_from_range(-1.0, 1.0, bw), doctest::Contains("outside 2..32"),
                         qkit::config_error);
  for (int bw = 2; bw <= 31; ++bw) {
    const encoding e = qkit::encoding_from_range(-1.0, 1.0, bw);
    CHECK_FALSE(e.is_passthrough());
    CHECK(e.qmax() == (std::int64_t{1} << bw) - 1);
  }
  const encoding pt = qkit::encoding_from_range(-1.0, 2.0, 32);
  CHECK(pt.is_passthrough());
  CHECK(pt.min == -1.0);
  CHECK(pt.max == 2.0);
  CHECK_THROWS_AS(qkit::encoding_from_range(1.0, -1.0, 8), qkit::calibration_error);
  CHECK_THROWS_AS(qkit::encoding_from_range(std::nan(""), 1.0, 8), qkit::calibration_error);
  CHECK_THROWS_AS(qkit::encoding_from_range(0.0, INFINITY, 8), qkit::calibration_error);
  CHECK_THROWS_AS(qkit::encoding_from_scale_offset(0.0, 0, 8, false), qkit::config_error);
  CHECK_THROWS_AS(qkit::encoding_from_scale_offset(0.1, 0, 40, false), qkit::config_error);
  const encoding so = qkit::encoding_from_scale_offset(0.5, -8, 4, true);
  CHECK(so.min == -4.0);
  CHECK(so.max == 3.5);
}

// ---------------------------------------------------------------------------------------------
// JSON

TEST_CASE("encoding JSON: AIMET 0.6.1 entries and round trip") {
  const encoding e = qkit::encoding_from_range(-1.2345678901234567, 3.3, 8);
  const nlohmann::json j = e;
  CHECK(j.at("bitwidth") == 8);
  CHECK(j.at("dtype") == "int");
  CHECK(j.at("is_symmetric") == "False");
  CHECK(j.at("offset") == e.offset);
  CHECK(j.at("scale").get<double>() == e.scale);
  CHECK(j.size() == 7);
  CHECK(j.dump() .find("\"bitwidth\":8,\"dtype\":\"int\",\"is_symmetric\":\"False\",\"max\":") == 1);
  // Round trip through text is exact.
  const encoding back = nlohmann::json::parse(j.dump()).get<encoding>();
  CHECK(back == e);
  const encoding s = qkit::encoding_from_range(-0.1, 0.7, 4, scheme::symmetric_signed);
  const nlohmann::json js = s;
  CHECK(js.at("is_symmetric") == "True");
  CHECK(nlohmann::json::parse(js.dump()).get<encoding>() == s);
  // float16
  const nlohmann::json jf = encoding::fp16();
  CHECK(jf == nlohmann::json{{"bitwidth", 16}, {"dtype", "float"}});
  CHECK(jf.get<encoding>() == encoding::fp16());
  // An entry as AIMET writes it.
  const auto aimet = nlohmann::json::parse(
      R"({"bitwidth": 8, "dtype": "int", "is_symmetric": "True", "max": 0.1, "min": -0.10078740157480315,
          "offset": -128, "scale": 0.0007874015748031496})");
  const encoding a = aimet.get<encoding>();
  CHECK(a.bitwidth == 8);
  CHECK(a.symmetric);
  CHECK(a.offset == -128);
  CHECK(a.scale == 0.0007874015748031496);
  CHECK(a.min == -0.10078740157480315);
  // Ordered JSON works through the same functions.
  const nlohmann::ordered_json oj = e;
  CHECK(oj.get<encoding>() == e);
}

TEST_CASE("encoding JSON: errors name the field") {
  const nlohmann::json good = qkit::encoding_from_range(-1.0, 1.0, 8);
  for (const char* field : {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}) {
    nlohmann::json j = good;
    j.erase(field);
    const std::string quoted = std::string("\"") + field + "\"";
    CHECK_THROWS_WITH_AS(j.get<encoding>(), doctest::Contains(quoted.c_str()), qkit::format_error);
  }
  auto with = [&](const char* field, nlohmann::json v) {
    nlohmann::json j = good;
    j[field] = std::move(v);
    return j;
  };
  CHECK_THROWS_WITH_AS(with("is_symmetric", 1).get<encoding>(), doctest::Contains("is_symmetric"),
                       qkit::format_error);
  CHECK_THROWS_WITH_AS(with("is_symmetric", "true").get<encoding>(), doctest::Contains("is_symmetric"),
                       qkit::format_error);
  CHECK(with("is_symmetric", true).get<encoding>().symmetric);
  CHECK_THROWS_WITH_AS(with("scale", "0.1").get<encoding>(), doctest::Contains("scale"), qkit::format_error);
  CHECK_THROWS_WITH_AS(with("scale", 0.0).get<encoding>(), doctest::Contains("scale"), qkit::format_error);
  CHECK_THROWS_WITH_AS(with("offset", 1.5).get<encoding>(), doctest::Contains("offset"), qkit::format_error);
  CHECK(with("offset", -128.0).get<encoding>().offset == -128);
  CHECK_THROWS_WITH_AS(with("bitwidth", "8").get<encoding>(), doctest::Contains("bitwidth"),
                       qkit::format_error);
  CHECK_THROWS_WITH_AS(with("bitwidth", 1).get<encoding>(), doctest::Contains("bitwidth"), qkit::format_error);
  CHECK_THROWS_WITH_AS(with("bitwidth", 33).get<encoding>(), doctest::Contains("bitwidth"), qkit::format_error);
  CHECK_THROWS_WITH_AS(with("dtype", "bogus").get<encoding>(), doctest::Contains("dtype"), qkit::format_error);
  CHECK_THROWS_WITH_AS(with("min", 5.0).get<encoding>(), doctest::Contains("min"), qkit::format_error);
  CHECK_THROWS_WITH_AS((nlohmann::json{{"bitwidth", 8}, {"dtype", "float"}}).get<encoding>(),
                       doctest::Contains("bitwidth"), qkit::format_error);
  CHECK_THROWS_AS(nlohmann::json::array().get<encoding>(), qkit::format_error);
  CHECK_THROWS_AS(nlohmann::json(3).get<encoding>(), qkit::format_error);
}
}  // namespace unit_encoding
