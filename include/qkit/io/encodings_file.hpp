// qkit/io/encodings_file.hpp — AIMET's encodings files (format 0.6.1 and 1.0.0), read and written.
// They carry a quantized model's grids to a runtime (or back into qkit), keyed by tensor names;
// a file made for another model is an error that lists the names that differ.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../error.hpp"
#include "../quant/encoding.hpp"
#include "../quant/encoding_json.hpp"
#include "atomic_file.hpp"

namespace qkit::io {

/// The encodings-file layouts qkit writes. 0.6.1 maps names to lists of entries with min/max;
/// 1.0.0 lists objects with a `name`, keeps only scale/offset and says PER_TENSOR/PER_CHANNEL.
enum class format_version { v0_6_1, v1_0_0 };

inline const char* to_string(format_version v) {
  return v == format_version::v0_6_1 ? "0.6.1" : "1.0.0";
}

/// A whole encodings file. Maps are ordered so that what is written does not depend on the order
/// quantizers were visited. More than one encoding under a name means per-channel, in channel
/// order.
struct encodings_file {
  std::string version = "1.0.0";  ///< as read; write_encodings writes the version it is asked for
  std::map<std::string, std::vector<encoding>> activation_encodings;
  std::map<std::string, std::vector<encoding>> param_encodings;
  std::vector<std::string> excluded_layers;
  std::optional<nlohmann::json> quantizer_args;
  std::string source;  ///< where it was read from, for error messages ("" if built in memory)
};

namespace detail {

inline std::string where(const std::string& source) {
  return source.empty() ? std::string("encodings") : "encodings file '" + source + "'";
}

// JSON numbers that must be integers may be written as floats by some producers (AIMET's torch
// exporter wrote "offset": -114.0); accept those when they are integral.
inline std::int64_t json_integer(const nlohmann::json& j, const std::string& ctx, const char* key) {
  if (j.is_number_integer()) return j.get<std::int64_t>();
  if (j.is_number_float()) {
    const double d = j.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15)
      return static_cast<std::int64_t>(d);
  }
  QKIT_THROW(format_error, ctx, ": '", key, "' must be an integer, got ", j.dump());
}

inline double json_number(const nlohmann::json& j, const std::string& ctx, const char* key) {
  QKIT_PRECONDITION(j.is_number(), format_error, ctx, ": '", key, "' must be a number, got ",
                    j.dump());
  return j.get<double>();
}

// AIMET writes booleans as the strings "True"/"False" in 0.6.1 and as JSON bools in 1.0.0; a
// reader takes both.
inline bool json_bool(const nlohmann::json& j, const std::string& ctx, const char* key) {
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_string()) {
    const auto s = j.get<std::string>();
    if (s == "True" || s == "true") return true;
    if (s == "False" || s == "false") return false;
  }
  QKIT_THROW(format_error, ctx, ": '", key, "' must be \"True\"/\"False\" or a bool, got ",
             j.dump());
}

inline const nlohmann::json& json_field(const nlohmann::json& obj, const std::string& ctx,
                                        const char* key) {
  auto it = obj.find(key);
  QKIT_PRECONDITION(it != obj.end(), format_error, ctx, ": missing field '", key, "'");
  return *it;
}

inline int checked_bitwidth(std::int64_t bw, bool floating, const std::string& ctx) {
  if (floating) {
    QKIT_PRECONDITION(bw == 16, format_error, ctx, ": float bitwidth ", bw,
                      " is not 16 (float encodings are float16)");
  } else {
    QKIT_PRECONDITION(bw >= 2 && bw <= 32, format_error, ctx, ": bitwidth ", bw,
                      " is outside 2..32");
  }
  return static_cast<int>(bw);
}

/// What a file may hold for an integer grid of `e.bitwidth` bits: a finite scale that is
/// positive (0 only for AIMET's 32-bit pass-through entry), |offset| at most 2^bitwidth (the
/// grid's integers 0..2^bw-1 shifted by offset must reach zero's neighbourhood; anything
/// further is corruption, and would overflow the ONNX zero point), finite min and max. A reader
/// checks it so that a bad entry is refused by name instead of becoming a NaN or a wild grid.
inline void check_readable_int(const encoding& e, const std::string& ctx) {
  checked_bitwidth(e.bitwidth, false, ctx);
  QKIT_PRECONDITION(std::isfinite(e.scale) && (e.scale > 0.0 || (e.scale == 0.0 && e.bitwidth == 32)),
                    format_error, ctx, ": scale ", e.scale,
                    " must be finite and positive (0 only for a 32-bit pass-through entry)");
  const std::int64_t reach = std::int64_t{1} << e.bitwidth;
  QKIT_PRECONDITION(e.offset >= -reach && e.offset <= reach, format_error, ctx, ": offset ",
                    e.offset, " is outside what ", e.bitwidth, " bits allow (|offset| <= ", reach,
                    ")");
  QKIT_PRECONDITION(std::isfinite(e.min) && std::isfinite(e.max), format_error, ctx, ": min ",
                    e.min, " and max ", e.max, " must be finite");
}

