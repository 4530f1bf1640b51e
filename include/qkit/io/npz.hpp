// qkit/io/npz.hpp — numpy's .npy and .npz files: weights keyed by layer name, exchanged with
// np.load / np.savez. Writes stored float32 entries; reads stored or deflated entries
// (np.savez_compressed), zip64 records, and float32 or float64 arrays.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <zlib.h>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"
#include "atomic_file.hpp"
#include "tensor_proto.hpp"  // detail::read_whole_file

namespace qkit::io {

/// Arrays of an .npz file in archive order.
using npz_arrays = std::vector<std::pair<std::string, qkit::tensor>>;

namespace detail {

inline void put_u16(std::string& s, std::uint32_t v) {
  s.push_back(static_cast<char>(v & 0xFF));
  s.push_back(static_cast<char>((v >> 8) & 0xFF));
}
inline void put_u32(std::string& s, std::uint32_t v) {
  put_u16(s, v & 0xFFFF);
  put_u16(s, v >> 16);
}
inline std::uint64_t get_le(const std::uint8_t* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

/// The .npy bytes (format 1.0) of a float32 C-order array.
inline std::string npy_bytes(const qkit::tensor& t) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < t.dimension(); ++i) {
    header += std::to_string(t.shape()[i]);
    if (i + 1 < t.dimension() || t.dimension() == 1) header += ",";
    if (i + 1 < t.dimension()) header += " ";
  }
  header += "), }";
  // numpy pads the header with spaces so that the data starts on a 64-byte boundary.
  const std::size_t preamble = 10;
  const std::size_t total = (preamble + header.size() + 1 + 63) / 64 * 64;
  header.append(total - preamble - header.size() - 1, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  put_u16(out, static_cast<std::uint32_t>(header.size()));
  out += header;
  const std::size_t bytes = t.size() * sizeof(float);
  const std::size_t at = out.size();
  out.resize(at + bytes);
  if (bytes) std::memcpy(out.data() + at, t.data(), bytes);
  return out;
}

/// Value of `key` in a numpy header dict, as the raw text up to its delimiter.
inline std::string npy_header_value(const std::string& header, const std::string& key,
                                    const std::string& where) {
  const std::string quoted1 = "'" + key + "'", quoted2 = "\"" + key + "\"";
  std::size_t k = header.find(quoted1);
  if (k == std::string::npos) k = header.find(quoted2);
  if (k == std::string::npos)
    QKIT_THROW(qkit::format_error, where, ": npy header has no '", key, "': ", header);
  std::size_t colon = header.find(':', k + key.size() + 2);
  if (colon == std::string::npos)
    QKIT_THROW(qkit::format_error, where, ": npy header malformed near '", key, "'");
  std::size_t v = header.find_first_not_of(" ", colon + 1);
  if (v == std::string::npos)
    QKIT_THROW(qkit::format_error, where, ": npy header malformed near '", key, "'");
  std::size_t e;
  if (header[v] == '(') {
    e = header.find(')', v);
    if (e == std::string::npos)
      QKIT_THROW(qkit::format_error, where, ": npy header shape is not closed");
    return header.substr(v, e - v + 1);
  }
  if (header[v] == '\'' || header[v] == '"') {
    e = header.find(header[v], v + 1);
    if (e == std::string::npos)
      QKIT_THROW(qkit::format_error, where, ": npy header string is not closed");
    return header.substr(v + 1, e - v - 1);
  }
  e = header.find_first_of(",}", v);
  if (e == std::string::npos) e = header.size();
  std::string val = header.substr(v, e - v);
  while (!val.empty() && val.back() == ' ') val.pop_back();
  return val;
}

/// Parses one .npy image held in memory; `where` names the file (and entry) for errors.
inline qkit::tensor parse_npy(const std::uint8_t* data, std::size_t size,
                              const std::string& where) {
  if (size < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0)
    QKIT_THROW(qkit::format_error, where, ": not an .npy array (bad magic)");
  const int major = data[6];
  std::size_t header_len, header_at;
  if (major == 1) {
    header_len = get_le(data + 8, 2);
    header_at = 10;
  } else if (major == 2 || major == 3) {
    if (size < 12) QKIT_THROW(qkit::format_error, where, ": truncated .npy preamble");
    header_len = get_le(data + 8, 4);
    header_at = 12;
  } else {
    QKIT_THROW(qkit::format_error, where, ": unsupported .npy format version ", major, ".",
               int(data[7]), " (expected 1.0, 2.0 or 3.0)");
  }
  if (header_len > size - header_at)
    QKIT_THROW(qkit::format_error, where, ": truncated .npy header (", header_len,
               " bytes announced, ", size - header_at, " present)");
  const std::string header(reinterpret_cast<const char*>(data + header_at), header_len);
  const std::string descr = npy_header_value(header, "descr", where);
  const std::string fortran = npy_header_value(header, "fortran_order", where);
  const std::string shape_text = npy_header_value(header, "shape", where);

  std::size_t width;
  if (descr == "<f4") width = 4;
  else if (descr == "<f8") width = 8;
  else
    QKIT_THROW(qkit::format_error, where, ": unsupported dtype '", descr,
               "' (expected little-endian float32 '<f4' or float64 '<f8')");
  if (fortran != "False" && fortran != "True")
    QKIT_THROW(qkit::format_error, where, ": fortran_order is '", fortran,
               "', expected True or False");

  qkit::shape_type shape;
  std::size_t i = 1;
  while (i < shape_text.size()) {
    while (i < shape_text.size() && (shape_text[i] == ' ' || shape_text[i] == ',')) ++i;
    if (i >= shape_text.size() || shape_text[i] == ')') break;
    std::size_t j = i;
    while (j < shape_text.size() && shape_text[j] >= '0' && shape_text[j] <= '9') ++j;
    if (j == i)
      QKIT_THROW(qkit::format_error, where, ": malformed shape ", shape_text);
    if (j - i > 15) QKIT_THROW(qkit::format_error, where, ": implausible shape ", shape_text);
    shape.push_back(std::stoull(shape_text.substr(i, j - i)));
    i = j;
  }
  std::size_t n = 1;
  for (auto d : shape) {
    if (d != 0 && n > (std::size_t(1) << 56) / d)
      QKIT_THROW(qkit::format_error, where, ": implausible shape ", shape_text);
    n *= d;
  }
  const std::size_t data_at = header_at + header_len;
  if (size - data_at != n * width)
    QKIT_THROW(qkit::format_error, where, ": array of shape ", qkit::shape_string(shape),
               " needs ", n * width, " bytes of data, found ", size - data_at,
               size - data_at < n * width ? " (truncated)" : "");

  std::vector<float> values(n);
  const std::uint8_t* p = data + data_at;
  if (width == 4) {
    if (n) std::memcpy(values.data(), p, n * 4);
  } else {
    for (std::size_t k = 0; k < n; ++k) {
      double d;
      std::memcpy(&d, p + 8 * k, 8);
      values[k] = static_cast<float>(d);
    }
  }
  qkit::tensor out(shape);
  if (fortran == "True") {
    // Column-major data: adapt it as such and let xtensor reorder into qkit's row-major.
    out = xt::adapt<xt::layout_type::column_major>(values.data(), n, xt::no_ownership(), shape);
  } else if (n) {
    std::copy(values.begin(), values.end(), out.data());
  }
  return out;
}

inline std::uint32_t crc_of(const std::string& bytes) {
  uLong crc = ::crc32(0L, Z_NULL, 0);
  std::size_t off = 0;
  while (off < bytes.size()) {  // zlib takes uInt lengths
    const uInt chunk = static_cast<uInt>(std::min<std::size_t>(bytes.size() - off, 1u << 30));
    crc = ::crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + off), chunk);
    off += chunk;
  }
  return static_cast<std::uint32_t>(crc);
}

