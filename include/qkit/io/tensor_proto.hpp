// qkit/io/tensor_proto.hpp — reads ONNX TensorProto files and small ONNX models straight from
// the protobuf wire format, so that qkit can check itself against ONNX's operator test vectors
// (Debian's libonnx-testdata) without linking libprotobuf into the core.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../tensor/tensor.hpp"

namespace qkit::io {

/// TensorProto.DataType numbers (onnx.proto; 21/22 are the 4-bit types added in ONNX 1.16).
namespace onnx_dtype {
inline constexpr int undefined = 0, float32 = 1, uint8 = 2, int8 = 3, uint16 = 4, int16 = 5,
                     int32 = 6, int64 = 7, string = 8, boolean = 9, float16 = 10, float64 = 11,
                     uint32 = 12, uint64 = 13, complex64 = 14, complex128 = 15, bfloat16 = 16,
                     uint4 = 21, int4 = 22;
}  // namespace onnx_dtype

/// AttributeProto.AttributeType numbers (onnx.proto).
namespace onnx_attr_type {
inline constexpr int undefined = 0, f = 1, i = 2, s = 3, t = 4, g = 5, floats = 6, ints = 7,
                     strings = 8, tensors = 9, graphs = 10;
}  // namespace onnx_attr_type

/// Name of a TensorProto.DataType for messages ("FLOAT", "INT8", ...).
inline std::string onnx_data_type_name(int dt) {
  static constexpr const char* names[] = {
      "UNDEFINED", "FLOAT",     "UINT8",      "INT8",     "UINT16",       "INT16",
      "INT32",     "INT64",     "STRING",     "BOOL",     "FLOAT16",      "DOUBLE",
      "UINT32",    "UINT64",    "COMPLEX64",  "COMPLEX128", "BFLOAT16",   "FLOAT8E4M3FN",
      "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "UINT4", "INT4"};
  if (dt >= 0 && dt < static_cast<int>(std::size(names))) return names[dt];
  return "data type " + std::to_string(dt);
}

/// A decoded tensor. Floating types (FLOAT, FLOAT16, BFLOAT16, DOUBLE) land in `floats`,
/// integer types and BOOL (4-bit types unpacked, one value per element) in `ints`.
struct onnx_tensor {
  std::string name;
  std::vector<std::int64_t> dims;
  int data_type = onnx_dtype::undefined;
  std::vector<float> floats;
  std::vector<std::int64_t> ints;

  /// Number of elements: the product of dims (1 for a scalar, whose dims are empty).
  std::size_t numel() const {
    std::size_t n = 1;
    for (auto d : dims) n *= static_cast<std::size_t>(d);
    return n;
  }
  bool is_floating() const {
    return data_type == onnx_dtype::float32 || data_type == onnx_dtype::float16 ||
           data_type == onnx_dtype::bfloat16 || data_type == onnx_dtype::float64;
  }
};

struct onnx_attribute {
  std::string name;
  int type = onnx_attr_type::undefined;
  float f = 0.0f;
  std::int64_t i = 0;
  std::string s;
  std::vector<float> floats;
  std::vector<std::int64_t> ints;
  std::optional<onnx_tensor> t;
};

struct onnx_node {
  std::string op_type, name;
  std::vector<std::string> inputs, outputs;
  std::vector<onnx_attribute> attributes;

  /// The attribute called `n`, or nullptr when the node does not set it (ONNX default applies).
  const onnx_attribute* attr(std::string_view n) const {
    for (const auto& a : attributes)
      if (a.name == n) return &a;
    return nullptr;
  }
};

/// One ONNX node test: the model's graph plus test_data_set_0's inputs and expected outputs.
/// graph_inputs lists the graph's declared inputs (older models also list initializers there).
struct onnx_test_case {
  std::string name;
  std::vector<onnx_node> nodes;
  std::vector<std::string> graph_inputs, graph_outputs;
  std::vector<onnx_tensor> inputs, outputs;
  std::vector<onnx_tensor> initializers;
  int opset = 0;  // version of the default ("" / "ai.onnx") operator set
};

namespace detail {

/// Exact IEEE binary16 -> binary32 (every half value is representable as a float).
inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  std::uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: shift the mantissa up until its leading one becomes implicit.
    int e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<std::uint32_t>(e) << 23) | ((mant & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

inline float bfloat16_bits_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// Protobuf wire-format cursor over one message: [pos, end) of a buffer holding the whole
/// file, so that every error names the absolute byte offset in that file.
class wire_reader {
 public:
  enum wire_type { varint = 0, fixed64 = 1, length_delimited = 2, fixed32 = 5 };

  wire_reader(const std::string& file, const std::uint8_t* data, std::size_t pos,
              std::size_t end)
      : file_(&file), data_(data), pos_(pos), end_(end) {}

  bool done() const { return pos_ >= end_; }
  std::size_t offset() const { return pos_; }

  /// Reads the next tag; returns false at the end of the message.
  bool next(std::uint32_t& field, int& wt) {
    if (done()) return false;
    const std::size_t at = pos_;
    const std::uint64_t tag = read_varint();
    field = static_cast<std::uint32_t>(tag >> 3);
    wt = static_cast<int>(tag & 7u);
    if (field == 0) fail(at, "field number 0 in tag");
    if (wt != varint && wt != fixed64 && wt != length_delimited && wt != fixed32)
      fail(at, "unsupported wire type " + std::to_string(wt) + " for field " +
                   std::to_string(field));
    return true;
  }

  std::uint64_t read_varint() {
    const std::size_t at = pos_;
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= end_) fail(at, "truncated varint");
      const std::uint8_t b = data_[pos_++];
      v |= static_cast<std::uint64_t>(b & 0x7Fu) << shift;
      if ((b & 0x80u) == 0) return v;
    }
    fail(at, "varint longer than 10 bytes");
  }
  std::uint32_t read_fixed32() {
    need(4, "fixed32");
    std::uint32_t v;
    std::memcpy(&v, data_ + pos_, 4);  // protobuf is little-endian, as is every qkit target
    pos_ += 4;
    return v;
  }
  std::uint64_t read_fixed64() {
    need(8, "fixed64");
    std::uint64_t v;
    std::memcpy(&v, data_ + pos_, 8);
    pos_ += 8;
    return v;
  }
  /// The payload of a length-delimited field as a sub-reader; advances past it.
  wire_reader read_sub() {
    const std::size_t at = pos_;
    const std::uint64_t len = read_varint();
    if (len > end_ - pos_)
      fail(at, "length " + std::to_string(len) + " runs past the end of its message (" +
                   std::to_string(end_ - pos_) + " bytes left)");
    wire_reader sub(*file_, data_, pos_, pos_ + static_cast<std::size_t>(len));
    pos_ += static_cast<std::size_t>(len);
    return sub;
  }
  std::string read_bytes() {
    wire_reader sub = read_sub();
    return std::string(reinterpret_cast<const char*>(data_ + sub.pos_), sub.end_ - sub.pos_);
  }
  const std::uint8_t* cursor() const { return data_ + pos_; }
  std::size_t remaining() const { return end_ - pos_; }

  void skip(int wt) {
    switch (wt) {
      case varint: read_varint(); break;
      case fixed64: read_fixed64(); break;
      case fixed32: read_fixed32(); break;
      default: read_sub(); break;
    }
  }

  /// Repeated scalar fields may arrive packed (one length-delimited run) or one per tag.
  template <class F>
  void read_repeated(int wt, int expected_wt, F&& one) {
    if (wt == length_delimited) {
      wire_reader sub = read_sub();
      while (!sub.done()) one(sub);
    } else if (wt == expected_wt) {
      one(*this);
    } else {
      fail(pos_, "wire type " + std::to_string(wt) + " where " + std::to_string(expected_wt) +
                     " or packed was expected");
    }
  }

  [[noreturn]] void fail(std::size_t at, const std::string& what) const {
    QKIT_THROW(qkit::format_error, "file '", *file_, "' at byte ", at, ": ", what);
  }
  const std::string& file() const { return *file_; }

 private:
  void need(std::size_t n, const char* what) {
    if (end_ - pos_ < n)
      fail(pos_, std::string("truncated ") + what + " (" + std::to_string(end_ - pos_) +
                     " bytes left)");
  }

  const std::string* file_;
  const std::uint8_t* data_;
  std::size_t pos_, end_;
};

inline std::vector<std::uint8_t> read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) QKIT_THROW(qkit::format_error, "cannot open file '", path, "'");
  std::vector<std::uint8_t> buf((std::istreambuf_iterator<char>(in)),
                                std::istreambuf_iterator<char>());
  if (in.bad()) QKIT_THROW(qkit::format_error, "error reading file '", path, "'");
  return buf;
}

