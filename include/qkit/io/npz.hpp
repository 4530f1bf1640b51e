// qkit/io/npz.hpp — numpy's .npy and .npz files: weights keyed by layer name, exchanged with
// np.load / np.savez. Writes stored float32 entries; reads stored or deflated entries
// (np.savez_compressed), zip64 records, and float16/32/64, integer and bool arrays of either
// byte order (a PyTorch state_dict saved with np.savez holds int64 num_batches_tracked).
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
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

/// How an .npy array's elements are stored: numpy's dtype "descr" ('<f4', '>i8', '|b1').
struct npy_dtype {
  enum class kind { floating, signed_integer, unsigned_integer, boolean };
  kind type = kind::floating;
  std::size_t bytes = 4;
  bool big_endian = false;

  bool is_floating() const { return type == kind::floating; }
  /// numpy's name: "float32", "int64", "uint8", "bool".
  std::string name() const {
    switch (type) {
      case kind::floating: return "float" + std::to_string(8 * bytes);
      case kind::signed_integer: return "int" + std::to_string(8 * bytes);
      case kind::unsigned_integer: return "uint" + std::to_string(8 * bytes);
      case kind::boolean: return "bool";
    }
    return "?";
  }
};

/// One array of an .npz archive with the dtype the file stored it in. `values` holds it as
/// qkit's float32 tensor: float16 exactly, float64 rounded, integers and bools (0/1) as
/// numbers. `exact` is false when an integer array holds a value float32 cannot represent
/// (beyond 2^24 in magnitude and not a float32); its `values` are then rounded.
struct npz_entry {
  std::string name;
  npy_dtype dtype;
  qkit::tensor values;
  bool exact = true;
};
using npz_entries = std::vector<npz_entry>;

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

/// numpy's dtype descr ('<f4', '>i8', '|b1', '=u2') as an npy_dtype; format_error otherwise.
inline npy_dtype parse_npy_descr(const std::string& descr, const std::string& where) {
  const auto unsupported = [&]() {
    QKIT_THROW(qkit::format_error, where, ": unsupported dtype '", descr,
               "' (qkit reads float16/32/64, int8/16/32/64, uint8/16/32/64 and bool, either "
               "byte order)");
  };
  if (descr.size() != 3) unsupported();
  npy_dtype d;
  const char order = descr[0], code = descr[1], width = descr[2];
  if (width < '1' || width > '8') unsupported();
  d.bytes = static_cast<std::size_t>(width - '0');
  switch (code) {
    case 'f':
      d.type = npy_dtype::kind::floating;
      if (d.bytes != 2 && d.bytes != 4 && d.bytes != 8) unsupported();
      break;
    case 'i':
    case 'u':
      d.type = code == 'i' ? npy_dtype::kind::signed_integer : npy_dtype::kind::unsigned_integer;
      if (d.bytes != 1 && d.bytes != 2 && d.bytes != 4 && d.bytes != 8) unsupported();
      break;
    case 'b':
      d.type = npy_dtype::kind::boolean;
      if (d.bytes != 1) unsupported();
      break;
    default:
      unsupported();
  }
  // '|' (not applicable) is what numpy writes for one-byte types; '=' is the writer's native
  // order, which numpy never writes but a hand-made header might mean as this machine's.
  if (order == '<') d.big_endian = false;
  else if (order == '>') d.big_endian = true;
  else if (order == '=') d.big_endian = std::endian::native == std::endian::big;
  else if (order == '|' && d.bytes == 1) d.big_endian = false;
  else unsupported();
  return d;
}