/// Raw-deflate decompression of one zip entry into exactly `expected` bytes.
inline std::string inflate_entry(const std::uint8_t* src, std::size_t src_size,
                                 std::size_t expected, const std::string& where) {
  std::string out(expected, '\0');
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK)
    QKIT_THROW(qkit::format_error, where, ": zlib inflateInit failed");
  zs.next_in = const_cast<Bytef*>(src);
  zs.avail_in = static_cast<uInt>(src_size);
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(expected);
  const int rc = inflate(&zs, Z_FINISH);
  const std::size_t produced = expected - zs.avail_out;
  inflateEnd(&zs);
  if (rc != Z_STREAM_END || produced != expected)
    QKIT_THROW(qkit::format_error, where, ": deflated data is corrupt or truncated (zlib code ",
               rc, ", ", produced, " of ", expected, " bytes)");
  return out;
}

struct zip_entry {
  std::string name;
  std::uint16_t method;
  std::uint32_t crc;
  std::uint64_t compressed, uncompressed, local_offset;
};

/// Reads the central directory, the authoritative list of a zip's entries (numpy writes
/// local headers with zip64 sentinel sizes (0xFFFFFFFF) and fixes only the central directory).
inline std::vector<zip_entry> read_zip_directory(const std::vector<std::uint8_t>& buf,
                                                 const std::string& file) {
  const std::size_t size = buf.size();
  const auto bad = [&](const std::string& what) {
    QKIT_THROW(qkit::format_error, "file '", file, "': not a valid zip/npz archive: ", what);
  };
  if (size < 22) bad("too short (" + std::to_string(size) + " bytes)");
  std::size_t eocd = std::string::npos;
  const std::size_t lowest = size >= 22 + 65535 ? size - 22 - 65535 : 0;
  for (std::size_t p = size - 22 + 1; p-- > lowest;) {
    if (get_le(&buf[p], 4) == 0x06054b50u) {
      eocd = p;
      break;
    }
  }
  if (eocd == std::string::npos) bad("no end-of-central-directory record");
  std::uint64_t count = get_le(&buf[eocd + 10], 2);
  std::uint64_t cd_size = get_le(&buf[eocd + 12], 4);
  std::uint64_t cd_offset = get_le(&buf[eocd + 16], 4);
  if (count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu) {
    if (eocd < 20 || get_le(&buf[eocd - 20], 4) != 0x07064b50u)
      bad("zip64 sizes without a zip64 locator");
    const std::uint64_t z64 = get_le(&buf[eocd - 20 + 8], 8);
    if (z64 + 56 > size || get_le(&buf[z64], 4) != 0x06064b50u)
      bad("zip64 end record missing at offset " + std::to_string(z64));
    count = get_le(&buf[z64 + 32], 8);
    cd_size = get_le(&buf[z64 + 40], 8);
    cd_offset = get_le(&buf[z64 + 48], 8);
  }
  if (cd_offset > size || cd_size > size - cd_offset)
    bad("central directory (offset " + std::to_string(cd_offset) + ", " +
        std::to_string(cd_size) + " bytes) lies outside the file (truncated?)");

  std::vector<zip_entry> entries;
  std::size_t p = static_cast<std::size_t>(cd_offset);
  const std::size_t cd_end = static_cast<std::size_t>(cd_offset + cd_size);
  for (std::uint64_t k = 0; k < count; ++k) {
    if (p + 46 > cd_end || get_le(&buf[p], 4) != 0x02014b50u)
      bad("central directory entry " + std::to_string(k) + " is corrupt");
    zip_entry e;
    const auto flags = get_le(&buf[p + 8], 2);
    e.method = static_cast<std::uint16_t>(get_le(&buf[p + 10], 2));
    e.crc = static_cast<std::uint32_t>(get_le(&buf[p + 16], 4));
    e.compressed = get_le(&buf[p + 20], 4);
    e.uncompressed = get_le(&buf[p + 24], 4);
    const std::size_t name_len = get_le(&buf[p + 28], 2);
    const std::size_t extra_len = get_le(&buf[p + 30], 2);
    const std::size_t comment_len = get_le(&buf[p + 32], 2);
    e.local_offset = get_le(&buf[p + 42], 4);
    if (p + 46 + name_len + extra_len + comment_len > cd_end)
      bad("central directory entry " + std::to_string(k) + " runs past the directory");
    e.name.assign(reinterpret_cast<const char*>(&buf[p + 46]), name_len);
    if (flags & 1u) bad("entry '" + e.name + "' is encrypted");
    // zip64 extended information: only the fields whose 32-bit value is saturated follow.
    std::size_t x = p + 46 + name_len;
    const std::size_t x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const auto id = get_le(&buf[x], 2);
      const std::size_t len = get_le(&buf[x + 2], 2);
      if (x + 4 + len > x_end) bad("entry '" + e.name + "' has a corrupt extra field");
      if (id == 0x0001) {
        std::size_t q = x + 4;
        const auto take = [&](std::uint64_t& v) {
          if (v != 0xFFFFFFFFu) return;
          if (q + 8 > x + 4 + len) bad("entry '" + e.name + "' has a short zip64 field");
          v = get_le(&buf[q], 8);
          q += 8;
        };
        take(e.uncompressed);
        take(e.compressed);
        take(e.local_offset);
      }
      x += 4 + len;
    }
    entries.push_back(std::move(e));
    p += 46 + name_len + extra_len + comment_len;
  }
  return entries;
}