inline float read_float(wire_reader& r) { return std::bit_cast<float>(r.read_fixed32()); }

/// Decodes the typed payload of a TensorProto once all of its fields are known.
inline void decode_tensor_payload(onnx_tensor& t, const std::string& raw, bool has_raw,
                                  const std::vector<float>& float_data,
                                  const std::vector<std::int32_t>& int32_data,
                                  const std::vector<std::int64_t>& int64_data,
                                  const std::vector<double>& double_data,
                                  const std::vector<std::uint64_t>& uint64_data,
                                  const wire_reader& r, std::size_t start) {
  namespace dt = onnx_dtype;
  // A corrupt dims field must give an error, not a wrapped-around product or a huge allocation.
  // The product of the non-zero dims is bounded too: after a 0 the element count stays 0
  // whatever follows, but to_tensor's strides (signed, in xtensor) still multiply the dims that
  // follow it, and overflowed (fuzz/corpus/tensor_proto/zero-dim-stride-overflow.pb).
  std::size_t n = 1, strides = 1;
  for (auto d : t.dims) {
    const auto u = static_cast<std::size_t>(d);
    if (u != 0 && strides > (std::size_t(1) << 48) / u)
      r.fail(start, "tensor '" + t.name + "' has implausible dims " + qkit::shape_string(t.dims));
    if (u != 0) strides *= u;
    n *= u;
  }
  const auto bad = [&](const std::string& what) {
    r.fail(start, "tensor '" + t.name + "' (" + onnx_data_type_name(t.data_type) + ", " +
                      std::to_string(n) + " elements): " + what);
  };
  const auto check_count = [&](std::size_t got, const char* field) {
    if (got != n)
      bad(std::string(field) + " holds " + std::to_string(got) + " values, expected " +
          std::to_string(n));
  };
  const auto raw_at = [&](std::size_t i, std::size_t width) {
    std::uint64_t v = 0;
    std::memcpy(&v, raw.data() + i * width, width);
    return v;
  };
  std::size_t width = 0;
  switch (t.data_type) {
    case dt::float32: case dt::int32: case dt::uint32: width = 4; break;
    case dt::int64: case dt::uint64: case dt::float64: width = 8; break;
    case dt::float16: case dt::bfloat16: case dt::int16: case dt::uint16: width = 2; break;
    case dt::int8: case dt::uint8: case dt::boolean: width = 1; break;
    case dt::int4: case dt::uint4: width = 0; break;
    default: bad("unsupported data type");
  }
  const bool four_bit = t.data_type == dt::int4 || t.data_type == dt::uint4;
  if (has_raw) {
    const std::size_t expected_bytes = four_bit ? (n + 1) / 2 : n * width;
    if (raw.size() != expected_bytes)
      bad("raw_data has " + std::to_string(raw.size()) + " bytes, expected " +
          std::to_string(expected_bytes));
  }
  // 4-bit values are packed two per byte, the first element in the low nibble (ONNX rule,
  // both in raw_data and in int32_data where each int32 carries one such byte).
  const auto unpack_nibbles = [&](auto byte_at) {
    t.ints.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      const unsigned byte = static_cast<unsigned>(byte_at(i / 2)) & 0xFFu;
      const unsigned nib = (i % 2 == 0) ? (byte & 0xFu) : (byte >> 4);
      t.ints[i] = t.data_type == dt::int4 ? static_cast<std::int64_t>(nib ^ 8u) - 8
                                          : static_cast<std::int64_t>(nib);
    }
  };

  switch (t.data_type) {
    case dt::float32:
      if (has_raw) {
        t.floats.resize(n);
        if (n) std::memcpy(t.floats.data(), raw.data(), n * 4);
      } else {
        check_count(float_data.size(), "float_data");
        t.floats = float_data;
      }
      break;
    case dt::float64:
      if (!has_raw) check_count(double_data.size(), "double_data");
      t.floats.resize(n);
      for (std::size_t i = 0; i < n; ++i)
        t.floats[i] = static_cast<float>(
            has_raw ? std::bit_cast<double>(raw_at(i, 8)) : double_data[i]);
      break;
    case dt::float16: case dt::bfloat16: {
      if (!has_raw) check_count(int32_data.size(), "int32_data");
      t.floats.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        const auto bits = static_cast<std::uint16_t>(has_raw ? raw_at(i, 2) : int32_data[i]);
        t.floats[i] = t.data_type == dt::float16 ? half_bits_to_float(bits)
                                                 : bfloat16_bits_to_float(bits);
      }
      break;
    }
    case dt::int4: case dt::uint4:
      if (has_raw) {
        unpack_nibbles([&](std::size_t b) { return static_cast<std::uint8_t>(raw[b]); });
      } else {
        if (int32_data.size() != (n + 1) / 2)
          bad("int32_data holds " + std::to_string(int32_data.size()) +
              " bytes of packed 4-bit values, expected " + std::to_string((n + 1) / 2));
        unpack_nibbles([&](std::size_t b) { return int32_data[b]; });
      }
      break;
    case dt::int64:
      if (has_raw) {
        t.ints.resize(n);
        for (std::size_t i = 0; i < n; ++i) t.ints[i] = static_cast<std::int64_t>(raw_at(i, 8));
      } else {
        check_count(int64_data.size(), "int64_data");
        t.ints = int64_data;
      }
      break;
    case dt::uint32: case dt::uint64:
      if (!has_raw) check_count(uint64_data.size(), "uint64_data");
      t.ints.resize(n);
      for (std::size_t i = 0; i < n; ++i)
        t.ints[i] = static_cast<std::int64_t>(has_raw ? raw_at(i, width) : uint64_data[i]);
      break;
    default: {  // int8, uint8, int16, uint16, int32, bool: int32_data or raw bytes
      if (!has_raw) check_count(int32_data.size(), "int32_data");
      t.ints.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        if (!has_raw) {
          t.ints[i] = int32_data[i];
          continue;
        }
        const std::uint64_t u = raw_at(i, width);
        switch (t.data_type) {
          case dt::int8: t.ints[i] = static_cast<std::int8_t>(u); break;
          case dt::int16: t.ints[i] = static_cast<std::int16_t>(u); break;
          case dt::int32: t.ints[i] = static_cast<std::int32_t>(u); break;
          default: t.ints[i] = static_cast<std::int64_t>(u); break;  // uint8, uint16, bool
        }
      }
      break;
    }
  }
}

