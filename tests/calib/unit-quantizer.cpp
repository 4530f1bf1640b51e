// The quantizer object: lifecycle, per-tensor and per-channel (contiguous and strided axes),
// runtime settings, freeze, pass-through cases, STE mask, sharded merge and its errors.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <qkit/calib/percentile.hpp>
#include <qkit/calib/tf_enhanced.hpp>
#include <qkit/sim/quantizer.hpp>

namespace unit_quantizer {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {
qkit::tensor random_tensor(const qkit::shape_type& shape, unsigned seed, float sigma = 1.0f) {
  qkit::tensor t = qkit::tensor::from_shape(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  for (auto& x : t) x = d(rng);
  return t;
}
std::vector<float> channel_values(const qkit::tensor& t, std::size_t axis, std::size_t c) {
  std::size_t outer = 1, inner = 1;
  for (std::size_t d = 0; d < axis; ++d) outer *= t.shape()[d];
  for (std::size_t d = axis + 1; d < t.dimension(); ++d) inner *= t.shape()[d];
  const std::size_t C = t.shape()[axis];
  std::vector<float> v;
  for (std::size_t o = 0; o < outer; ++o)
    for (std::size_t i = 0; i < inner; ++i) v.push_back(t.data()[(o * C + c) * inner + i]);
  return v;
}
}  // namespace

TEST_CASE("per-tensor quantizer: observe, compute, qdq equals the qdq kernel") {
  qkit::quantizer<> q("act0");
  const auto x = random_tensor({4, 3, 5, 5}, 1);
  CHECK_THROWS_WITH_AS(q.qdq(x), doctest::Contains("quantizer 'act0' has no encodings"),
                       qkit::calibration_error);
  CHECK_THROWS_WITH_AS(q.compute_encodings(), doctest::Contains("quantizer 'act0': no data observed"),
                       qkit::calibration_error);
  q.observe(x);
  q.compute_encodings();
  REQUIRE(q.encodings().size() == 1);
  qkit::minmax_range r;
  r.observe(x.data(), x.size());
  CHECK(q.encodings()[0] == r.compute_encoding(8, qkit::scheme::asymmetric));
  const auto y = q.qdq(x);
  std::vector<float> ref(x.size());
  qkit::qdq(x.data(), ref.data(), x.size(), q.encodings()[0], qkit::rounding::half_even);
  CHECK(std::equal(ref.begin(), ref.end(), y.data()));
  auto z = x;
  q.qdq_inplace(z);
  CHECK(z == y);
  // The rounding policy reaches the kernel.
  qkit::quantizer<qkit::minmax_range, qkit::rounding::half_away> qa("act0");
  qa.observe(x);
  qa.compute_encodings();
  const auto ya = qa.qdq(x);
  qkit::qdq(x.data(), ref.data(), x.size(), qa.encodings()[0], qkit::rounding::half_away);
  CHECK(std::equal(ref.begin(), ref.end(), ya.data()));
}

TEST_CASE("per-channel quantizer: axis 0 (contiguous) and axis 1 (strided) gather each channel") {
  const auto w = random_tensor({6, 3, 3, 3}, 2);
  for (int axis : {0, 1, -3}) {
    CAPTURE(axis);
    qkit::quantizer<qkit::tf_enhanced_range> q("conv.weight", {8, qkit::scheme::symmetric_signed, axis});
    q.observe(w);
    q.compute_encodings();
    const std::size_t k = axis < 0 ? static_cast<std::size_t>(axis + 4) : static_cast<std::size_t>(axis);
    REQUIRE(q.encodings().size() == w.shape()[k]);
    for (std::size_t c = 0; c < w.shape()[k]; ++c) {
      const auto v = channel_values(w, k, c);
      qkit::tf_enhanced_range r;
      r.observe(v.data(), v.size());
      CHECK(q.encodings()[c] == r.compute_encoding(8, qkit::scheme::symmetric_signed));
    }
    const auto y = q.qdq(w);
    std::vector<float> ref(w.size());
    qkit::qdq_per_channel(w.data(), ref.data(), std::span<const std::size_t>(w.shape().data(), 4),
                          axis, q.encodings());
    CHECK(std::equal(ref.begin(), ref.end(), y.data()));
  }
  qkit::quantizer<> bad("w", {8, {}, 4});
  CHECK_THROWS_WITH_AS(bad.observe(w), doctest::Contains("quantizer 'w': per-channel axis 4"),
                       qkit::config_error);
  qkit::quantizer<> q("w", {8, {}, 0});
  q.observe(w);
  const auto w2 = random_tensor({5, 3, 3, 3}, 3);
  CHECK_THROWS_WITH_AS(q.observe(w2), doctest::Contains("has 5 channels along axis 0"), qkit::shape_error);
}

TEST_CASE("NaN in a batch names the quantizer, count and flat index, and changes nothing") {
  auto x = random_tensor({2, 4, 8}, 4);
  qkit::quantizer<> pt("relu3.out");
  qkit::quantizer<> pc("fc.weight", {8, {}, 1});
  pt.observe(x);
  pc.observe(x);
  pt.compute_encodings();
  pc.compute_encodings();
  const auto e_pt = pt.encodings();
  const auto e_pc = pc.encodings();
  x.data()[37] = NAN;
  x.data()[40] = INFINITY;
  x.data()[41] = 100.0f;
  CHECK_THROWS_WITH_AS(pt.observe(x),
                       doctest::Contains("quantizer 'relu3.out': minmax range: 2 of 64 calibration values are NaN or Inf (first at index 37)"),
                       qkit::calibration_error);
  CHECK_THROWS_WITH_AS(pc.observe(x),
                       doctest::Contains("quantizer 'fc.weight': 2 of 64 calibration values are NaN or Inf (first at index 37)"),
                       qkit::calibration_error);
  pt.compute_encodings();
  pc.compute_encodings();
  CHECK(pt.encodings() == e_pt);
  CHECK(pc.encodings() == e_pc);
}

TEST_CASE("runtime settings: bitwidth, scheme, disabled, 32-bit, float16, freeze") {
  const auto x = random_tensor({1000}, 5);
  qkit::quantizer<qkit::percentile_range> q("a", {}, qkit::percentile_range(99.9));
  q.observe(x);
  q.compute_encodings();
  CHECK(q.encodings()[0].bitwidth == 8);
  q.set_bitwidth(4);  // mixed precision: statistics kept, encodings recomputed
  CHECK(!q.has_encodings());
  q.compute_encodings();
  CHECK(q.encodings()[0].bitwidth == 4);
  CHECK(q.encodings()[0].offset == -8);
  q.set_scheme(qkit::scheme::symmetric_signed);
  q.compute_encodings();
  CHECK(q.encodings()[0].symmetric);
  CHECK_THROWS_WITH_AS(q.set_bitwidth(1), doctest::Contains("quantizer 'a': bitwidth 1 is outside 2..32"),
                       qkit::config_error);
  CHECK_THROWS_AS(q.set_bitwidth(33), qkit::config_error);
  CHECK(q.bitwidth() == 4);
  // Disabled and 32-bit int are identity.
  q.set_enabled(false);
  CHECK(q.qdq(x) == x);
  q.set_enabled(true);
  CHECK(!(q.qdq(x) == x));
  q.set_bitwidth(32);
  CHECK(q.qdq(x) == x);
  // Float16: no calibration needed.
  qkit::quantizer<> h("h");
  h.set_dtype(qkit::dtype::floating);
  CHECK(h.bitwidth() == 16);
  const auto y = h.qdq(x);
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(y.data()[i] == qkit::round_to_half(x.data()[i]));
  h.compute_encodings();
  CHECK(h.encodings()[0].dtype == qkit::dtype::floating);
  // Freeze: observe and compute leave encodings alone.
  qkit::quantizer<> f("f");
  f.set_encoding(qkit::encoding_from_range(-1.0, 1.0, 8));
  f.freeze();
  const auto big = random_tensor({100}, 6, 10.0f);
  f.observe(big);
  f.compute_encodings();
  CHECK(f.encodings()[0] == qkit::encoding_from_range(-1.0, 1.0, 8));
  CHECK(!f.has_statistics());
  CHECK_THROWS_AS(f.set_encoding(qkit::encoding_from_range(-2.0, 2.0, 8)), qkit::config_error);
  // A frozen quantizer refuses a new grid: accepting it would make bitwidth() say 4 while the
  // frozen 8-bit encoding (255 steps) goes on quantizing.
  CHECK_THROWS_WITH_AS(f.set_bitwidth(4), doctest::Contains("quantizer 'f': its encodings are frozen"),
                       qkit::config_error);
  CHECK_THROWS_AS(f.set_scheme(qkit::scheme::symmetric_signed), qkit::config_error);
  CHECK_THROWS_AS(f.set_dtype(qkit::dtype::floating), qkit::config_error);
  CHECK(f.bitwidth() == 8);
  CHECK(f.encodings()[0] == qkit::encoding_from_range(-1.0, 1.0, 8));
  f.set_bitwidth(8);  // no change is no error
  f.set_enabled(false);  // enabling is no grid change
  f.set_enabled(true);
  f.unfreeze();
  f.set_bitwidth(4);  // unfrozen: the old grid goes, compute_encodings makes the new one
  CHECK(!f.has_encodings());
  f.set_bitwidth(8);
  f.observe(big);
  f.compute_encodings();
  CHECK(f.encodings()[0].max > 5.0);
  // Bad encodings are rejected with the quantizer's name.
  qkit::encoding bad = qkit::encoding_from_range(-1.0, 1.0, 8);
  bad.scale = 0.0;
  CHECK_THROWS_WITH_AS(f.set_encoding(bad), doctest::Contains("quantizer 'f': invalid encoding"),
                       qkit::config_error);
  CHECK_THROWS_AS(f.set_encodings({bad, bad}), qkit::shape_error);
}

TEST_CASE("straight-through mask: 1 inside the grid, 0 where qdq saturates") {
  qkit::quantizer<> q("s");
  q.set_encoding(qkit::encoding_from_range(-1.0, 1.0, 8));
  qkit::tensor x = qkit::tensor::from_shape({5});
  const float vals[] = {-3.0f, -0.5f, 0.0f, 0.9f, 2.0f};
  std::copy(vals, vals + 5, x.data());
  const auto m = q.ste_mask(x);
  CHECK(m.data()[0] == 0.0f);
  CHECK(m.data()[1] == 1.0f);
  CHECK(m.data()[2] == 1.0f);
  CHECK(m.data()[3] == 1.0f);
  CHECK(m.data()[4] == 0.0f);
  q.set_enabled(false);
  const auto ones = q.ste_mask(x);
  for (std::size_t i = 0; i < 5; ++i) CHECK(ones.data()[i] == 1.0f);
}

TEST_CASE("sharded calibration: merging quantizers equals observing everything") {
  const auto a = random_tensor({8, 4, 6}, 7), b = random_tensor({8, 4, 6}, 8, 3.0f);
  for (std::optional<int> axis : {std::optional<int>{}, std::optional<int>{1}}) {
    qkit::quantizer<qkit::tf_enhanced_range> all("x", {8, {}, axis}), s1("x", {8, {}, axis}), s2("x", {8, {}, axis});
    all.observe(a);
    all.observe(b);
    s1.observe(b);
    s2.observe(a);
    s1.merge(s2);
    all.compute_encodings();
    s1.compute_encodings();
    CHECK(all.encodings() == s1.encodings());
  }
  qkit::quantizer<> p("p"), c("p", {8, {}, 0});
  CHECK_THROWS_AS(p.merge(c), qkit::config_error);
}

TEST_CASE("default settings come from the Defaults policy") {
  qkit::quantizer<> act("a");
  CHECK(act.settings() == qkit::quantizer_settings{});
  qkit::quantizer<qkit::minmax_range, qkit::rounding::half_even, qkit::per_channel_weight_defaults> w("w");
  CHECK(w.per_channel());
  CHECK(*w.channel_axis() == 0);
  CHECK(w.scheme_flags() == qkit::scheme::symmetric_signed);
  qkit::quantizer<qkit::minmax_range, qkit::rounding::half_away, qkit::param_defaults> p("p");
  CHECK(!p.per_channel());
  CHECK(p.scheme_flags().symmetric);
  CHECK(decltype(p)::rounding_policy == qkit::rounding::half_away);
}
}  // namespace unit_quantizer