inline encoding float_encoding(int bitwidth) {
  encoding e = encoding::fp16();
  e.bitwidth = bitwidth;
  return e;
}

// Integer grid from scale/offset (1.0.0 keeps no min/max). A 32-bit entry may carry scale 0:
// AIMET's pass-through, which has no grid to derive.
inline encoding int_encoding_from_scale_offset(double scale, std::int64_t offset, int bw,
                                               bool symmetric, const std::string& ctx) {
  QKIT_PRECONDITION(std::isfinite(scale) && scale >= 0.0, format_error, ctx, ": scale ", scale,
                    " must be finite and non-negative");
  if (scale == 0.0) {
    QKIT_PRECONDITION(bw == 32, format_error, ctx, ": scale 0 at ", bw,
                      " bits (only a 32-bit pass-through entry may have scale 0)");
    encoding e;
    e.bitwidth = bw;
    e.scale = 0.0;
    e.offset = offset;
    e.symmetric = symmetric;
    check_readable_int(e, ctx);
    return e;
  }
  const encoding e = encoding_from_scale_offset(scale, offset, bw, symmetric);
  // min/max are derived from scale and offset, so a huge scale can make them infinite.
  check_readable_int(e, ctx);
  return e;
}

inline void check_writable(const encoding& e, const std::string& ctx) {
  if (e.dtype == dtype::floating) {
    checked_bitwidth(e.bitwidth, true, ctx);
    return;
  }
  checked_bitwidth(e.bitwidth, false, ctx);
  QKIT_PRECONDITION(std::isfinite(e.scale) && e.scale >= 0.0 && std::isfinite(e.min) &&
                        std::isfinite(e.max),
                    format_error, ctx, ": scale ", e.scale, ", min ", e.min, ", max ", e.max,
                    " must be finite (scale non-negative)");
}

// One 0.6.1 entry (AIMET's dict form, also 0.4/0.5): quant/encoding_json.hpp's to_json and
// from_json, with the entry's name put in front of its complaints.
inline nlohmann::json entry_to_json_0_6_1(const encoding& e) { return nlohmann::json(e); }

inline encoding entry_from_json_0_6_1(const nlohmann::json& j, const std::string& ctx) {
  QKIT_PRECONDITION(j.is_object(), format_error, ctx, ": entry must be an object, got ",
                    j.dump());
  encoding e;
  try {
    // Files before 0.5.0 have no dtype: every entry is an integer grid.
    if (!j.contains("dtype")) {
      nlohmann::json with_dtype = j;
      with_dtype["dtype"] = "int";
      e = with_dtype.get<encoding>();
    } else {
      e = j.get<encoding>();
    }
  } catch (const format_error& err) {
    std::string msg = err.what();
    const std::string prefix = "qkit: format error: ";
    if (msg.rfind(prefix, 0) == 0) msg.erase(0, prefix.size());
    QKIT_THROW(format_error, ctx, ": ", msg);
  }
  if (e.dtype == dtype::integer) check_readable_int(e, ctx);
  return e;
}

