// Tests for qkit/tensor/conv.hpp: the references against hand-computed values and the adjoint
// identities that tie forward, backward-data and backward-weight together; every fast path
// against the references; thread-count independence.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <qkit/tensor/conv.hpp>

namespace unit_conv {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

std::vector<float> random_vector(std::size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& e : v) e = d(rng);
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

qkit::conv2d_shape make_shape(std::size_t N, std::size_t C, std::size_t H, std::size_t W,
                              std::size_t O, std::size_t KH, std::size_t KW,
                              qkit::conv2d_params p = {}) {
  qkit::conv2d_shape s;
  s.N = N; s.C = C; s.H = H; s.W = W; s.O = O; s.KH = KH; s.KW = KW; s.p = p;
  return s;
}

}  // namespace

TEST_CASE("conv2d shape: output size and validation") {
  qkit::conv2d_params p;
  p.stride_h = 2; p.stride_w = 3; p.pad_top = 1; p.pad_bottom = 0; p.pad_left = 2;
  p.pad_right = 1; p.dilation_h = 2;
  auto s = make_shape(1, 4, 9, 10, 6, 3, 3, p);
  CHECK(s.OH() == (9 + 1 + 0 - 2 * 2 - 1) / 2 + 1);
  CHECK(s.OW() == (10 + 2 + 1 - 2 - 1) / 3 + 1);
  CHECK_NOTHROW(s.validate());
  auto bad = s; bad.p.groups = 3;
  CHECK_THROWS_AS(bad.validate(), qkit::shape_error);
  bad = s; bad.KH = 7;  // dilated extent 13 > padded 10
  CHECK_THROWS_AS(bad.validate(), qkit::shape_error);
  bad = s; bad.p.stride_w = 0;
  CHECK_THROWS_AS(bad.validate(), qkit::shape_error);
  bad = s; bad.p.dilation_h = 0;
  CHECK_THROWS_AS(bad.validate(), qkit::shape_error);
  bad = s; bad.N = 0;
  CHECK_THROWS_AS(bad.validate(), qkit::shape_error);
  std::vector<float> x(1), w(1), y(1);
  bad = s; bad.C = 0;
  CHECK_THROWS_AS(qkit::conv2d_forward(bad, x.data(), w.data(), nullptr, y.data()),
                  qkit::shape_error);
}

TEST_CASE("conv2d reference: hand-computed 3x3 input, 2x2 kernel, pad 1 on top/left only") {
  // x = 1..9 (3x3), w = [[1, 2], [3, 4]], pads top=1 left=1, stride 2 -> 2x2 output.
  qkit::conv2d_params p;
  p.pad_top = 1; p.pad_left = 1; p.stride_h = 2; p.stride_w = 2;
  auto s = make_shape(1, 1, 3, 3, 1, 2, 2, p);
  REQUIRE(s.OH() == 2);
  REQUIRE(s.OW() == 2);
  std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8, 9}, w{1, 2, 3, 4}, b{0.5f}, y(4);
  qkit::conv2d_forward_reference(s, x.data(), w.data(), b.data(), y.data());
  // (0,0): only x[0,0]*w[1,1]; (0,1): x[0,1]*w[1,0] + x[0,2]*w[1,1];
  // (1,0): x[1,0]*w[0,1] + x[2,0]*w[1,1]; (1,1): x11*1 + x12*2 + x21*3 + x22*4.
  CHECK(y[0] == 1 * 4 + 0.5f);
  CHECK(y[1] == 2 * 3 + 3 * 4 + 0.5f);
  CHECK(y[2] == 4 * 2 + 7 * 4 + 0.5f);
  CHECK(y[3] == 5 * 1 + 6 * 2 + 8 * 3 + 9 * 4 + 0.5f);
}

