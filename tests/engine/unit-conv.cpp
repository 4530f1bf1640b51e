// Tests for qkit/tensor/conv.hpp: the references against hand-computed values and the adjoint
// identities that tie forward, backward-data and backward-weight together; every fast path
// against the references; thread-count independence.
#include <doctest/doctest.h>

#include <cmath>
#include <random>
#include <vector>

#include <qkit/tensor/conv.hpp>

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
