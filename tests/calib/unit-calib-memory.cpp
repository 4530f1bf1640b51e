// Calibration memory is bounded: feeding ten times more calibration data to a quantizer (per
// tensor and per channel, every range setter, both histogram modes) leaves the memory its
// statistics hold unchanged, and data whose range keeps growing never takes the histogram past
// its stated capacity. statistics_bytes() counts the setters and their heap storage.
#include <doctest/doctest.h>

#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include <qkit/calib/entropy.hpp>
#include <qkit/calib/minmax.hpp>
#include <qkit/calib/mse.hpp>
#include <qkit/calib/percentile.hpp>
#include <qkit/calib/tf_enhanced.hpp>
#include <qkit/sim/quantizer.hpp>

namespace unit_calib_memory {  // the suite is one translation unit: tests/CMakeLists.txt

using namespace qkit;

namespace {

// A batch of `shape` values, uniform in [-1, 1), with both ends of the range in its first two
// elements of every channel row (the first batch then fixes every histogram's grid, and the
// footprint must not move for the rest of the stream).
std::vector<float> batch(std::size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(-0.99f, 0.99f);
  std::vector<float> v(n);
  for (auto& x : v) x = u(rng) * scale;
  return v;
}

// Observes `batches` batches of [8, 4, 16, 16] (channel axis 1 when per channel, so the
// gathering path runs) and returns the statistics' footprint.
template <class R>
struct stream {
  quantizer<R> q;
  std::mt19937 rng{7};
  std::vector<std::size_t> shape{8, 4, 16, 16};
  std::size_t n = 8 * 4 * 16 * 16;

  stream(bool per_channel, const R& proto)
      : q("memory", settings(per_channel), proto) {}
  static quantizer_settings settings(bool per_channel) {
    quantizer_settings s;
    if (per_channel) s.channel_axis = 1;
    return s;
  }
  void feed(std::size_t batches, float scale = 1.0f) {
    for (std::size_t b = 0; b < batches; ++b) {
      auto x = batch(n, rng, scale);
      if (b == 0 && scale == 1.0f) {
        // Every channel's slice sees -1 and +1 in the very first batch.
        for (std::size_t c = 0; c < 4; ++c) {
          x[c * 256] = -1.0f;
          x[c * 256 + 1] = 1.0f;
        }
      }
      q.observe(x.data(), shape);
    }
  }
};

template <class R>
void check_bounded(const std::string& name, const R& proto) {
  for (bool per_channel : {false, true}) {
    const std::string label = name + (per_channel ? " per channel" : " per tensor");
    INFO(label);
    stream<R> s(per_channel, proto);
    s.feed(3);
    const std::size_t after_3 = s.q.statistics_bytes();
    s.feed(27);  // 10x the data in all
    const std::size_t after_30 = s.q.statistics_bytes();
    CHECK(after_3 > 0);
    CHECK(after_30 == after_3);
    MESSAGE(label << ": " << after_30 << " bytes after 30 batches of " << s.n << " values");
    // And encodings still come out of the bounded statistics.
    s.q.compute_encodings();
    CHECK(s.q.encodings().size() == (per_channel ? 4u : 1u));
  }
}

}  // namespace

TEST_CASE("calibration memory: 10x more data leaves every range setter's footprint unchanged") {
  check_bounded("minmax", minmax_range{});
  check_bounded("tf_enhanced exact", tf_enhanced_range{histogram_mode::exact});
  check_bounded("tf_enhanced aimet", tf_enhanced_range{histogram_mode::aimet_parity});
  check_bounded("percentile exact", percentile_range{99.9, histogram_mode::exact});
  check_bounded("percentile aimet", percentile_range{99.9, histogram_mode::aimet_parity});
  check_bounded("mse exact", mse_range{histogram_mode::exact});
  check_bounded("mse aimet", mse_range{histogram_mode::aimet_parity});
  check_bounded("entropy", entropy_range{});
}

TEST_CASE("calibration memory: a range that keeps growing stays within the histogram's capacity") {
  // Each batch is wider than all before it, so the exact histogram re-bins again and again; its
  // counts never exceed `capacity` bins, whatever the number of values.
  const std::size_t cap = exact_histogram::default_capacity;
  const std::size_t bound = sizeof(exact_histogram) + cap * sizeof(std::uint64_t);
  exact_histogram h;
  std::mt19937 rng(3);
  std::size_t largest = 0;
  for (int b = 0; b < 40; ++b) {
    const auto x = batch(20000, rng, static_cast<float>(1 << (b % 20)) * (1.0f + 0.01f * b));
    h.observe(x.data(), x.size());
    largest = std::max(largest, h.bytes());
    CHECK(h.bins() <= cap);
  }
  CHECK(largest <= bound);
  CHECK(h.total() == 40u * 20000u);

  // The same through a per-channel TF-Enhanced quantizer: 10x the data, bounded the same way.
  stream<tf_enhanced_range> s(true, tf_enhanced_range{});
  for (int b = 0; b < 30; ++b) s.feed(1, 1.0f + 0.5f * static_cast<float>(b));
  const std::size_t per_setter = sizeof(tf_enhanced_range) + cap * sizeof(std::uint64_t);
  CHECK(s.q.statistics_bytes() <= 4 * per_setter);
}

TEST_CASE("calibration memory: the AIMET-parity histogram is 512 buckets from its first batch") {
  aimet_histogram h;
  std::mt19937 rng(5);
  const auto first = batch(1000, rng);
  h.observe(first.data(), first.size());
  const std::size_t one = h.bytes();
  for (int b = 0; b < 9; ++b) {
    const auto x = batch(1000, rng, 3.0f);  // outside the first batch's range: dropped, as AIMET
    h.observe(x.data(), x.size());
  }
  CHECK(h.bytes() == one);
  CHECK(one == sizeof(aimet_histogram) + 2 * aimet_histogram::bins * sizeof(double));
}
}  // namespace unit_calib_memory