TEST_CASE("conv2d reference: backward passes are the adjoints of the forward") {
  std::mt19937 rng(7);
  qkit::conv2d_params p;
  p.stride_h = 2; p.stride_w = 1; p.pad_top = 1; p.pad_bottom = 2; p.pad_left = 0;
  p.pad_right = 1; p.dilation_w = 2; p.groups = 2;
  auto s = make_shape(2, 4, 7, 6, 6, 3, 2, p);
  const std::size_t OH = s.OH(), OW = s.OW();
  auto x = random_vector(s.N * s.C * s.H * s.W, rng);
  auto w = random_vector(s.O * (s.C / 2) * s.KH * s.KW, rng);
  auto dy = random_vector(s.N * s.O * OH * OW, rng);
  std::vector<float> y(dy.size()), dx(x.size()), dw(w.size()), db(s.O);
  qkit::conv2d_forward_reference(s, x.data(), w.data(), nullptr, y.data());
  qkit::conv2d_backward_data_reference(s, dy.data(), w.data(), dx.data());
  qkit::conv2d_backward_weight_reference(s, x.data(), dy.data(), dw.data(), db.data());
  // <conv(x, w), dy> = <x, dx> = <w, dw>: conv is bilinear in x and w.
  const double a = dot(y, dy), bx = dot(x, dx), bw = dot(w, dw);
  CHECK(std::abs(a - bx) < 1e-4 * (1 + std::abs(a)));
  CHECK(std::abs(a - bw) < 1e-4 * (1 + std::abs(a)));
  for (std::size_t o = 0; o < s.O; ++o) {
    double sum = 0;
    for (std::size_t n = 0; n < s.N; ++n)
      for (std::size_t i = 0; i < OH * OW; ++i) sum += dy[(n * s.O + o) * OH * OW + i];
    CHECK(std::abs(db[o] - sum) < 1e-4);
  }
}

