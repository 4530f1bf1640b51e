// Statistics kernels: SIMD == scalar reference bit for bit at every tail length, NaN/Inf
// reporting, and the exact-bin definition of the histogram.
#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <qkit/calib/stats.hpp>

namespace unit_stats {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {
constexpr std::size_t W = qkit::simd<float>::size;
const std::size_t lengths[] = {0, 1, W - 1, W, W + 1, 3 * W + 5, 1000, 4099};

std::vector<float> normal(std::size_t n, unsigned seed, float sigma = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}
bool same_bits(float a, float b) { return std::bit_cast<std::uint32_t>(a) == std::bit_cast<std::uint32_t>(b); }
}  // namespace

TEST_CASE("scan_min_max equals its scalar reference bit for bit") {
  for (std::size_t n : lengths) {
    CAPTURE(n);
    auto v = normal(n, 7 + static_cast<unsigned>(n));
    if (n > 2) {
      v[n / 2] = -0.0f;  // signed zeros must not depend on lane order
      v[n - 1] = 0.0f;
    }
    const auto a = qkit::scan_min_max(v.data(), n);
    const auto b = qkit::scan_min_max_reference(v.data(), n);
    CHECK(same_bits(a.min, b.min));
    CHECK(same_bits(a.max, b.max));
    CHECK(a.nonfinite == b.nonfinite);
    CHECK(a.first_nonfinite == b.first_nonfinite);
    CHECK(a.all_finite());
    if (n > 0) {
      CHECK(a.min == *std::min_element(v.begin(), v.end()));
      CHECK(a.max == *std::max_element(v.begin(), v.end()));
    }
  }
}

TEST_CASE("all-zero data with -0 reports +0 for min and max") {
  std::vector<float> v(3 * W + 5, -0.0f);
  v[W + 2] = 0.0f;
  const auto a = qkit::scan_min_max(v.data(), v.size());
  CHECK(!std::signbit(a.min));
  CHECK(!std::signbit(a.max));
}

TEST_CASE("scan_min_max counts NaN and Inf and finds the first, in the vector body and tail") {
  for (std::size_t n : lengths) {
    if (n < 3) continue;
    CAPTURE(n);
    auto v = normal(n, 3);
    const std::size_t first = n / 3;
    v[first] = std::numeric_limits<float>::quiet_NaN();
    v[n - 1] = std::numeric_limits<float>::infinity();
    v[n - 2] = -std::numeric_limits<float>::infinity();
    const auto a = qkit::scan_min_max(v.data(), n);
    const auto b = qkit::scan_min_max_reference(v.data(), n);
    CHECK(a == b);
    CHECK(a.nonfinite == (first == n - 2 || first == n - 1 ? 2u : 3u));
    CHECK(a.first_nonfinite == first);
    CHECK(a.max == std::numeric_limits<float>::infinity());
  }
}

TEST_CASE("threaded scan over a large array equals the reference") {
  auto v = normal(1'000'003, 11);
  v[777'777] = std::numeric_limits<float>::quiet_NaN();
  v[900'001] = std::numeric_limits<float>::quiet_NaN();
  const auto a = qkit::scan_min_max(v.data(), v.size());
  CHECK(a == qkit::scan_min_max_reference(v.data(), v.size()));
  CHECK(a.nonfinite == 2);
  CHECK(a.first_nonfinite == 777'777);
  CHECK(same_bits(qkit::abs_max(v.data(), v.size()), qkit::abs_max_reference(v.data(), v.size())));
}

TEST_CASE("abs_max equals its reference") {
  for (std::size_t n : lengths) {
    CAPTURE(n);
    auto v = normal(n, 5);
    if (n > 1) v[n - 1] = -9.5f;
    const float a = qkit::abs_max(v.data(), n);
    CHECK(same_bits(a, qkit::abs_max_reference(v.data(), n)));
    if (n > 1) CHECK(a == 9.5f);
  }
}

TEST_CASE("histogram_update: SIMD equals reference, bins are exact floors") {
  const qkit::bin_grid g{-6, -300, 600};  // w = 1/64, bins cover [-300/64, 300/64)
  for (std::size_t n : lengths) {
    CAPTURE(n);
    auto v = normal(n, 9, 2.0f);
    // Values exactly on bin edges, just below them, outside, and non-finite.
    if (n > 8) {
      v[0] = 1.0f / 64;
      v[1] = std::nextafter(1.0f / 64, 0.0f);
      v[2] = -300.0f / 64;
      v[3] = 300.0f / 64;  // first value past the grid: not counted
      v[4] = std::numeric_limits<float>::quiet_NaN();
      v[5] = -std::numeric_limits<float>::denorm_min();
      v[6] = -0.0f;
    }
    std::vector<std::uint64_t> a(g.bins, 0), b(g.bins, 0);
    const auto ca = qkit::histogram_update(v.data(), n, g, a.data());
    const auto cb = qkit::histogram_update_reference(v.data(), n, g, b.data());
    CHECK(ca == cb);
    CHECK(a == b);
    if (n > 8) {
      std::vector<std::uint64_t> one(g.bins, 0);
      qkit::histogram_update(v.data(), 1, g, one.data());
      CHECK(one[301] == 1);  // 1/64 is the left edge of global bin 1
      std::fill(one.begin(), one.end(), 0);
      qkit::histogram_update(v.data() + 1, 1, g, one.data());
      CHECK(one[300] == 1);
      std::fill(one.begin(), one.end(), 0);
      qkit::histogram_update(v.data() + 5, 1, g, one.data());
      CHECK(one[299] == 1);  // a negative denormal lies in bin -1
      std::fill(one.begin(), one.end(), 0);
      qkit::histogram_update(v.data() + 6, 1, g, one.data());
      CHECK(one[300] == 1);  // -0 is 0
    }
  }
}

TEST_CASE("negative tiny value whose scaled product underflows still lands in bin -1") {
  const float x = -std::numeric_limits<float>::denorm_min() * 2;
  CHECK(qkit::exact_bin_of(x, 3) == -1.0);
  const qkit::bin_grid g{3, -4, 8};
  std::vector<float> v(3 * W + 5, x);
  std::vector<std::uint64_t> a(8, 0), b(8, 0);
  qkit::histogram_update(v.data(), v.size(), g, a.data());
  qkit::histogram_update_reference(v.data(), v.size(), g, b.data());
  CHECK(a == b);
  CHECK(a[3] == v.size());
}

TEST_CASE("aimet_histogram_update equals its reference, halves round away from zero") {
  const float bucket = 0.25f, offset = -8.0f;  // index = round(x * 4 + 8)
  for (std::size_t n : lengths) {
    CAPTURE(n);
    auto v = normal(n, 13, 1.5f);
    if (n > 4) {
      v[0] = -1.875f;  // x*4+8 = 0.5 -> 1
      v[1] = 0.125f;   // 8.5 -> 9
      v[2] = -2.125f;  // -0.5 -> -1: dropped
      v[3] = 1.0e9f;
    }
    std::vector<std::uint64_t> a(64, 0), b(64, 0);
    CHECK(qkit::aimet_histogram_update(v.data(), n, bucket, offset, 64, a.data()) ==
          qkit::aimet_histogram_update_reference(v.data(), n, bucket, offset, 64, b.data()));
    CHECK(a == b);
    if (n > 4) {
      std::vector<std::uint64_t> c(64, 0);
      CHECK(qkit::aimet_histogram_update(v.data(), 4, bucket, offset, 64, c.data()) == 2);
      CHECK(c[1] == 1);
      CHECK(c[9] == 1);
    }
  }
}

TEST_CASE("large histogram updates (threaded, interleaved counters) equal the references") {
  auto v = normal(700'001, 17, 1.0f);
  v[5] = std::numeric_limits<float>::quiet_NaN();
  const qkit::bin_grid g{-7, -512, 1024};
  std::vector<std::uint64_t> a(g.bins, 0), b(g.bins, 0);
  CHECK(qkit::histogram_update(v.data(), v.size(), g, a.data()) ==
        qkit::histogram_update_reference(v.data(), v.size(), g, b.data()));
  CHECK(a == b);
  std::vector<std::uint64_t> c(512, 0), d(512, 0);
  CHECK(qkit::aimet_histogram_update(v.data(), v.size(), 0.02f, -256.0f, 512, c.data()) ==
        qkit::aimet_histogram_update_reference(v.data(), v.size(), 0.02f, -256.0f, 512, d.data()));
  CHECK(c == d);
}

TEST_CASE("kernel results do not depend on the thread count") {
  auto v = normal(900'000, 19, 3.0f);
  v[444'444] = std::numeric_limits<float>::infinity();
  const qkit::bin_grid g{-5, -512, 1024};
  std::vector<qkit::scan_result> scans;
  std::vector<std::vector<std::uint64_t>> hists;
  for (std::size_t t : {1u, 2u, 3u}) {
    qkit::set_num_threads(t);
    scans.push_back(qkit::scan_min_max(v.data(), v.size()));
    hists.emplace_back(g.bins, 0);
    qkit::histogram_update(v.data(), v.size(), g, hists.back().data());
  }
  qkit::set_num_threads(0);
  CHECK(scans[0] == scans[1]);
  CHECK(scans[0] == scans[2]);
  CHECK(scans[0].first_nonfinite == 444'444);
  CHECK(hists[0] == hists[1]);
  CHECK(hists[0] == hists[2]);
}
}  // namespace unit_stats
