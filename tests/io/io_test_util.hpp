// tests/io/io_test_util.hpp — what the reader tests share: writing and reading raw bytes, the
// message of the format_error a call throws, and raw deflate for hand-built zip and gzip files.
#pragma once

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <doctest/doctest.h>
#include <zlib.h>

#include <qkit/error.hpp>

namespace io_test {

inline void write_bytes(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// The message of the format_error `f` throws; any other exception (std::bad_alloc,
/// std::length_error, ...) fails the test by escaping.
template <class F>
std::string format_error_of(F&& f) {
  try {
    f();
  } catch (const qkit::format_error& e) {
    return e.what();
  }
  return "<no format_error>";
}

/// Raw deflate (no zlib or gzip header), as zip entries store it.
inline std::string deflate_raw(const std::string& in, int level = 6) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, level, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&zs, in.size()), '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

}  // namespace io_test