namespace {

struct conv_case {
  qkit::conv2d_shape s;
  std::string name;
};

std::vector<float> absolute(std::vector<float> v) {
  for (auto& e : v) e = std::abs(e);
  return v;
}

// |fast - ref| ≤ c·terms·eps·(the same computation on absolute values), element by element.
std::size_t count_mismatches(const std::vector<float>& fast, const std::vector<float>& ref,
                             const std::vector<float>& magnitude, double terms) {
  std::size_t bad = 0;
  for (std::size_t i = 0; i < fast.size(); ++i) {
    const double tol = 2.0 * (terms + 2.0) * 1.2e-7 * magnitude[i] + 1e-30;
    if (!(std::abs(double(fast[i]) - ref[i]) <= tol)) ++bad;
  }
  return bad;
}

void check_conv_against_reference(const qkit::conv2d_shape& s, const std::string& name,
                                  std::mt19937& rng) {
  const std::size_t OH = s.OH(), OW = s.OW(), Cg = s.C / s.p.groups;
  auto x = random_vector(s.N * s.C * s.H * s.W, rng);
  auto w = random_vector(s.O * Cg * s.KH * s.KW, rng);
  auto b = random_vector(s.O, rng);
  auto dy = random_vector(s.N * s.O * OH * OW, rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  INFO(name, ": N=", s.N, " C=", s.C, " HxW=", s.H, "x", s.W, " O=", s.O, " k=", s.KH, "x",
       s.KW, " groups=", s.p.groups);

  for (bool with_bias : {true, false}) {
    // Outputs start as NaN: every element must be overwritten.
    std::vector<float> y(dy.size(), nan), y_ref(dy.size()), y_mag(dy.size());
    const float* bias = with_bias ? b.data() : nullptr;
    qkit::conv2d_forward(s, x.data(), w.data(), bias, y.data());
    qkit::conv2d_forward_reference(s, x.data(), w.data(), bias, y_ref.data());
    auto ab = absolute(b);
    qkit::conv2d_forward_reference(s, absolute(x).data(), absolute(w).data(),
                                   with_bias ? ab.data() : nullptr, y_mag.data());
    CHECK(count_mismatches(y, y_ref, y_mag, double(Cg * s.KH * s.KW)) == 0);
  }
  {
    std::vector<float> dx(x.size(), nan), dx_ref(x.size()), dx_mag(x.size());
    qkit::conv2d_backward_data(s, dy.data(), w.data(), dx.data());
    qkit::conv2d_backward_data_reference(s, dy.data(), w.data(), dx_ref.data());
    qkit::conv2d_backward_data_reference(s, absolute(dy).data(), absolute(w).data(),
                                         dx_mag.data());
    CHECK(count_mismatches(dx, dx_ref, dx_mag, double(s.O / s.p.groups * s.KH * s.KW)) == 0);
  }
  for (bool with_bias : {true, false}) {
    std::vector<float> dw(w.size(), nan), dw_ref(w.size()), dw_mag(w.size());
    std::vector<float> db(s.O, nan), db_ref(s.O), db_mag(s.O);
    qkit::conv2d_backward_weight(s, x.data(), dy.data(), dw.data(),
                                 with_bias ? db.data() : nullptr);
    qkit::conv2d_backward_weight_reference(s, x.data(), dy.data(), dw_ref.data(), db_ref.data());
    qkit::conv2d_backward_weight_reference(s, absolute(x).data(), absolute(dy).data(),
                                           dw_mag.data(), db_mag.data());
    const double terms = double(s.N * OH * OW);
    CHECK(count_mismatches(dw, dw_ref, dw_mag, terms) == 0);
    if (with_bias) CHECK(count_mismatches(db, db_ref, db_mag, terms) == 0);
  }
}

std::vector<conv_case> conv_cases() {
  std::vector<conv_case> v;
  auto add = [&](const std::string& name, std::size_t N, std::size_t C, std::size_t H,
                 std::size_t W, std::size_t O, std::size_t KH, std::size_t KW,
                 qkit::conv2d_params p) { v.push_back({make_shape(N, C, H, W, O, KH, KW, p), name}); };
  qkit::conv2d_params p;
  add("1x1 pointwise", 3, 8, 7, 9, 12, 1, 1, p);
  add("3x3 valid", 1, 3, 8, 8, 5, 3, 3, p);
  add("first layer 1->16 3x3 pad 1 (depthwise path)", 3, 1, 28, 28, 16, 3, 3, {1, 1, 1, 1, 1, 1});
  {
    qkit::conv2d_params q; q.pad_top = q.pad_left = q.pad_bottom = q.pad_right = 1;
    add("3x3 same", 3, 6, 13, 11, 7, 3, 3, q);
    q.stride_h = q.stride_w = 2;
    add("3x3 stride 2", 3, 16, 14, 14, 32, 3, 3, q);
    q.groups = 2;
    add("3x3 stride 2 groups 2", 1, 8, 15, 12, 6, 3, 3, q);
    q.stride_h = q.stride_w = 1;
    q.groups = 8;
    add("depthwise 3x3 pad 1", 3, 8, 14, 14, 8, 3, 3, q);
    add("depthwise multiplier 2", 1, 8, 9, 19, 16, 3, 3, q);
    q.stride_h = q.stride_w = 2;
    add("depthwise 3x3 stride 2", 3, 8, 28, 27, 8, 3, 3, q);
    add("depthwise 3x3 stride 2, even width past one vector", 2, 8, 9, 40, 8, 3, 3, q);
    q.pad_left = 0; q.pad_right = 2;
    add("depthwise 3x3 stride 2, pad left 0", 2, 8, 9, 34, 8, 3, 3, q);
    q.stride_h = 3; q.stride_w = 3; q.pad_left = 2; q.pad_right = 0;
    add("depthwise 3x3 stride 3", 2, 8, 11, 38, 8, 3, 3, q);
    q.stride_h = q.stride_w = 2; q.pad_left = q.pad_right = 1;
    q.dilation_h = 2; q.dilation_w = 3;
    add("depthwise dilated stride 2", 1, 8, 20, 37, 8, 3, 3, q);
  }
  {
    qkit::conv2d_params q; q.pad_top = 2; q.pad_left = 0; q.pad_bottom = 1; q.pad_right = 3;
    add("5x5 asymmetric pads", 3, 4, 12, 10, 6, 5, 5, q);
    q.groups = 4;
    add("5x5 asymmetric pads depthwise", 3, 4, 12, 40, 4, 5, 5, q);
    q.groups = 2; q.stride_h = 2; q.stride_w = 3; q.dilation_h = 2; q.dilation_w = 1;
    add("5x3 strided dilated grouped", 3, 6, 17, 23, 4, 5, 3, q);
  }
  {
    qkit::conv2d_params q; q.dilation_h = q.dilation_w = 2; q.pad_top = q.pad_bottom = 2;
    q.pad_left = q.pad_right = 2;
    add("3x3 dilation 2", 3, 5, 10, 10, 3, 3, 3, q);
  }
  {
    add("1x1 pointwise, plane past the dot-kernel threshold", 3, 6, 12, 13, 10, 1, 1, {});
    qkit::conv2d_params q; q.groups = 2;
    add("1x1 groups 2", 3, 6, 5, 7, 4, 1, 1, q);
    add("1x1 groups 2, 16x16 plane", 2, 10, 16, 16, 6, 1, 1, q);
    q.groups = 1; q.stride_h = q.stride_w = 2;
    add("1x1 stride 2 (im2col path)", 3, 6, 9, 9, 4, 1, 1, q);
    q.stride_h = q.stride_w = 1; q.pad_left = 1;
    add("1x1 padded (im2col path)", 1, 6, 5, 5, 4, 1, 1, q);
  }
  {
    qkit::conv2d_params q; q.pad_top = q.pad_bottom = q.pad_left = q.pad_right = 3;
    add("kernel wider than input, padded", 1, 2, 2, 3, 3, 7, 7, q);
  }
  return v;
}

}  // namespace

TEST_CASE("conv2d fast paths agree with the references") {
  std::mt19937 rng(123);
  for (const auto& c : conv_cases()) check_conv_against_reference(c.s, c.name, rng);
}

TEST_CASE("conv2d over several batch chunks") {
  // im2col of one image here exceeds the per-chunk budget, so the batch is reduced in chunks.
  std::mt19937 rng(5);
  qkit::conv2d_params q; q.pad_top = q.pad_bottom = q.pad_left = q.pad_right = 1;
  check_conv_against_reference(make_shape(3, 64, 64, 64, 4, 3, 3, q), "chunked", rng);
  // Small planes batched side by side: here two images fill a chunk, so 5 take three.
  check_conv_against_reference(make_shape(5, 64, 15, 15, 8, 3, 3, q), "batched chunks", rng);
}

TEST_CASE("conv2d results are bit-identical for 1, 2 and 3 threads") {
  std::mt19937 rng(77);
  for (const auto& c : conv_cases()) {
    const auto& s = c.s;
    auto x = random_vector(s.N * s.C * s.H * s.W, rng);
    auto w = random_vector(s.O * (s.C / s.p.groups) * s.KH * s.KW, rng);
    auto b = random_vector(s.O, rng);
    auto dy = random_vector(s.N * s.O * s.OH() * s.OW(), rng);
    std::vector<std::vector<float>> y, dx, dw, db;
    for (std::size_t threads : {1, 2, 3}) {
      qkit::set_num_threads(threads);
      y.emplace_back(dy.size());
      dx.emplace_back(x.size());
      dw.emplace_back(w.size());
      db.emplace_back(s.O);
      qkit::conv2d_forward(s, x.data(), w.data(), b.data(), y.back().data());
      qkit::conv2d_backward_data(s, dy.data(), w.data(), dx.back().data());
      qkit::conv2d_backward_weight(s, x.data(), dy.data(), dw.back().data(), db.back().data());
    }
    qkit::set_num_threads(0);
    INFO(c.name);
    for (std::size_t t = 1; t < 3; ++t) {
      CHECK(y[0] == y[t]);
      CHECK(dx[0] == dx[t]);
      CHECK(dw[0] == dw[t]);
      CHECK(db[0] == db[t]);
    }
  }
}

TEST_CASE("conv2d depthwise: non-finite weights and inputs give what the reference gives") {
  // Stride 2 without padding leaves the last input column unread: its gradient must stay 0
  // even when a weight is infinite, and an Inf in that column must not reach dw.
  std::mt19937 rng(31);
  qkit::conv2d_params q;
  q.stride_h = q.stride_w = 2;
  q.groups = 4;
  const auto s = make_shape(2, 4, 8, 8, 4, 3, 3, q);
  const std::size_t OH = s.OH(), OW = s.OW();
  REQUIRE(OW == 3);
  auto x = random_vector(s.N * s.C * s.H * s.W, rng);
  auto w = random_vector(s.O * s.KH * s.KW, rng);
  auto dy = random_vector(s.N * s.O * OH * OW, rng);
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (std::isnan(a[i]) || std::isnan(b[i])) bad += std::isnan(a[i]) != std::isnan(b[i]);
      else bad += !(a[i] == b[i] || std::abs(a[i] - b[i]) <= 1e-5f * (1 + std::abs(b[i])));
    }
    return bad;
  };
  w[4] = std::numeric_limits<float>::infinity();
  std::vector<float> dx(x.size()), dx_ref(x.size());
  qkit::conv2d_backward_data(s, dy.data(), w.data(), dx.data());
  qkit::conv2d_backward_data_reference(s, dy.data(), w.data(), dx_ref.data());
  CHECK(dx[7] == 0.0f);  // column 7 of row 0 is never read
  CHECK(same(dx, dx_ref) == 0);

  x[7] = std::numeric_limits<float>::infinity();
  std::vector<float> dw(w.size()), dw_ref(w.size()), db(s.O), db_ref(s.O);
  qkit::conv2d_backward_weight(s, x.data(), dy.data(), dw.data(), db.data());
  qkit::conv2d_backward_weight_reference(s, x.data(), dy.data(), dw_ref.data(), db_ref.data());
  CHECK(std::isfinite(dw[0]));
  CHECK(same(dw, dw_ref) == 0);
  CHECK(same(db, db_ref) == 0);
}

