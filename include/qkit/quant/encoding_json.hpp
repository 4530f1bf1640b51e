// qkit/quant/encoding_json.hpp — one encoding as JSON, in the entry form of AIMET's encodings
// file version 0.6.1: {bitwidth, dtype: "int", is_symmetric: "True"/"False", max, min, offset,
// scale} or {bitwidth: 16, dtype: "float"}. Whole encodings files (0.6.1 and 1.0.0, keyed by
// tensor name) are built from these entries elsewhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../error.hpp"
#include "encoding.hpp"

namespace qkit {

namespace detail {

template <class Json>
inline const Json& json_field(const Json& j, const char* key) {
  QKIT_PRECONDITION(j.is_object(), format_error, "encoding entry must be a JSON object, got ",
                    j.type_name());
  const auto it = j.find(key);
  QKIT_PRECONDITION(it != j.end(), format_error, "encoding entry has no \"", key, "\" field");
  return *it;
}

/// An integer field; a float with an integral value (some writers emit -128.0) is accepted.
template <class Json>
inline std::int64_t json_integer(const Json& j, const char* key) {
  const Json& v = json_field(j, key);
  if (v.is_number_integer()) return v.template get<std::int64_t>();
  if (v.is_number_unsigned()) {
    const auto u = v.template get<std::uint64_t>();
    QKIT_PRECONDITION(u <= static_cast<std::uint64_t>(INT64_MAX), format_error, "encoding field \"",
                      key, "\" value ", u, " is out of range");
    return static_cast<std::int64_t>(u);
  }
  if (v.is_number_float()) {
    const double d = v.template get<double>();
    QKIT_PRECONDITION(std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18, format_error,
                      "encoding field \"", key, "\" must be an integer, got ", d);
    return static_cast<std::int64_t>(d);
  }
  QKIT_THROW(format_error, "encoding field \"", key, "\" must be an integer, got ", v.type_name(),
             " ", v.dump());
}

template <class Json>
inline double json_number(const Json& j, const char* key) {
  const Json& v = json_field(j, key);
  QKIT_PRECONDITION(v.is_number(), format_error, "encoding field \"", key,
                    "\" must be a number, got ", v.type_name(), " ", v.dump());
  const double d = v.template get<double>();
  QKIT_PRECONDITION(std::isfinite(d), format_error, "encoding field \"", key, "\" is not finite");
  return d;
}

/// AIMET 0.6.1 writes booleans as the strings "True"/"False"; a real bool is accepted too.
template <class Json>
inline bool json_aimet_bool(const Json& j, const char* key) {
  const Json& v = json_field(j, key);
  if (v.is_boolean()) return v.template get<bool>();
  if (v.is_string()) {
    const auto& s = v.template get_ref<const std::string&>();
    if (s == "True") return true;
    if (s == "False") return false;
  }
  QKIT_THROW(format_error, "encoding field \"", key, "\" must be \"True\" or \"False\", got ",
             v.dump());
}

}  // namespace detail

/// Writes an AIMET 0.6.1 encoding entry.
template <class Json>
inline void to_json(Json& j, const encoding& e) {
  if (e.dtype == qkit::dtype::floating) {
    j = Json{{"bitwidth", e.bitwidth}, {"dtype", "float"}};
    return;
  }
  j = Json{{"bitwidth", e.bitwidth},
           {"dtype", "int"},
           {"is_symmetric", e.symmetric ? "True" : "False"},
           {"max", e.max},
           {"min", e.min},
           {"offset", e.offset},
           {"scale", e.scale}};
}

/// Reads an AIMET 0.6.1 encoding entry. A missing field, a wrong type, a bitwidth outside
/// 2..32 (16 for float), a non-positive scale or min > max is a format_error naming the field.
template <class Json>
inline void from_json(const Json& j, encoding& e) {
  const Json& dt = detail::json_field(j, "dtype");
  QKIT_PRECONDITION(dt.is_string(), format_error, "encoding field \"dtype\" must be \"int\" or \"float\", got ",
                    dt.dump());
  const auto& dtype = dt.template get_ref<const std::string&>();
  const std::int64_t bw = detail::json_integer(j, "bitwidth");
  encoding r;
  if (dtype == "float") {
    QKIT_PRECONDITION(bw == 16, format_error, "encoding field \"bitwidth\" of a float encoding must be 16, got ",
                      bw);
    e = encoding::fp16();
    return;
  }
  QKIT_PRECONDITION(dtype == "int", format_error,
                    "encoding field \"dtype\" must be \"int\" or \"float\", got \"", dtype, "\"");
  QKIT_PRECONDITION(bw >= 2 && bw <= 32, format_error, "encoding field \"bitwidth\" ", bw,
                    " is outside 2..32");
  r.bitwidth = static_cast<int>(bw);
  r.dtype = qkit::dtype::integer;
  r.symmetric = detail::json_aimet_bool(j, "is_symmetric");
  r.max = detail::json_number(j, "max");
  r.min = detail::json_number(j, "min");
  r.offset = detail::json_integer(j, "offset");
  r.scale = detail::json_number(j, "scale");
  QKIT_PRECONDITION(r.min <= r.max, format_error, "encoding fields \"min\" ", r.min, " and \"max\" ",
                    r.max, " are out of order");
  // A 32-bit entry is pass-through and may carry scale 0; every real grid needs a scale.
  QKIT_PRECONDITION(r.is_passthrough() || r.scale > 0.0, format_error, "encoding field \"scale\" ",
                    r.scale, " must be positive");
  e = r;
}

}  // namespace qkit