inline onnx_tensor parse_tensor(wire_reader r) {
  const std::size_t start = r.offset();
  onnx_tensor t;
  std::string raw;
  bool has_raw = false;
  std::vector<float> float_data;
  std::vector<std::int32_t> int32_data;
  std::vector<std::int64_t> int64_data;
  std::vector<double> double_data;
  std::vector<std::uint64_t> uint64_data;
  std::uint32_t field;
  int wt;
  while (r.next(field, wt)) {
    switch (field) {
      case 1:
        r.read_repeated(wt, wire_reader::varint, [&](wire_reader& s) {
          const auto d = static_cast<std::int64_t>(s.read_varint());
          if (d < 0) s.fail(s.offset(), "negative dimension " + std::to_string(d));
          t.dims.push_back(d);
        });
        break;
      case 2: t.data_type = static_cast<int>(r.read_varint()); break;
      case 4:
        r.read_repeated(wt, wire_reader::fixed32,
                        [&](wire_reader& s) { float_data.push_back(read_float(s)); });
        break;
      case 5:
        r.read_repeated(wt, wire_reader::varint, [&](wire_reader& s) {
          int32_data.push_back(static_cast<std::int32_t>(s.read_varint()));
        });
        break;
      case 7:
        r.read_repeated(wt, wire_reader::varint, [&](wire_reader& s) {
          int64_data.push_back(static_cast<std::int64_t>(s.read_varint()));
        });
        break;
      case 8: t.name = r.read_bytes(); break;
      case 9:
        raw = r.read_bytes();
        has_raw = true;
        break;
      case 10:
        r.read_repeated(wt, wire_reader::fixed64, [&](wire_reader& s) {
          double_data.push_back(std::bit_cast<double>(s.read_fixed64()));
        });
        break;
      case 11:
        r.read_repeated(wt, wire_reader::varint,
                        [&](wire_reader& s) { uint64_data.push_back(s.read_varint()); });
        break;
      case 14:
        if (r.read_varint() != 0)
          r.fail(start, "tensor '" + t.name + "' keeps its data in an external file, which "
                        "qkit does not read");
        break;
      default: r.skip(wt); break;
    }
  }
  decode_tensor_payload(t, raw, has_raw, float_data, int32_data, int64_data, double_data,
                        uint64_data, r, start);
  return t;
}