TEST_CASE("conv2d detail: stride-2 de-interleave and interleave, every tail length") {
  for (std::size_t pairs = 0; pairs < 40; ++pairs) {
    std::vector<float> src(2 * pairs + 8), even(pairs + 8, -1.0f), odd(pairs + 8, -1.0f),
        back(2 * pairs + 8, -1.0f);
    for (std::size_t i = 0; i < src.size(); ++i) src[i] = float(i);
    qkit::detail::deinterleave2(src.data(), pairs, even.data(), odd.data());
    std::size_t bad = 0;
    for (std::size_t i = 0; i < pairs; ++i)
      bad += even[i] != float(2 * i) || odd[i] != float(2 * i + 1);
    for (std::size_t i = pairs; i < even.size(); ++i) bad += even[i] != -1.0f || odd[i] != -1.0f;
    qkit::detail::interleave2(even.data(), odd.data(), pairs, back.data());
    for (std::size_t i = 0; i < back.size(); ++i) bad += back[i] != (i < 2 * pairs ? float(i) : -1.0f);
    INFO("pairs=", pairs);
    CHECK(bad == 0);
  }
}

TEST_CASE("conv2d fast paths agree with the references on random shapes") {
  // Seeded sweep over every hyper-parameter, so that combinations nobody listed get run too.
  std::mt19937 rng(2024);
  auto pick = [&](std::size_t lo, std::size_t hi) {
    return std::uniform_int_distribution<std::size_t>(lo, hi)(rng);
  };
  std::size_t tried = 0;
  while (tried < 60) {
    qkit::conv2d_params p;
    p.stride_h = pick(1, 3); p.stride_w = pick(1, 3);
    p.dilation_h = pick(1, 2); p.dilation_w = pick(1, 2);
    p.pad_top = pick(0, 2); p.pad_bottom = pick(0, 2);
    p.pad_left = pick(0, 2); p.pad_right = pick(0, 2);
    const std::size_t kind = pick(0, 2);  // 0: groups 1, 1: depthwise, 2: two groups
    const std::size_t C = kind == 2 ? 2 * pick(1, 3) : pick(1, 6);
    p.groups = kind == 0 ? 1 : kind == 1 ? C : 2;
    const std::size_t O = kind == 1 ? C * pick(1, 2) : p.groups * pick(1, 4);
    const std::size_t KH = pick(1, 5), KW = pick(1, 5);
    auto s = make_shape(pick(1, 3), C, pick(1, 20), pick(1, 40), O, KH, KW, p);
    bool valid = true;
    try {
      s.validate();
    } catch (const qkit::shape_error&) {
      valid = false;
    }
    if (!valid) continue;
    ++tried;
    check_conv_against_reference(s, "random #" + std::to_string(tried), rng);
  }
}