/// The uncompressed bytes of one entry, checked against its CRC.
inline std::string zip_entry_bytes(const std::vector<std::uint8_t>& buf, const zip_entry& e,
                                   const std::string& where) {
  const std::size_t size = buf.size();
  if (e.local_offset > size || size - e.local_offset < 30 ||
      get_le(&buf[e.local_offset], 4) != 0x04034b50u)
    QKIT_THROW(qkit::format_error, where, ": local header missing at offset ", e.local_offset);
  const std::size_t lo = static_cast<std::size_t>(e.local_offset);
  const std::size_t data_at = lo + 30 + get_le(&buf[lo + 26], 2) + get_le(&buf[lo + 28], 2);
  if (data_at > size || size - data_at < e.compressed)
    QKIT_THROW(qkit::format_error, where, ": entry data truncated (", e.compressed,
               " bytes expected at offset ", data_at, ", file has ", size, " bytes)");
  std::string out;
  if (e.method == 0) {
    if (e.compressed != e.uncompressed)
      QKIT_THROW(qkit::format_error, where, ": stored entry with differing sizes");
    out.assign(reinterpret_cast<const char*>(&buf[data_at]), e.compressed);
  } else if (e.method == 8) {
    out = inflate_entry(&buf[data_at], e.compressed, e.uncompressed, where);
  } else {
    QKIT_THROW(qkit::format_error, where, ": compression method ", e.method,
               " not supported (expected 0 stored or 8 deflate)");
  }
  if (crc_of(out) != e.crc) QKIT_THROW(qkit::format_error, where, ": CRC-32 mismatch");
  return out;
}

}  // namespace detail

