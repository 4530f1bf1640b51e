// qkit/io/idx.hpp — reads IDX files (the MNIST / Fashion-MNIST image and label format),
// gzip-compressed or plain, through zlib. Calibration and evaluation data for the examples
// and tests come from Debian's dataset-fashion-mnist package this way.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

#include <zlib.h>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::io {

/// Unsigned-byte images of an IDX3 file, row-major [count][rows][cols].
struct idx_images {
  std::size_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;
};

/// A classification data set: images as [N, 1, rows, cols] floats in [0, 1] and one label
/// per image.
struct idx_dataset {
  qkit::tensor images;
  std::vector<std::uint8_t> labels;
};

namespace detail {

/// A gzip (or plain: zlib passes those through) file read sequentially, with errors that
/// name the file.
class gz_input {
 public:
  explicit gz_input(std::string path) : path_(std::move(path)) {
    f_ = ::gzopen(path_.c_str(), "rb");
    if (!f_) QKIT_THROW(qkit::format_error, "cannot open IDX file '", path_, "'");
    // A large buffer reads the 26 MB / 47 MB data sets at disk speed; a small file gets one
    // no larger than itself (zlib allocates three times this per open, which otherwise
    // dominates opening many small files, as the fuzz target does).
    std::error_code ec;
    const std::uintmax_t size = std::filesystem::file_size(path_, ec);
    const std::uintmax_t buffer = ec ? 1u << 17 : std::clamp<std::uintmax_t>(size, 1u << 12, 1u << 17);
    ::gzbuffer(f_, static_cast<unsigned>(buffer));
  }
  gz_input(const gz_input&) = delete;
  gz_input& operator=(const gz_input&) = delete;
  ~gz_input() { ::gzclose(f_); }

  /// Reads up to n bytes; returns how many were read (fewer only at the end of the data).
  std::size_t read_some(void* dst, std::size_t n) {
    std::size_t got = 0;
    auto* out = static_cast<char*>(dst);
    while (got < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - got, 1u << 30));
      const int r = ::gzread(f_, out + got, chunk);
      if (r < 0) {
        int code = 0;
        const char* msg = ::gzerror(f_, &code);
        QKIT_THROW(qkit::format_error, "IDX file '", path_, "': corrupt or truncated gzip data (",
                   msg ? msg : "zlib error", ") after ", consumed_ + got, " bytes");
      }
      if (r == 0) break;
      got += static_cast<std::size_t>(r);
    }
    consumed_ += got;
    return got;
  }
  void read_exact(void* dst, std::size_t n, const char* what) {
    const std::size_t before = consumed_;
    const std::size_t got = read_some(dst, n);
    if (got != n)
      QKIT_THROW(qkit::format_error, "IDX file '", path_, "' is truncated: expected ", n,
                 " bytes of ", what, " at offset ", before, ", got ", got);
  }
  bool at_end() {
    char c;
    return read_some(&c, 1) == 0;
  }
  const std::string& path() const { return path_; }

  /// The most data bytes that can follow what was read so far: the rest of the file when it
  /// is plain, or 1032 times it when it is gzip (deflate expands by at most 1032:1). Lets a
  /// reader refuse a header that announces more than the file can hold before allocating.
  std::uintmax_t max_remaining_bytes() const {
    std::error_code ec;
    const std::uintmax_t size = std::filesystem::file_size(path_, ec);
    if (ec) return std::numeric_limits<std::uintmax_t>::max();  // a pipe: no size to go by
    if (::gzdirect(f_)) return size > consumed_ ? size - consumed_ : 0;
    return size > std::numeric_limits<std::uintmax_t>::max() / 1032 ? size : size * 1032;
  }

 private:
  std::string path_;
  gzFile f_ = nullptr;
  std::size_t consumed_ = 0;
};

inline std::uint32_t big_endian_u32(const std::uint8_t* p) {
  return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) |
         std::uint32_t(p[3]);
}

/// Reads the magic and the dimensions; checks type (unsigned byte, 0x08) and rank.
inline std::vector<std::size_t> read_idx_header(gz_input& in, unsigned rank) {
  std::array<std::uint8_t, 4> magic{};
  in.read_exact(magic.data(), 4, "magic number");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != rank)
    QKIT_THROW(qkit::format_error, "IDX file '", in.path(), "': bad magic number 0x", std::hex,
               big_endian_u32(magic.data()), ", expected 0x", 0x800u + rank,
               " (unsigned bytes, ", std::dec, rank, " dimension", rank > 1 ? "s" : "", ")");
  std::vector<std::size_t> dims(rank);
  for (auto& d : dims) {
    std::array<std::uint8_t, 4> b{};
    in.read_exact(b.data(), 4, "dimension");
    d = big_endian_u32(b.data());
  }
  return dims;
}

/// count * rows * cols bytes, refused (format_error) when the product overflows or exceeds
/// what the rest of the file can hold, so that a corrupt header never drives an allocation.
inline std::size_t idx_data_bytes(gz_input& in, std::initializer_list<std::size_t> dims,
                                  const char* what) {
  std::size_t bytes = 1;
  std::string shape;
  for (auto d : dims) shape += (shape.empty() ? "" : "x") + std::to_string(d);
  for (auto d : dims) {
    if (d != 0 && bytes > std::numeric_limits<std::size_t>::max() / d)
      QKIT_THROW(qkit::format_error, "IDX file '", in.path(), "': header announces ", shape, " ",
                 what, ", more bytes than can be counted (corrupt header?)");
    bytes *= d;
  }
  const std::uintmax_t most = in.max_remaining_bytes();
  if (bytes > most)
    QKIT_THROW(qkit::format_error, "IDX file '", in.path(), "': header announces ", shape, " ",
               what, " (", bytes, " bytes) but the file can hold at most ", most,
               " (truncated or corrupt header)");
  return bytes;
}