TEST_CASE("conv2d: depthwise forward is the same chain of FMAs over the taps in every build") {
  // Each output is acc = fma(x, w, acc) from 0 over the taps in (kh, kw) order — the padding
  // contributing zeros — then + bias: what the SIMD kernel of every target does (through the
  // run-time AVX2+FMA kernel in a baseline build), so baseline and native builds agree.
#if QKIT_RUNTIME_FMA
  if (!qkit::detail::cpu_has_avx2_fma()) return;
#elif !defined(__FMA__)
  return;
#endif
  std::mt19937 rng(8);
  for (std::size_t stride : {1, 2})
    for (std::size_t mult : {1, 2}) {
      qkit::conv2d_params p;
      p.stride_h = p.stride_w = stride;
      p.pad_top = p.pad_left = p.pad_bottom = p.pad_right = 1;
      p.groups = 5;
      const auto s = make_shape(2, 5, 13, 11, 5 * mult, 3, 3, p);
      const auto x = random_vector(s.N * s.C * s.H * s.W, rng);
      const auto w = random_vector(s.O * s.KH * s.KW, rng);
      const auto b = random_vector(s.O, rng);
      std::vector<float> y(s.N * s.O * s.OH() * s.OW());
      qkit::conv2d_forward(s, x.data(), w.data(), b.data(), y.data());
      std::size_t differ = 0;
      for (std::size_t n = 0; n < s.N; ++n)
        for (std::size_t o = 0; o < s.O; ++o)
          for (std::size_t oh = 0; oh < s.OH(); ++oh)
            for (std::size_t ow = 0; ow < s.OW(); ++ow) {
              const std::size_t c = o / mult;
              float acc = 0.0f;
              for (std::size_t kh = 0; kh < 3; ++kh)
                for (std::size_t kw = 0; kw < 3; ++kw) {
                  const long h = long(oh * stride + kh) - 1, ww = long(ow * stride + kw) - 1;
                  const bool inside = h >= 0 && h < long(s.H) && ww >= 0 && ww < long(s.W);
                  const float xv = inside ? x[((n * s.C + c) * s.H + h) * s.W + ww] : 0.0f;
                  acc = std::fma(xv, w[o * 9 + kh * 3 + kw], acc);
                }
              const float want = acc + b[o];
              const float got = y[((n * s.O + o) * s.OH() + oh) * s.OW() + ow];
              differ += std::memcmp(&want, &got, sizeof(float)) != 0;
            }
      INFO("stride ", stride, " multiplier ", mult);
      CHECK(differ == 0);
    }
}
}  // namespace unit_conv