/// Writes one array as an .npy file (float32, C order), atomically.
inline void save_npy(const std::filesystem::path& path, const qkit::tensor& t) {
  const std::string bytes = detail::npy_bytes(t);
  write_file_atomically(path, std::string_view(bytes));
}

/// Reads an .npy file holding a float32 or float64 array (float64 is rounded to float32).
inline qkit::tensor load_npy(const std::filesystem::path& path) {
  const auto buf = detail::read_whole_file(path.string());
  return detail::parse_npy(buf.data(), buf.size(), "file '" + path.string() + "'");
}

/// Writes an .npz archive (as np.savez: entry "<name>.npy" per array, stored uncompressed),
/// atomically. `arrays` is any range of (name, qkit::tensor) pairs: npz_arrays, std::map, ...
/// Names must be unique and non-empty.
template <class Range>
void save_npz(const std::filesystem::path& path, const Range& arrays) {
  std::set<std::string> seen;
  for (const auto& [name, t] : arrays) {
    (void)t;
    QKIT_PRECONDITION(!name.empty(), qkit::error, "npz '", path.string(),
                      "': an array has an empty name");
    QKIT_PRECONDITION(seen.insert(name).second, qkit::error, "npz '", path.string(),
                      "': array name '", name, "' appears twice");
  }
  write_file_atomically(path, [&](std::ostream& out) {
    std::string directory;
    std::uint64_t offset = 0;
    std::size_t count = 0;
    // DOS date 1980-01-01 00:00: fixed, so the same arrays always give the same bytes.
    constexpr std::uint32_t dos_time = 0, dos_date = (0u << 9) | (1u << 5) | 1u;
    for (const auto& [name, t] : arrays) {
      const std::string entry = name + ".npy";
      const std::string npy = detail::npy_bytes(t);
      QKIT_PRECONDITION(npy.size() < 0xFFFFFFFFu && offset < 0xFFFFFFFFu &&
                            entry.size() < 0xFFFF,
                        qkit::error, "npz '", path.string(), "': array '", name,
                        "' does not fit a non-zip64 archive (4 GiB)");
      const std::uint32_t crc = detail::crc_of(npy);
      const auto sz = static_cast<std::uint32_t>(npy.size());
      std::string local;
      detail::put_u32(local, 0x04034b50u);
      detail::put_u16(local, 20);  // version needed: 2.0
      detail::put_u16(local, 0);   // flags
      detail::put_u16(local, 0);   // stored
      detail::put_u16(local, dos_time);
      detail::put_u16(local, dos_date);
      detail::put_u32(local, crc);
      detail::put_u32(local, sz);
      detail::put_u32(local, sz);
      detail::put_u16(local, static_cast<std::uint32_t>(entry.size()));
      detail::put_u16(local, 0);
      local += entry;

      detail::put_u32(directory, 0x02014b50u);
      detail::put_u16(directory, (3u << 8) | 20u);  // made by: Unix, zip 2.0
      detail::put_u16(directory, 20);
      detail::put_u16(directory, 0);
      detail::put_u16(directory, 0);
      detail::put_u16(directory, dos_time);
      detail::put_u16(directory, dos_date);
      detail::put_u32(directory, crc);
      detail::put_u32(directory, sz);
      detail::put_u32(directory, sz);
      detail::put_u16(directory, static_cast<std::uint32_t>(entry.size()));
      detail::put_u16(directory, 0);  // extra
      detail::put_u16(directory, 0);  // comment
      detail::put_u16(directory, 0);  // disk
      detail::put_u16(directory, 0);  // internal attributes
      detail::put_u32(directory, 0100644u << 16);  // regular file, rw-r--r--
      detail::put_u32(directory, static_cast<std::uint32_t>(offset));
      directory += entry;

      out.write(local.data(), static_cast<std::streamsize>(local.size()));
      out.write(npy.data(), static_cast<std::streamsize>(npy.size()));
      offset += local.size() + npy.size();
      ++count;
    }
    QKIT_PRECONDITION(count < 0xFFFF && offset < 0xFFFFFFFFu, qkit::error, "npz '",
                      path.string(), "': too many or too large arrays for a non-zip64 archive");
    std::string end;
    detail::put_u32(end, 0x06054b50u);
    detail::put_u16(end, 0);
    detail::put_u16(end, 0);
    detail::put_u16(end, static_cast<std::uint32_t>(count));
    detail::put_u16(end, static_cast<std::uint32_t>(count));
    detail::put_u32(end, static_cast<std::uint32_t>(directory.size()));
    detail::put_u32(end, static_cast<std::uint32_t>(offset));
    detail::put_u16(end, 0);
    out.write(directory.data(), static_cast<std::streamsize>(directory.size()));
    out.write(end.data(), static_cast<std::streamsize>(end.size()));
  });
}