inline std::string idx_path(const std::string& dir, const std::string& stem) {
  // Prefer the .gz Debian ships; accept an uncompressed copy beside it.
  const std::filesystem::path gz = std::filesystem::path(dir) / (stem + ".gz");
  if (std::filesystem::exists(gz)) return gz.string();
  const std::filesystem::path plain = std::filesystem::path(dir) / stem;
  if (std::filesystem::exists(plain)) return plain.string();
  QKIT_THROW(qkit::format_error, "IDX file '", gz.string(), "' (or '", plain.string(),
             "') not found");
}

}  // namespace detail

/// Reads an IDX3 unsigned-byte image file. limit > 0 reads only the first `limit` images
/// (the rest of the file is not checked then); limit == 0 reads all and requires the file to
/// end exactly after them.
inline idx_images read_idx_images(const std::string& path, std::size_t limit = 0) {
  detail::gz_input in(path);
  const auto dims = detail::read_idx_header(in, 3);
  idx_images out;
  out.count = (limit > 0 && limit < dims[0]) ? limit : dims[0];
  out.rows = dims[1];
  out.cols = dims[2];
  const std::size_t bytes =
      detail::idx_data_bytes(in, {out.count, out.rows, out.cols}, "images of pixel data");
  out.pixels.resize(bytes);
  in.read_exact(out.pixels.data(), bytes, "pixel data");
  if (out.count == dims[0] && !in.at_end())
    QKIT_THROW(qkit::format_error, "IDX file '", path, "': data continues after the ", dims[0],
               " images of ", out.rows, "x", out.cols, " its header announces");
  return out;
}

/// Reads an IDX1 unsigned-byte label file (same `limit` rule as read_idx_images).
inline std::vector<std::uint8_t> read_idx_labels(const std::string& path, std::size_t limit = 0) {
  detail::gz_input in(path);
  const auto dims = detail::read_idx_header(in, 1);
  const std::size_t count = (limit > 0 && limit < dims[0]) ? limit : dims[0];
  std::vector<std::uint8_t> labels(detail::idx_data_bytes(in, {count}, "labels"));
  in.read_exact(labels.data(), count, "labels");
  if (count == dims[0] && !in.at_end())
    QKIT_THROW(qkit::format_error, "IDX file '", path, "': data continues after the ", dims[0],
               " labels its header announces");
  return labels;
}

/// The item count an IDX file's header declares (its first dimension), read without the data.
inline std::size_t idx_item_count(const std::string& path) {
  detail::gz_input in(path);
  std::array<std::uint8_t, 4> magic{};
  in.read_exact(magic.data(), 4, "magic number");
  if (magic[0] != 0 || magic[1] != 0 || magic[3] == 0)
    QKIT_THROW(qkit::format_error, "IDX file '", path, "': bad magic number 0x", std::hex,
               detail::big_endian_u32(magic.data()), std::dec, ", expected 0x0000TTRR");
  std::array<std::uint8_t, 4> b{};
  in.read_exact(b.data(), 4, "dimension");
  return detail::big_endian_u32(b.data());
}

/// Loads Fashion-MNIST (train: 60000 images, test: 10000) from `dir`, e.g.
/// /usr/share/datasets/fashion-mnist. limit > 0 keeps the first `limit` examples.
/// Images become [N, 1, 28, 28] floats p / 255; labels are checked to lie in 0..9.
inline idx_dataset load_fashion_mnist(const std::string& dir, bool train, std::size_t limit = 0) {
  const std::string prefix = train ? "train" : "t10k";
  const std::string images_path = detail::idx_path(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = detail::idx_path(dir, prefix + "-labels-idx1-ubyte");
  // Compare the declared counts first, so a mismatch is caught even when `limit` is small.
  const std::size_t n_images = idx_item_count(images_path);
  const std::size_t n_labels = idx_item_count(labels_path);
  if (n_images != n_labels)
    QKIT_THROW(qkit::format_error, "Fashion-MNIST: '", images_path, "' holds ", n_images,
               " images but '", labels_path, "' holds ", n_labels,
               " labels; expected the same count");
  const idx_images img = read_idx_images(images_path, limit);
  idx_dataset ds;
  ds.labels = read_idx_labels(labels_path, limit);
  for (std::size_t i = 0; i < ds.labels.size(); ++i)
    if (ds.labels[i] > 9)
      QKIT_THROW(qkit::format_error, "Fashion-MNIST: '", labels_path, "': label ",
                 int(ds.labels[i]), " at index ", i, ", expected 0..9");
  ds.images = qkit::tensor(qkit::shape_type{img.count, 1, img.rows, img.cols});
  float* dst = ds.images.data();
  for (std::size_t i = 0; i < img.pixels.size(); ++i)
    dst[i] = static_cast<float>(img.pixels[i]) / 255.0f;
  return ds;
}

}  // namespace qkit::io