inline onnx_attribute parse_attribute(wire_reader r) {
  onnx_attribute a;
  std::uint32_t field;
  int wt;
  while (r.next(field, wt)) {
    switch (field) {
      case 1: a.name = r.read_bytes(); break;
      case 2: a.f = read_float(r); break;
      case 3: a.i = static_cast<std::int64_t>(r.read_varint()); break;
      case 4: a.s = r.read_bytes(); break;
      case 5: a.t = parse_tensor(r.read_sub()); break;
      case 7:
        r.read_repeated(wt, wire_reader::fixed32,
                        [&](wire_reader& s) { a.floats.push_back(read_float(s)); });
        break;
      case 8:
        r.read_repeated(wt, wire_reader::varint, [&](wire_reader& s) {
          a.ints.push_back(static_cast<std::int64_t>(s.read_varint()));
        });
        break;
      case 20: a.type = static_cast<int>(r.read_varint()); break;
      default: r.skip(wt); break;
    }
  }
  return a;
}

inline onnx_node parse_node(wire_reader r) {
  onnx_node n;
  std::uint32_t field;
  int wt;
  while (r.next(field, wt)) {
    switch (field) {
      case 1: n.inputs.push_back(r.read_bytes()); break;
      case 2: n.outputs.push_back(r.read_bytes()); break;
      case 3: n.name = r.read_bytes(); break;
      case 4: n.op_type = r.read_bytes(); break;
      case 5: n.attributes.push_back(parse_attribute(r.read_sub())); break;
      default: r.skip(wt); break;
    }
  }
  return n;
}

