// Tests of the IDX reader on Debian's Fashion-MNIST files and on damaged copies of them.
// Expected sums and labels were computed once with Python's gzip module over the same files.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>

#include <zlib.h>

#include <qkit/io/idx.hpp>

#include "io_test_util.hpp"

namespace unit_idx {  // the suite is one translation unit: tests/CMakeLists.txt

namespace fs = std::filesystem;
using namespace qkit::io;

using io_test::format_error_of;

namespace {
const std::string fm_dir = QKIT_FASHION_MNIST;

fs::path idx_out_dir(const std::string& sub) {
  fs::path p = fs::path(QKIT_TEST_OUTPUT) / "io" / sub;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}
std::string gunzip_file(const fs::path& p) {
  gzFile f = gzopen(p.c_str(), "rb");
  REQUIRE(f != nullptr);
  std::string out;
  char buf[1 << 16];
  int r;
  while ((r = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(r));
  gzclose(f);
  return out;
}
void gzip_to(const fs::path& p, const std::string& data) {
  gzFile f = gzopen(p.c_str(), "wb1");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, data.data(), static_cast<unsigned>(data.size())) == static_cast<int>(data.size()));
  gzclose(f);
}
void write_plain(const fs::path& p, const std::string& data) { io_test::write_bytes(p, data); }
}  // namespace

TEST_CASE("idx: Fashion-MNIST training set, counts, labels and pixel sums") {
  const idx_images img = read_idx_images(fm_dir + "/train-images-idx3-ubyte.gz");
  CHECK(img.count == 60000);
  CHECK(img.rows == 28);
  CHECK(img.cols == 28);
  REQUIRE(img.pixels.size() == 60000u * 784u);
  const std::uint64_t total = std::accumulate(img.pixels.begin(), img.pixels.end(), std::uint64_t{0});
  CHECK(total == 3431114169ull);
  CHECK(std::accumulate(img.pixels.begin(), img.pixels.begin() + 784, 0u) == 76247u);
  CHECK(std::accumulate(img.pixels.end() - 784, img.pixels.end(), 0u) == 16684u);
  CHECK(img.pixels[14 * 28 + 14] == 217);

  const auto labels = read_idx_labels(fm_dir + "/train-labels-idx1-ubyte.gz");
  REQUIRE(labels.size() == 60000);
  CHECK(std::vector<std::uint8_t>(labels.begin(), labels.begin() + 10) ==
        std::vector<std::uint8_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5});
  std::array<std::size_t, 10> hist{};
  REQUIRE(*std::max_element(labels.begin(), labels.end()) < 10);
  for (auto l : labels) ++hist[l];
  for (auto h : hist) CHECK(h == 6000);
  CHECK(idx_item_count(fm_dir + "/train-labels-idx1-ubyte.gz") == 60000);
}

TEST_CASE("idx: load_fashion_mnist test split as [N,1,28,28] floats in [0,1]") {
  const idx_dataset ds = load_fashion_mnist(fm_dir, /*train=*/false);
  CHECK(ds.images.shape() == qkit::shape_type{10000, 1, 28, 28});
  REQUIRE(ds.labels.size() == 10000);
  std::array<std::size_t, 10> hist{};
  for (auto l : ds.labels) ++hist[l];
  for (auto h : hist) CHECK(h == 1000);
  CHECK(std::vector<std::uint8_t>(ds.labels.begin(), ds.labels.begin() + 10) ==
        std::vector<std::uint8_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7});
  CHECK(ds.images(0, 0, 14, 14) == 110.0f / 255.0f);
  double first = 0;
  for (std::size_t i = 0; i < 784; ++i) first += ds.images.data()[i];
  CHECK(first * 255.0 == doctest::Approx(33456.0).epsilon(1e-6));
  float lo = 1, hi = 0;
  for (std::size_t i = 0; i < ds.images.size(); ++i) {
    lo = std::min(lo, ds.images.data()[i]);
    hi = std::max(hi, ds.images.data()[i]);
  }
  CHECK(lo == 0.0f);
  CHECK(hi == 1.0f);

  const idx_dataset few = load_fashion_mnist(fm_dir, /*train=*/true, 100);
  CHECK(few.images.shape() == qkit::shape_type{100, 1, 28, 28});
  CHECK(few.labels.size() == 100);
  CHECK(few.labels[0] == 9);
  CHECK(few.images(0, 0, 14, 14) == 217.0f / 255.0f);
}