/// IEEE binary16 to float32 (exact: every half is a float).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  std::uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // infinity, or NaN keeping its payload
  } else if (exponent != 0) {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  } else {
    const float sub = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal
    return sign ? -sub : sub;
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

/// The element at `p`, `bytes` wide, as an unsigned integer of the file's byte order.
inline std::uint64_t load_element(const std::uint8_t* p, std::size_t bytes, bool big_endian) {
  std::uint64_t v = 0;
  if (big_endian)
    for (std::size_t i = 0; i < bytes; ++i) v = (v << 8) | p[i];
  else
    v = get_le(p, static_cast<int>(bytes));
  return v;
}

/// Converts `n` elements of dtype `d` at `p` into float32; returns false if an integer did not
/// convert exactly. A bool byte other than 0 or 1 is corrupt data.
inline bool convert_npy_elements(const std::uint8_t* p, std::size_t n, const npy_dtype& d,
                                 float* out, const std::string& where) {
  const bool native_order = d.big_endian == (std::endian::native == std::endian::big);
  if (d.type == npy_dtype::kind::floating && d.bytes == 4 && native_order) {
    if (n) std::memcpy(out, p, n * 4);  // the common case; keeps NaN payloads bit for bit
    return true;
  }
  bool exact = true;
  for (std::size_t k = 0; k < n; ++k) {
    const std::uint64_t raw = load_element(p + d.bytes * k, d.bytes, d.big_endian);
    float f = 0.0f;
    switch (d.type) {
      case npy_dtype::kind::floating:
        if (d.bytes == 2) {
          f = half_to_float(static_cast<std::uint16_t>(raw));
        } else if (d.bytes == 4) {
          const auto bits = static_cast<std::uint32_t>(raw);
          std::memcpy(&f, &bits, 4);
        } else {
          double v;
          std::memcpy(&v, &raw, 8);
          f = static_cast<float>(v);
        }
        break;
      case npy_dtype::kind::signed_integer: {
        // Sign-extend from the element's width.
        const unsigned shift = static_cast<unsigned>(64 - 8 * d.bytes);
        const auto v = static_cast<std::int64_t>(raw << shift) >> shift;
        f = static_cast<float>(v);
        // 2^63 itself does not fit int64, so compare only below it.
        if (!(f >= -9223372036854775808.0f && f < 9223372036854775808.0f) ||
            static_cast<std::int64_t>(f) != v)
          exact = false;
        break;
      }
      case npy_dtype::kind::unsigned_integer:
        f = static_cast<float>(raw);
        if (!(f < 18446744073709551616.0f) || static_cast<std::uint64_t>(f) != raw) exact = false;
        break;
      case npy_dtype::kind::boolean:
        if (raw > 1)
          QKIT_THROW(qkit::format_error, where, ": bool element ", k, " holds byte ", raw,
                     ", expected 0 or 1 (corrupt data?)");
        f = static_cast<float>(raw);
        break;
    }
    out[k] = f;
  }
  return exact;
}

/// Parses one .npy image held in memory; `where` names the file (and entry) for errors.
/// The entry's name is left empty.
inline npz_entry parse_npy_entry(const std::uint8_t* data, std::size_t size,
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

  npz_entry entry;
  entry.dtype = parse_npy_descr(descr, where);
  const std::size_t width = entry.dtype.bytes;
  if (fortran != "False" && fortran != "True")
    QKIT_THROW(qkit::format_error, where, ": fortran_order is '", fortran,
               "', expected True or False");

  qkit::shape_type shape;  // "()" leaves it empty: a 0-d array of one element
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
  // The product of the non-zero dims is bounded too: with a 0 the element count is 0, but
  // xtensor's (signed) strides still multiply the other dims and must not overflow.
  std::size_t n = 1, strides = 1;
  for (auto d : shape) {
    if (d != 0 && strides > (std::size_t(1) << 56) / d)
      QKIT_THROW(qkit::format_error, where, ": implausible shape ", shape_text);
    if (d != 0) strides *= d;
    n *= d;
  }
  const std::size_t data_at = header_at + header_len;
  if (size - data_at != n * width)
    QKIT_THROW(qkit::format_error, where, ": array of shape ", qkit::shape_string(shape),
               " needs ", n * width, " bytes of data, found ", size - data_at,
               size - data_at < n * width ? " (truncated)" : "");

  std::vector<float> values(n);
  entry.exact = convert_npy_elements(data + data_at, n, entry.dtype, values.data(), where);
  entry.values = qkit::tensor(shape);
  if (fortran == "True") {
    // Column-major data: adapt it as such and let xtensor reorder into qkit's row-major.
    entry.values =
        xt::adapt<xt::layout_type::column_major>(values.data(), n, xt::no_ownership(), shape);
  } else if (n) {
    std::copy(values.begin(), values.end(), entry.values.data());
  }
  return entry;
}

/// For the float-only readers (load_npy, load_npz), which drop the dtype: an integer that
/// float32 would round must not pass as if it were the stored value.
inline void require_exact(const npz_entry& e, const std::string& where) {
  if (!e.exact)
    QKIT_THROW(qkit::format_error, where, ": ", e.dtype.name(),
               " array holds a value float32 cannot represent exactly (beyond 2^24); "
               "load_npz_entries reads it rounded, with its dtype");
}

/// parse_npy_entry's values, refusing integers that float32 would round.
inline qkit::tensor parse_npy(const std::uint8_t* data, std::size_t size,
                              const std::string& where) {
  npz_entry e = parse_npy_entry(data, size, where);
  require_exact(e, where);
  return std::move(e.values);
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

/// Deflate cannot expand data by more than 1032:1 (zlib's documented limit: a run of one
/// repeated byte). A zip directory that claims more than that of its compressed bytes lies,
/// and is refused before anything is allocated for it.
inline constexpr std::uint64_t max_deflate_ratio = 1032;

/// The most bytes one npz entry may decompress to (16 GiB). A stated bound rather than "what
/// the directory says", so that a corrupt or hostile size can never ask for more.
inline constexpr std::uint64_t max_npz_entry_bytes = std::uint64_t{1} << 34;

/// Raw-deflate decompression of one zip entry into exactly `expected` bytes. The caller has
/// bounded `expected`; zlib's 32-bit counts are fed in pieces so that nothing is truncated.
inline std::string inflate_entry(const std::uint8_t* src, std::size_t src_size,
                                 std::size_t expected, const std::string& where) {
  std::string out(expected, '\0');
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK)
    QKIT_THROW(qkit::format_error, where, ": zlib inflateInit failed");
  constexpr std::size_t piece = std::size_t{1} << 30;
  std::size_t in_left = src_size, out_left = expected;
  zs.next_in = const_cast<Bytef*>(src);
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  int rc = Z_OK;
  for (;;) {
    if (zs.avail_in == 0) {
      zs.avail_in = static_cast<uInt>(std::min(in_left, piece));
      in_left -= zs.avail_in;
    }
    if (zs.avail_out == 0) {
      zs.avail_out = static_cast<uInt>(std::min(out_left, piece));
      out_left -= zs.avail_out;
    }
    // Z_BUF_ERROR means no progress: the input ran out (truncated) or the output did (the
    // entry holds more than it claims). Either way the entry is bad; the check below says so.
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK) break;
  }
  const std::size_t produced = expected - out_left - zs.avail_out;
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
    if (z64 > size || size - z64 < 56 || get_le(&buf[z64], 4) != 0x06064b50u)
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
    // Bound the claimed size by what the compressed bytes can hold and by the stated limit
    // before allocating it: a 184-byte file must not make the reader ask for gigabytes.
    const std::uint64_t most = e.compressed > max_npz_entry_bytes / max_deflate_ratio
                                   ? max_npz_entry_bytes
                                   : std::min(max_npz_entry_bytes,
                                              e.compressed * max_deflate_ratio + 64);
    if (e.uncompressed > most)
      QKIT_THROW(qkit::format_error, where, ": entry claims ", e.uncompressed,
                 " uncompressed bytes from ", e.compressed, " deflated bytes (at most ", most,
                 " possible; corrupt size?)");
    out = inflate_entry(&buf[data_at], static_cast<std::size_t>(e.compressed),
                        static_cast<std::size_t>(e.uncompressed), where);
  } else {
    QKIT_THROW(qkit::format_error, where, ": compression method ", e.method,
               " not supported (expected 0 stored or 8 deflate)");
  }
  if (crc_of(out) != e.crc) QKIT_THROW(qkit::format_error, where, ": CRC-32 mismatch");
  return out;
}