// One 1.0.0 entry: every channel's scale/offset in lists, the shared settings once.
inline nlohmann::json entry_to_json_1_0_0(const std::string& name,
                                          const std::vector<encoding>& encs,
                                          const std::string& ctx) {
  const encoding& first = encs.front();
  nlohmann::json j;
  j["name"] = name;
  j["bw"] = first.bitwidth;
  j["enc_type"] = encs.size() > 1 ? "PER_CHANNEL" : "PER_TENSOR";
  if (first.dtype == dtype::floating) {
    QKIT_PRECONDITION(encs.size() == 1, format_error, ctx,
                      ": a float entry cannot be per-channel (", encs.size(), " encodings)");
    j["dtype"] = "FLOAT";
    j["enc_type"] = "PER_TENSOR";
    return j;
  }
  j["dtype"] = "INT";
  j["is_sym"] = first.symmetric;
  nlohmann::json scales = nlohmann::json::array(), offsets = nlohmann::json::array();
  for (std::size_t c = 0; c < encs.size(); ++c) {
    const encoding& e = encs[c];
    // 1.0.0 stores bitwidth, dtype and symmetry once per tensor.
    QKIT_PRECONDITION(e.dtype == first.dtype && e.bitwidth == first.bitwidth &&
                          e.symmetric == first.symmetric,
                      format_error, ctx, ": channel ", c, " has bitwidth ", e.bitwidth,
                      (e.symmetric ? " symmetric" : " asymmetric"), " but channel 0 has ",
                      first.bitwidth, (first.symmetric ? " symmetric" : " asymmetric"),
                      "; format 1.0.0 needs them equal");
    scales.push_back(e.scale);
    offsets.push_back(e.offset);
  }
  j["scale"] = std::move(scales);
  j["offset"] = std::move(offsets);
  return j;
}

inline std::vector<encoding> entry_from_json_1_0_0(const nlohmann::json& j,
                                                   const std::string& ctx) {
  const auto& dt = json_field(j, ctx, "dtype");
  QKIT_PRECONDITION(dt.is_string() && (dt == "INT" || dt == "FLOAT"), format_error, ctx,
                    ": 'dtype' must be \"INT\" or \"FLOAT\", got ", dt.dump());
  const bool floating = dt == "FLOAT";
  const int bw = checked_bitwidth(json_integer(json_field(j, ctx, "bw"), ctx, "bw"), floating, ctx);
  const auto& et = json_field(j, ctx, "enc_type");
  QKIT_PRECONDITION(et.is_string(), format_error, ctx, ": 'enc_type' must be a string, got ",
                    et.dump());
  const auto enc_type = et.get<std::string>();
  QKIT_PRECONDITION(enc_type == "PER_TENSOR" || enc_type == "PER_CHANNEL", format_error, ctx,
                    ": enc_type '", enc_type,
                    "' is not supported (expected PER_TENSOR or PER_CHANNEL)");
  if (floating) {
    QKIT_PRECONDITION(enc_type == "PER_TENSOR", format_error, ctx,
                      ": a FLOAT entry must be PER_TENSOR, got ", enc_type);
    return {float_encoding(bw)};
  }
  const bool sym = json_bool(json_field(j, ctx, "is_sym"), ctx, "is_sym");
  const auto& scales = json_field(j, ctx, "scale");
  const auto& offsets = json_field(j, ctx, "offset");
  QKIT_PRECONDITION(scales.is_array() && offsets.is_array(), format_error, ctx,
                    ": 'scale' and 'offset' must be lists");
  QKIT_PRECONDITION(!scales.empty() && scales.size() == offsets.size(), format_error, ctx,
                    ": 'scale' has ", scales.size(), " values and 'offset' ", offsets.size(),
                    "; expected the same non-zero count");
  QKIT_PRECONDITION(enc_type == "PER_CHANNEL" || scales.size() == 1, format_error, ctx,
                    ": PER_TENSOR entry has ", scales.size(), " scales, expected 1");
  std::vector<encoding> out;
  out.reserve(scales.size());
  for (std::size_t c = 0; c < scales.size(); ++c) {
    const std::string cctx = ctx + " channel " + std::to_string(c);
    out.push_back(int_encoding_from_scale_offset(json_number(scales[c], cctx, "scale"),
                                                 json_integer(offsets[c], cctx, "offset"), bw,
                                                 sym, cctx));
  }
  return out;
}