TEST_CASE("idx: damaged files are format errors naming the file and what was expected") {
  const fs::path dir = idx_out_dir("idx");
  const std::string labels = gunzip_file(fm_dir + "/t10k-labels-idx1-ubyte.gz");
  const std::string images = gunzip_file(fm_dir + "/t10k-images-idx3-ubyte.gz");
  REQUIRE(labels.size() == 10008);
  REQUIRE(images.size() == 16 + 10000u * 784u);

  SUBCASE("bad magic") {
    std::string b = labels;
    b[3] = 3;
    gzip_to(dir / "magic.gz", b);
    const auto m = format_error_of([&] { read_idx_labels((dir / "magic.gz").string()); });
    CHECK(m.find("magic.gz") != std::string::npos);
    CHECK(m.find("bad magic number 0x803, expected 0x801") != std::string::npos);
    // An image file passed as labels is caught the same way.
    const auto m2 = format_error_of([&] { read_idx_labels(fm_dir + "/t10k-images-idx3-ubyte.gz"); });
    CHECK(m2.find("expected 0x801") != std::string::npos);
  }
  SUBCASE("truncated data, compressed and plain") {
    gzip_to(dir / "short-images.gz", images.substr(0, images.size() - 1000));
    const auto m = format_error_of([&] { read_idx_images((dir / "short-images.gz").string()); });
    CHECK(m.find("short-images.gz") != std::string::npos);
    CHECK(m.find("truncated: expected 7840000 bytes of pixel data") != std::string::npos);
    write_plain(dir / "short-labels", labels.substr(0, 5000));
    const auto m2 = format_error_of([&] { read_idx_labels((dir / "short-labels").string()); });
    // A plain file's length is known: the header is refused before anything is allocated.
    CHECK(m2.find("header announces 10000 labels (10000 bytes) but the file can hold at most "
                  "4992") != std::string::npos);
    write_plain(dir / "header-only", labels.substr(0, 6));
    CHECK_THROWS_AS(read_idx_labels((dir / "header-only").string()), qkit::format_error);
  }
  SUBCASE("gzip stream cut short") {
    std::ifstream in(fm_dir + "/t10k-labels-idx1-ubyte.gz", std::ios::binary);
    std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    write_plain(dir / "cut.gz", gz.substr(0, gz.size() / 2));
    const auto m = format_error_of([&] { read_idx_labels((dir / "cut.gz").string()); });
    CHECK(m.find("cut.gz") != std::string::npos);
  }
  SUBCASE("trailing data after the announced items") {
    gzip_to(dir / "long.gz", labels + "xyz");
    const auto m = format_error_of([&] { read_idx_labels((dir / "long.gz").string()); });
    CHECK(m.find("data continues after the 10000 labels") != std::string::npos);
  }
  SUBCASE("images and labels disagree in count") {
    const fs::path ds = dir / "ds";
    fs::create_directories(ds);
    gzip_to(ds / "t10k-images-idx3-ubyte.gz", images);
    std::string fewer = labels.substr(0, 8 + 9999);
    fewer[6] = static_cast<char>(9999 >> 8);
    fewer[7] = static_cast<char>(9999 & 0xFF);
    gzip_to(ds / "t10k-labels-idx1-ubyte.gz", fewer);
    CHECK(read_idx_labels((ds / "t10k-labels-idx1-ubyte.gz").string()).size() == 9999);
    const auto m = format_error_of([&] { load_fashion_mnist(ds.string(), false, 10); });
    CHECK(m.find("holds 10000 images") != std::string::npos);
    CHECK(m.find("9999 labels") != std::string::npos);
  }
  SUBCASE("label out of range") {
    const fs::path ds = dir / "ds2";
    fs::create_directories(ds);
    gzip_to(ds / "t10k-images-idx3-ubyte.gz", images);
    std::string b = labels;
    b[8 + 5] = 12;
    write_plain(ds / "t10k-labels-idx1-ubyte", b);  // plain copy is found too
    const auto m = format_error_of([&] { load_fashion_mnist(ds.string(), false); });
    CHECK(m.find("label 12 at index 5, expected 0..9") != std::string::npos);
  }
  SUBCASE("missing files") {
    const auto m = format_error_of([&] { load_fashion_mnist(dir.string(), true); });
    CHECK(m.find("train-images-idx3-ubyte.gz") != std::string::npos);
    CHECK(m.find("not found") != std::string::npos);
  }
}
}  // namespace unit_idx