/// ValueInfoProto: only its name matters here.
inline std::string parse_value_info_name(wire_reader r) {
  std::string name;
  std::uint32_t field;
  int wt;
  while (r.next(field, wt)) {
    if (field == 1) name = r.read_bytes();
    else r.skip(wt);
  }
  return name;
}

inline void parse_graph(wire_reader r, onnx_test_case& tc) {
  std::uint32_t field;
  int wt;
  while (r.next(field, wt)) {
    switch (field) {
      case 1: tc.nodes.push_back(parse_node(r.read_sub())); break;
      case 5: tc.initializers.push_back(parse_tensor(r.read_sub())); break;
      case 11: tc.graph_inputs.push_back(parse_value_info_name(r.read_sub())); break;
      case 12: tc.graph_outputs.push_back(parse_value_info_name(r.read_sub())); break;
      default: r.skip(wt); break;
    }
  }
}

/// Sorted by the number in input_<k>.pb, so input_10 follows input_9.
inline std::vector<std::filesystem::path> numbered_files(const std::filesystem::path& dir,
                                                         const std::string& stem) {
  std::vector<std::pair<std::pair<std::size_t, std::string>, std::filesystem::path>> found;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.size() < stem.size() + 4 || f.compare(0, stem.size(), stem) != 0 ||
        f.substr(f.size() - 3) != ".pb")
      continue;
    const std::string num = f.substr(stem.size(), f.size() - stem.size() - 3);
    if (num.empty() || !std::all_of(num.begin(), num.end(), [](char c) {
          return c >= '0' && c <= '9';
        }))
      continue;
    // By (digit count, digits): numeric order without std::stol's out_of_range on long names.
    const std::size_t digits = num.size() - std::min(num.find_first_not_of('0'), num.size() - 1);
    found.emplace_back(std::make_pair(digits, num.substr(num.size() - digits)), e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::filesystem::path> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

}  // namespace detail

/// Reads one serialized TensorProto (an ONNX test's input_k.pb / output_k.pb).
inline onnx_tensor read_tensor_proto(const std::string& path) {
  const auto buf = detail::read_whole_file(path);
  return detail::parse_tensor(detail::wire_reader(path, buf.data(), 0, buf.size()));
}