inline void read_section(const nlohmann::json& doc, const char* section, bool list_form,
                         const std::string& src,
                         std::map<std::string, std::vector<encoding>>& out) {
  auto it = doc.find(section);
  if (it == doc.end()) return;
  const std::string sctx = where(src) + " " + section;
  if (list_form) {
    QKIT_PRECONDITION(it->is_array(), format_error, sctx,
                      ": expected a list of entries (format 1.0.0), got ", it->type_name());
    for (std::size_t i = 0; i < it->size(); ++i) {
      const auto& entry = (*it)[i];
      std::string ctx = sctx + "[" + std::to_string(i) + "]";
      QKIT_PRECONDITION(entry.is_object(), format_error, ctx, ": entry must be an object");
      const auto& name = json_field(entry, ctx, "name");
      QKIT_PRECONDITION(name.is_string(), format_error, ctx, ": 'name' must be a string");
      ctx = sctx + " '" + name.get<std::string>() + "'";
      QKIT_PRECONDITION(!out.count(name.get<std::string>()), format_error, ctx,
                        ": name appears twice");
      out[name.get<std::string>()] = entry_from_json_1_0_0(entry, ctx);
    }
    return;
  }
  QKIT_PRECONDITION(it->is_object(), format_error, sctx,
                    ": expected an object of name -> list of entries, got ", it->type_name());
  for (const auto& [name, list] : it->items()) {
    const std::string ctx = sctx + " '" + name + "'";
    QKIT_PRECONDITION(list.is_array() && !list.empty(), format_error, ctx,
                      ": expected a non-empty list of entries, got ", list.dump());
    std::vector<encoding> encs;
    for (std::size_t c = 0; c < list.size(); ++c)
      encs.push_back(entry_from_json_0_6_1(
          list[c], list.size() > 1 ? ctx + " channel " + std::to_string(c) : ctx));
    out[name] = std::move(encs);
  }
}

}  // namespace detail

/// The JSON document of `file` in format `v` (sorted keys, as AIMET writes them).
inline nlohmann::json encodings_to_json(const encodings_file& file, format_version v) {
  nlohmann::json doc;
  doc["version"] = to_string(v);
  doc["excluded_layers"] = file.excluded_layers;
  if (file.quantizer_args) doc["quantizer_args"] = *file.quantizer_args;
  auto section = [&](const char* key, const std::map<std::string, std::vector<encoding>>& m) {
    nlohmann::json out = v == format_version::v1_0_0 ? nlohmann::json::array()
                                                     : nlohmann::json::object();
    for (const auto& [name, encs] : m) {
      const std::string ctx = std::string(key) + " '" + name + "'";
      QKIT_PRECONDITION(!encs.empty(), format_error, ctx, ": no encodings to write");
      for (const auto& e : encs) detail::check_writable(e, ctx);
      if (v == format_version::v1_0_0) {
        out.push_back(detail::entry_to_json_1_0_0(name, encs, ctx));
      } else {
        nlohmann::json list = nlohmann::json::array();
        for (const auto& e : encs) list.push_back(detail::entry_to_json_0_6_1(e));
        out[name] = std::move(list);
      }
    }
    doc[key] = std::move(out);
  };
  section("activation_encodings", file.activation_encodings);
  section("param_encodings", file.param_encodings);
  return doc;
}

/// Parses an encodings document of any version qkit knows: 0.4.0, 0.5.0, 0.6.0 and 0.6.1 (the
/// name -> list layout; a file with no version is 0.4.0, as AIMET's spec says) and 1.0.0.
/// `source` names the file in error messages.
inline encodings_file encodings_from_json(const nlohmann::json& doc,
                                          const std::string& source = {}) {
  const std::string ctx = detail::where(source);
  QKIT_PRECONDITION(doc.is_object(), format_error, ctx, ": top level must be an object, got ",
                    doc.type_name());
  encodings_file file;
  file.source = source;
  file.version = "0.4.0";
  if (auto it = doc.find("version"); it != doc.end()) {
    QKIT_PRECONDITION(it->is_string(), format_error, ctx, ": 'version' must be a string, got ",
                      it->dump());
    file.version = it->get<std::string>();
  }
  const std::set<std::string> dict_versions{"0.4.0", "0.5.0", "0.6.0", "0.6.1"};
  const bool list_form = file.version == "1.0.0";
  QKIT_PRECONDITION(list_form || dict_versions.count(file.version), format_error, ctx,
                    ": unknown version '", file.version,
                    "' (expected 0.4.0, 0.5.0, 0.6.0, 0.6.1 or 1.0.0)");
  QKIT_PRECONDITION(doc.contains("activation_encodings") || doc.contains("param_encodings"),
                    format_error, ctx,
                    ": neither 'activation_encodings' nor 'param_encodings' is present");
  detail::read_section(doc, "activation_encodings", list_form, source, file.activation_encodings);
  detail::read_section(doc, "param_encodings", list_form, source, file.param_encodings);
  if (auto it = doc.find("excluded_layers"); it != doc.end()) {
    QKIT_PRECONDITION(it->is_array(), format_error, ctx,
                      ": 'excluded_layers' must be a list of names");
    for (const auto& n : *it) {
      QKIT_PRECONDITION(n.is_string(), format_error, ctx,
                        ": 'excluded_layers' holds a non-string ", n.dump());
      file.excluded_layers.push_back(n.get<std::string>());
    }
  }
  if (auto it = doc.find("quantizer_args"); it != doc.end()) {
    QKIT_PRECONDITION(it->is_object(), format_error, ctx, ": 'quantizer_args' must be an object");
    file.quantizer_args = *it;
  }
  return file;
}