inline void save_npz(const std::filesystem::path& path, const npz_arrays& arrays) {
  save_npz<npz_arrays>(path, arrays);
}

/// Reads every array of an .npz archive in archive order; the ".npy" suffix of each entry
/// name is dropped (as np.load does). Errors name the file and the entry.
inline npz_arrays load_npz(const std::filesystem::path& path) {
  const std::string file = path.string();
  const auto buf = detail::read_whole_file(file);
  npz_arrays out;
  for (const auto& e : detail::read_zip_directory(buf, file)) {
    const std::string where = "file '" + file + "', entry '" + e.name + "'";
    const std::string bytes = detail::zip_entry_bytes(buf, e, where);
    std::string name = e.name;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0)
      name.resize(name.size() - 4);
    out.emplace_back(std::move(name),
                     detail::parse_npy(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                       bytes.size(), where));
  }
  return out;
}

/// load_npz keyed by name.
inline std::map<std::string, qkit::tensor> load_npz_map(const std::filesystem::path& path) {
  std::map<std::string, qkit::tensor> out;
  for (auto& [name, t] : load_npz(path)) out.emplace(name, std::move(t));
  return out;
}

/// The array called `name`; format_error listing the names present when it is missing.
inline const qkit::tensor& npz_find(const npz_arrays& arrays, std::string_view name) {
  for (const auto& [n, t] : arrays)
    if (n == name) return t;
  std::string names;
  for (const auto& [n, t] : arrays) names += (names.empty() ? "" : ", ") + n;
  QKIT_THROW(qkit::format_error, "npz has no array '", name, "' (it holds: ", names, ")");
}

}  // namespace qkit::io