/// The tensor's values as a float32 qkit::tensor of shape dims (integers converted).
inline qkit::tensor to_tensor(const onnx_tensor& t) {
  // The reader checked the dims against the data; an onnx_tensor built by hand may not agree.
  const std::size_t values = t.is_floating() ? t.floats.size() : t.ints.size();
  std::size_t n = 1, strides = 1;
  for (auto d : t.dims) {
    const auto u = static_cast<std::size_t>(d);
    if (d < 0 || (u != 0 && strides > (std::size_t(1) << 48) / u))
      QKIT_THROW(qkit::format_error, "tensor '", t.name, "' has implausible dims ",
                 qkit::shape_string(t.dims));
    if (u != 0) strides *= u;
    n *= u;
  }
  if (n != values)
    QKIT_THROW(qkit::format_error, "tensor '", t.name, "' has dims ", qkit::shape_string(t.dims),
               " (", n, " elements) but holds ", values, " values");
  shape_type shape(t.dims.begin(), t.dims.end());
  qkit::tensor out(shape);
  if (t.is_floating()) {
    std::copy(t.floats.begin(), t.floats.end(), out.data());
  } else {
    std::transform(t.ints.begin(), t.ints.end(), out.data(),
                   [](std::int64_t v) { return static_cast<float>(v); });
  }
  return out;
}

/// Loads <dir>/model.onnx and <dir>/test_data_set_0/{input,output}_k.pb. Inputs without a
/// name in their file get the name of the graph input at their position (initializers
/// excluded), outputs likewise from the graph outputs.
inline onnx_test_case load_onnx_test_case(const std::string& dir) {
  namespace fs = std::filesystem;
  onnx_test_case tc;
  tc.name = fs::path(dir).filename().string();
  if (tc.name.empty()) tc.name = fs::path(dir).parent_path().filename().string();
  const std::string model = (fs::path(dir) / "model.onnx").string();
  const auto buf = detail::read_whole_file(model);
  detail::wire_reader r(model, buf.data(), 0, buf.size());
  std::uint32_t field;
  int wt;
  bool has_graph = false;
  while (r.next(field, wt)) {
    if (field == 7) {
      detail::parse_graph(r.read_sub(), tc);
      has_graph = true;
    } else if (field == 8) {
      detail::wire_reader op = r.read_sub();
      std::string domain;
      std::int64_t version = 0;
      std::uint32_t f2;
      int w2;
      while (op.next(f2, w2)) {
        if (f2 == 1) domain = op.read_bytes();
        else if (f2 == 2) version = static_cast<std::int64_t>(op.read_varint());
        else op.skip(w2);
      }
      if (domain.empty() || domain == "ai.onnx") tc.opset = static_cast<int>(version);
    } else {
      r.skip(wt);
    }
  }
  if (!has_graph) r.fail(0, "ModelProto has no graph");

  const fs::path data = fs::path(dir) / "test_data_set_0";
  if (!fs::is_directory(data))
    QKIT_THROW(qkit::format_error, "ONNX test case '", dir, "' has no test_data_set_0");
  std::vector<std::string> runtime_inputs;
  for (const auto& in : tc.graph_inputs)
    if (std::none_of(tc.initializers.begin(), tc.initializers.end(),
                     [&](const onnx_tensor& t) { return t.name == in; }))
      runtime_inputs.push_back(in);
  for (const auto& p : detail::numbered_files(data, "input_")) {
    tc.inputs.push_back(read_tensor_proto(p.string()));
    const std::size_t k = tc.inputs.size() - 1;
    if (tc.inputs.back().name.empty() && k < runtime_inputs.size())
      tc.inputs.back().name = runtime_inputs[k];
  }
  for (const auto& p : detail::numbered_files(data, "output_")) {
    tc.outputs.push_back(read_tensor_proto(p.string()));
    const std::size_t k = tc.outputs.size() - 1;
    if (tc.outputs.back().name.empty() && k < tc.graph_outputs.size())
      tc.outputs.back().name = tc.graph_outputs[k];
  }
  return tc;
}

/// Sorted full paths of the test-case directories under root whose name starts with prefix.
inline std::vector<std::string> list_onnx_test_cases(const std::string& root,
                                                     std::string_view prefix) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(root))
    QKIT_THROW(qkit::format_error, "ONNX test data directory '", root, "' does not exist");
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.compare(0, prefix.size(), prefix) == 0 &&
        fs::exists(e.path() / "model.onnx"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace qkit::io