/// Writes `file` to `path` in format `v`, with sorted keys and an indent of 4 like AIMET, through
/// a temporary file and a rename, so a crash never leaves half a file.
inline void write_encodings(const encodings_file& file, const std::filesystem::path& path,
                            format_version v = format_version::v1_0_0) {
  const std::string text = encodings_to_json(file, v).dump(4) + "\n";
  write_file_atomically(path, text);
}

/// Reads an encodings file of any supported version (see encodings_from_json). Corrupt JSON,
/// an unknown version, a missing or mistyped field, or a bitwidth outside 2..32 is a
/// format_error naming the file and the entry.
inline encodings_file read_encodings(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  QKIT_PRECONDITION(in, format_error, "cannot open encodings file '", path.string(), "'");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    QKIT_THROW(format_error, "encodings file '", path.string(), "' is not valid JSON: ", e.what());
  }
  return encodings_from_json(doc, path.string());
}

namespace detail {
inline std::string join_names(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

inline void diff_names(const std::map<std::string, std::vector<encoding>>& have,
                       const std::set<std::string>& expected, const char* kind,
                       std::ostringstream& report) {
  std::vector<std::string> missing, unexpected;
  for (const auto& n : expected)
    if (!have.count(n)) missing.push_back(n);
  for (const auto& [n, _] : have)
    if (!expected.count(n)) unexpected.push_back(n);
  if (!missing.empty())
    report << "\n  " << kind << " encodings the model needs but the file lacks (" << missing.size()
           << "): " << join_names(missing);
  if (!unexpected.empty())
    report << "\n  " << kind << " encodings in the file that the model does not have ("
           << unexpected.size() << "): " << join_names(unexpected);
}
}  // namespace detail

/// Checks that `file` holds exactly the model's quantizer names. On any difference throws a
/// format_error listing, for params and activations, the names the file lacks and the names the
/// model does not know — the usual sign of a file made for another model or another naming.
inline void check_encoding_names(const encodings_file& file,
                                 const std::set<std::string>& expected_param_names,
                                 const std::set<std::string>& expected_activation_names) {
  std::ostringstream report;
  detail::diff_names(file.param_encodings, expected_param_names, "param", report);
  detail::diff_names(file.activation_encodings, expected_activation_names, "activation", report);
  const std::string r = report.str();
  QKIT_PRECONDITION(r.empty(), format_error, detail::where(file.source),
                    " does not match the model:", r);
}

/// Checks the bitwidth (and int/float kind) of every named encoding against what the model's
/// quantizers are configured for; names absent from the maps are not checked (see
/// check_encoding_names). A float expectation is written as a negative bitwidth: -16 = float16.
inline void check_encoding_bitwidths(const encodings_file& file,
                                     const std::map<std::string, int>& expected_param_bitwidths,
                                     const std::map<std::string, int>& expected_activation_bitwidths) {
  std::ostringstream report;
  auto check = [&](const std::map<std::string, std::vector<encoding>>& have,
                   const std::map<std::string, int>& expected, const char* kind) {
    for (const auto& [name, bw] : expected) {
      auto it = have.find(name);
      if (it == have.end()) continue;
      for (std::size_t c = 0; c < it->second.size(); ++c) {
        const encoding& e = it->second[c];
        const int got = e.dtype == dtype::floating ? -e.bitwidth : e.bitwidth;
        if (got == bw) continue;
        auto describe = [](int b) {
          return b < 0 ? "float" + std::to_string(-b) : "int" + std::to_string(b);
        };
        report << "\n  " << kind << " '" << name << "'";
        if (it->second.size() > 1) report << " channel " << c;
        report << ": file has " << describe(got) << ", model expects " << describe(bw);
        break;
      }
    }
  };
  check(file.param_encodings, expected_param_bitwidths, "param");
  check(file.activation_encodings, expected_activation_bitwidths, "activation");
  const std::string r = report.str();
  QKIT_PRECONDITION(r.empty(), format_error, detail::where(file.source),
                    " has bitwidths the model does not use:", r);
}

}  // namespace qkit::io