/// The entries of an .npz archive; with `float_only`, require_exact on each.
inline npz_entries read_npz(const std::filesystem::path& path, bool float_only) {
  const std::string file = path.string();
  const auto buf = read_whole_file(file);
  npz_entries out;
  for (const auto& e : read_zip_directory(buf, file)) {
    const std::string where = "file '" + file + "', entry '" + e.name + "'";
    const std::string bytes = zip_entry_bytes(buf, e, where);
    npz_entry entry =
        parse_npy_entry(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), where);
    if (float_only) require_exact(entry, where);
    entry.name = e.name;
    if (entry.name.size() > 4 && entry.name.compare(entry.name.size() - 4, 4, ".npy") == 0)
      entry.name.resize(entry.name.size() - 4);
    out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace detail

/// Writes one array as an .npy file (float32, C order), atomically.
inline void save_npy(const std::filesystem::path& path, const qkit::tensor& t) {
  const std::string bytes = detail::npy_bytes(t);
  write_file_atomically(path, std::string_view(bytes));
}

/// Reads an .npy file as float32: float64 is rounded, float16 exact, integers and bools
/// converted when float32 holds them exactly (format_error otherwise).
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

/// Reads every array of an .npz archive in archive order, each with its stored dtype; the
/// ".npy" suffix of each entry name is dropped (as np.load does). Errors name the file and
/// the entry.
inline npz_entries load_npz_entries(const std::filesystem::path& path) {
  return detail::read_npz(path, /*float_only=*/false);
}

/// Reads every array of an .npz archive in archive order as float32 (converted as load_npy
/// does), without the dtypes; the ".npy" suffix of each entry name is dropped (as np.load
/// does). Errors name the file and the entry.
inline npz_arrays load_npz(const std::filesystem::path& path) {
  npz_arrays out;
  for (auto& e : detail::read_npz(path, /*float_only=*/true))
    out.emplace_back(std::move(e.name), std::move(e.values));
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
