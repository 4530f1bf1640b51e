// qkit/sim/sim_config.hpp — AIMET's QuantSim configuration JSON: which tensors of which op types
// are quantized, symmetric or per-channel, and which op chains fuse (supergroups). Parsed into
// plain structs, with resolution helpers where the more specific section overrides the less.
#pragma once

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../config.hpp"
#include "../error.hpp"
#include "../quant/encoding.hpp"

namespace qkit {

/// Settings of one parameter kind ("weight", "bias"); unset means "inherit".
struct sim_param_settings {
  std::optional<bool> is_quantized;
  std::optional<bool> is_symmetric;
  friend bool operator==(const sim_param_settings&, const sim_param_settings&) = default;
};

/// Settings of one op type (ONNX op names: Conv, Gemm, Relu, ...); unset means "inherit".
struct sim_op_settings {
  std::optional<bool> is_input_quantized;
  std::optional<bool> is_output_quantized;
  std::optional<bool> is_symmetric;
  std::optional<bool> per_channel_quantization;
  std::map<std::string, sim_param_settings> params;
  /// Fixed [min, max] for the op's output encoding (AIMET's encoding_constraints), if any.
  std::optional<std::pair<double, double>> encoding_constraints;
  friend bool operator==(const sim_op_settings&, const sim_op_settings&) = default;
};

/// The `defaults` section: what every op and parameter gets unless a more specific section
/// says otherwise. Keys absent from the file leave quantizers off and asymmetric, as in AIMET.
struct sim_defaults {
  std::optional<bool> is_input_quantized;   ///< defaults.ops.is_input_quantized
  std::optional<bool> is_output_quantized;  ///< defaults.ops.is_output_quantized
  std::optional<bool> is_symmetric;         ///< defaults.ops.is_symmetric (activations)
  sim_param_settings params;                ///< defaults.params
  std::optional<bool> strict_symmetric;
  std::optional<bool> unsigned_symmetric;
  std::optional<bool> per_channel_quantization;
  friend bool operator==(const sim_defaults&, const sim_defaults&) = default;
};

/// A parsed QuantSim config. See docs/files.md for the keys and their precedence.
struct sim_config {
  sim_defaults defaults;
  std::map<std::string, sim_param_settings> params;  ///< per parameter kind
  std::map<std::string, sim_op_settings> op_type;    ///< per op type
  std::vector<std::vector<std::string>> supergroups; ///< op chains that fuse, each >= 2 ops
  std::optional<bool> model_input_quantized;         ///< model_input.is_input_quantized
  std::optional<bool> model_output_quantized;        ///< model_output.is_output_quantized

  friend bool operator==(const sim_config&, const sim_config&) = default;

  /// Effective settings of an op type's activation quantizers.
  struct op_resolution {
    bool input_quantized = false;
    bool output_quantized = false;
    bool symmetric = false;
    bool per_channel = false;
    qkit::scheme scheme;  ///< symmetric + the global strict/unsigned flags
  };
  /// Effective settings of a parameter of an op type.
  struct param_resolution {
    bool quantized = false;
    bool symmetric = false;
    bool per_channel = false;
    qkit::scheme scheme;
  };

  bool strict_symmetric() const { return defaults.strict_symmetric.value_or(false); }
  /// AIMET's quantizers use unsigned symmetric unless a config turns it off.
  bool unsigned_symmetric() const { return defaults.unsigned_symmetric.value_or(true); }

  /// The scheme a quantizer gets under this config's global flags.
  qkit::scheme scheme_for(bool symmetric) const {
    return qkit::scheme{symmetric, symmetric && strict_symmetric(),
                        symmetric && unsigned_symmetric()};
  }

  /// op_type[op] overrides defaults.ops (and defaults.per_channel_quantization).
  op_resolution resolve_op(const std::string& op) const {
    const sim_op_settings* s = find_op(op);
    auto pick = [&](std::optional<bool> sim_op_settings::*field, std::optional<bool> fallback) {
      if (s && (s->*field)) return *(s->*field);
      return fallback.value_or(false);
    };
    op_resolution r;
    r.input_quantized = pick(&sim_op_settings::is_input_quantized, defaults.is_input_quantized);
    r.output_quantized = pick(&sim_op_settings::is_output_quantized, defaults.is_output_quantized);
    r.symmetric = pick(&sim_op_settings::is_symmetric, defaults.is_symmetric);
    r.per_channel = pick(&sim_op_settings::per_channel_quantization,
                         defaults.per_channel_quantization);
    r.scheme = scheme_for(r.symmetric);
    return r;
  }

  /// op_type[op].params[kind] overrides params[kind], which overrides defaults.params;
  /// per-channel comes from the op (op_type[op], then defaults).
  param_resolution resolve_param(const std::string& op, const std::string& kind) const {
    const sim_op_settings* s = find_op(op);
    const sim_param_settings* op_param = nullptr;
    if (s) {
      auto it = s->params.find(kind);
      if (it != s->params.end()) op_param = &it->second;
    }
    const sim_param_settings* kind_param = nullptr;
    if (auto it = params.find(kind); it != params.end()) kind_param = &it->second;
    auto pick = [&](std::optional<bool> sim_param_settings::*field) {
      if (op_param && (op_param->*field)) return *(op_param->*field);
      if (kind_param && (kind_param->*field)) return *(kind_param->*field);
      return (defaults.params.*field).value_or(false);
    };
    param_resolution r;
    r.quantized = pick(&sim_param_settings::is_quantized);
    r.symmetric = pick(&sim_param_settings::is_symmetric);
    r.per_channel = resolve_op(op).per_channel;
    r.scheme = scheme_for(r.symmetric);
    return r;
  }

  /// True when `ops` (a chain of op types, in order) is one of the supergroups.
  bool is_supergroup(const std::vector<std::string>& ops) const {
    for (const auto& g : supergroups)
      if (g == ops) return true;
    return false;
  }

 private:
  const sim_op_settings* find_op(const std::string& op) const {
    auto it = op_type.find(op);
    return it == op_type.end() ? nullptr : &it->second;
  }
};

/// The op types a config may name (in op_type and in supergroups). A name outside this list is
/// a config_error, because a misspelt one ("Conv2d" for "Conv") would otherwise match no layer
/// and silently change nothing. The list is the ONNX op names qkit's layers report (their
/// `op_type`: Conv, Gemm, Relu, Clip, Add, BatchNormalization, Flatten, MaxPool, AveragePool,
/// GlobalAveragePool) plus the ONNX ops AIMET's shipped configs name, so that AIMET's config
/// files load unchanged; entries for ops qkit has no layer for are accepted and stay inert.
inline const std::vector<std::string_view>& known_op_types() {
  static const std::vector<std::string_view> ops = {
      // qkit's layers
      "Add", "AveragePool", "BatchNormalization", "Clip", "Conv", "Flatten", "Gemm",
      "GlobalAveragePool", "MaxPool", "Relu",
      // named by AIMET's default, per-channel and backend configs
      "Cast", "Concat", "ConvTranspose", "Div", "Gather", "GroupNormalization", "HardSigmoid",
      "HardSwish", "InstanceNormalization", "LayerNorm", "LayerNormalization", "LeakyRelu",
      "MatMul", "Mean", "Mul", "PRelu", "Pad", "ReduceMean", "Reshape", "Resize", "Sigmoid",
      "Softmax", "Split", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze", "Upsample"};
  return ops;
}

/// Throws a config_error for the first op type in `c` (op_type keys, then supergroup op lists)
/// that known_op_types() does not list, naming where it is and the known ones. `source` names
/// the file, if any.
inline void check_op_types(const sim_config& c, const std::string& source = {});

namespace detail {

inline std::string known_op_list() {
  std::string s;
  for (const auto op : known_op_types()) s += (s.empty() ? "" : ", ") + std::string(op);
  return s;
}

inline bool is_known_op(const std::string& op) {
  for (const auto k : known_op_types())
    if (k == op) return true;
  return false;
}

// Every complaint names the JSON path (op_type.Conv.is_output_quantized) so that a user can find
// the line in a file that may have hundreds.
struct sim_config_parser {
  std::string source;

  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    QKIT_THROW(config_error, source.empty() ? std::string("quantsim config")
                                            : "quantsim config '" + source + "'",
               ": ", path, ": ", what);
  }

  static std::string join(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  const nlohmann::json& object(const nlohmann::json& j, const std::string& path) const {
    if (!j.is_object()) fail(path, std::string("expected an object, got ") + j.type_name());
    return j;
  }

  void only_keys(const nlohmann::json& obj, const std::string& path,
                 std::initializer_list<const char*> allowed) const {
    for (const auto& [key, _] : obj.items()) {
      bool ok = false;
      for (const char* a : allowed) ok = ok || key == a;
      if (ok) continue;
      std::string list;
      for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      fail(join(path, key), "unknown key (expected one of: " + list + ")");
    }
  }

  // AIMET writes booleans as the strings "True"/"False"; real JSON bools are accepted too.
  bool boolean(const nlohmann::json& j, const std::string& path) const {
    if (j.is_boolean()) return j.get<bool>();
    if (j.is_string()) {
      const auto s = j.get<std::string>();
      if (s == "True") return true;
      if (s == "False") return false;
    }
    fail(path, "expected \"True\" or \"False\", got " + j.dump());
  }

  void optional_bool(const nlohmann::json& obj, const std::string& path, const char* key,
                     std::optional<bool>& out) const {
    if (auto it = obj.find(key); it != obj.end()) out = boolean(*it, join(path, key));
  }

  sim_param_settings param(const nlohmann::json& j, const std::string& path) const {
    object(j, path);
    only_keys(j, path, {"is_quantized", "is_symmetric"});
    sim_param_settings p;
    optional_bool(j, path, "is_quantized", p.is_quantized);
    optional_bool(j, path, "is_symmetric", p.is_symmetric);
    return p;
  }

  std::map<std::string, sim_param_settings> param_map(const nlohmann::json& j,
                                                      const std::string& path) const {
    object(j, path);
    std::map<std::string, sim_param_settings> out;
    for (const auto& [kind, v] : j.items()) out[kind] = param(v, join(path, kind));
    return out;
  }

  // supported_kernels and hw_version describe a target for AIMET's checks; qkit takes its
  // bitwidths from the caller, so they are accepted (type-checked) and not used.
  void ignored_list(const nlohmann::json& obj, const std::string& path, const char* key) const {
    if (auto it = obj.find(key); it != obj.end() && !it->is_array())
      fail(join(path, key), std::string("expected a list, got ") + it->type_name());
  }

  sim_defaults defaults(const nlohmann::json& j, const std::string& path) const {
    object(j, path);
    only_keys(j, path, {"ops", "params", "strict_symmetric", "unsigned_symmetric",
                        "per_channel_quantization", "supported_kernels", "hw_version"});
    sim_defaults d;
    if (auto it = j.find("ops"); it != j.end()) {
      const std::string p = join(path, "ops");
      object(*it, p);
      only_keys(*it, p, {"is_input_quantized", "is_output_quantized", "is_symmetric"});
      optional_bool(*it, p, "is_input_quantized", d.is_input_quantized);
      optional_bool(*it, p, "is_output_quantized", d.is_output_quantized);
      optional_bool(*it, p, "is_symmetric", d.is_symmetric);
    }
    if (auto it = j.find("params"); it != j.end()) d.params = param(*it, join(path, "params"));
    optional_bool(j, path, "strict_symmetric", d.strict_symmetric);
    optional_bool(j, path, "unsigned_symmetric", d.unsigned_symmetric);
    optional_bool(j, path, "per_channel_quantization", d.per_channel_quantization);
    ignored_list(j, path, "supported_kernels");
    if (auto it = j.find("hw_version"); it != j.end() && !it->is_string())
      fail(join(path, "hw_version"), "expected a string, got " + it->dump());
    return d;
  }

  sim_op_settings op(const nlohmann::json& j, const std::string& path) const {
    object(j, path);
    only_keys(j, path, {"is_input_quantized", "is_output_quantized", "is_symmetric",
                        "per_channel_quantization", "params", "supported_kernels",
                        "encoding_constraints"});
    sim_op_settings s;
    optional_bool(j, path, "is_input_quantized", s.is_input_quantized);
    optional_bool(j, path, "is_output_quantized", s.is_output_quantized);
    optional_bool(j, path, "is_symmetric", s.is_symmetric);
    optional_bool(j, path, "per_channel_quantization", s.per_channel_quantization);
    if (auto it = j.find("params"); it != j.end()) s.params = param_map(*it, join(path, "params"));
    ignored_list(j, path, "supported_kernels");
    if (auto it = j.find("encoding_constraints"); it != j.end()) {
      const std::string p = join(path, "encoding_constraints");
      object(*it, p);
      only_keys(*it, p, {"min", "max"});
      auto num = [&](const char* key) {
        auto v = it->find(key);
        if (v == it->end()) fail(join(p, key), "missing");
        if (!v->is_number()) fail(join(p, key), "expected a number, got " + v->dump());
        return v->get<double>();
      };
      const double lo = num("min"), hi = num("max");
      if (!(lo <= hi)) fail(p, "min " + std::to_string(lo) + " > max " + std::to_string(hi));
      s.encoding_constraints = std::make_pair(lo, hi);
    }
    return s;
  }

  std::vector<std::vector<std::string>> supergroups(const nlohmann::json& j,
                                                    const std::string& path) const {
    if (!j.is_array()) fail(path, std::string("expected a list, got ") + j.type_name());
    std::vector<std::vector<std::string>> out;
    for (std::size_t i = 0; i < j.size(); ++i) {
      const std::string p = path + "[" + std::to_string(i) + "]";
      object(j[i], p);
      only_keys(j[i], p, {"op_list"});
      auto it = j[i].find("op_list");
      if (it == j[i].end()) fail(p, "missing op_list");
      const std::string lp = join(p, "op_list");
      if (!it->is_array()) fail(lp, std::string("expected a list, got ") + it->type_name());
      if (it->size() < 2)
        fail(lp, "a supergroup needs at least two ops, got " + std::to_string(it->size()));
      std::vector<std::string> ops;
      for (const auto& o : *it) {
        if (!o.is_string()) fail(lp, "expected op type names, got " + o.dump());
        ops.push_back(o.get<std::string>());
      }
      out.push_back(std::move(ops));
    }
    return out;
  }

  sim_config config(const nlohmann::json& j) const {
    object(j, "(top level)");
    only_keys(j, "", {"defaults", "params", "op_type", "supergroups", "model_input",
                      "model_output"});
    sim_config c;
    auto it = j.find("defaults");
    if (it == j.end()) fail("defaults", "missing (AIMET requires defaults.ops and defaults.params)");
    c.defaults = defaults(*it, "defaults");
    if (it = j.find("params"); it != j.end()) c.params = param_map(*it, "params");
    if (it = j.find("op_type"); it != j.end()) {
      object(*it, "op_type");
      for (const auto& [name, v] : it->items()) c.op_type[name] = op(v, "op_type." + name);
    }
    if (it = j.find("supergroups"); it != j.end()) c.supergroups = supergroups(*it, "supergroups");
    if (it = j.find("model_input"); it != j.end()) {
      object(*it, "model_input");
      only_keys(*it, "model_input", {"is_input_quantized"});
      optional_bool(*it, "model_input", "is_input_quantized", c.model_input_quantized);
    }
    if (it = j.find("model_output"); it != j.end()) {
      object(*it, "model_output");
      only_keys(*it, "model_output", {"is_output_quantized"});
      optional_bool(*it, "model_output", "is_output_quantized", c.model_output_quantized);
    }
    check_op_types(c, source);
    return c;
  }
};

}  // namespace detail

inline void check_op_types(const sim_config& c, const std::string& source) {
  const std::string where = source.empty() ? std::string("quantsim config")
                                           : "quantsim config '" + source + "'";
  for (const auto& [op, settings] : c.op_type)
    QKIT_PRECONDITION(detail::is_known_op(op), config_error, where, ": op_type.", op,
                      ": unknown op type '", op, "' (op types are ONNX names; known: ",
                      detail::known_op_list(), ")");
  for (std::size_t i = 0; i < c.supergroups.size(); ++i)
    for (const auto& op : c.supergroups[i])
      QKIT_PRECONDITION(detail::is_known_op(op), config_error, where, ": supergroups[", i,
                        "].op_list: unknown op type '", op, "' (op types are ONNX names; known: ",
                        detail::known_op_list(), ")");
}

/// Parses a QuantSim config document. Unknown sections or keys, wrong types and malformed
/// supergroups are config_errors naming the JSON path; `source` names the file in messages.
inline sim_config parse_sim_config(const nlohmann::json& doc, const std::string& source = {}) {
  return detail::sim_config_parser{source}.config(doc);
}

/// Parses QuantSim config JSON text.
inline sim_config parse_sim_config_text(std::string_view text, const std::string& source = {}) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    QKIT_THROW(config_error, "quantsim config", source.empty() ? "" : " '" + source + "'",
               " is not valid JSON: ", e.what());
  }
  return parse_sim_config(doc, source);
}

/// Loads a QuantSim config file.
inline sim_config load_sim_config(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  QKIT_PRECONDITION(in, config_error, "cannot open quantsim config '", path.string(), "'");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_sim_config_text(text, path.string());
}

/// The config as AIMET's JSON ("True"/"False" strings, as AIMET's files write them): what
/// load_sim_config reads back to an equal config. Unset values are left out.
inline nlohmann::ordered_json sim_config_to_json(const sim_config& c) {
  using oj = nlohmann::ordered_json;
  auto put = [](oj& j, const char* key, const std::optional<bool>& v) {
    if (v) j[key] = *v ? "True" : "False";
  };
  auto param = [&](const sim_param_settings& p) {
    oj j = oj::object();
    put(j, "is_quantized", p.is_quantized);
    put(j, "is_symmetric", p.is_symmetric);
    return j;
  };
  oj j;
  oj ops = oj::object();
  put(ops, "is_input_quantized", c.defaults.is_input_quantized);
  put(ops, "is_output_quantized", c.defaults.is_output_quantized);
  put(ops, "is_symmetric", c.defaults.is_symmetric);
  j["defaults"]["ops"] = ops;
  j["defaults"]["params"] = param(c.defaults.params);
  put(j["defaults"], "strict_symmetric", c.defaults.strict_symmetric);
  put(j["defaults"], "unsigned_symmetric", c.defaults.unsigned_symmetric);
  put(j["defaults"], "per_channel_quantization", c.defaults.per_channel_quantization);
  j["params"] = oj::object();
  for (const auto& [kind, p] : c.params) j["params"][kind] = param(p);
  j["op_type"] = oj::object();
  for (const auto& [op, s] : c.op_type) {
    oj o = oj::object();
    put(o, "is_input_quantized", s.is_input_quantized);
    put(o, "is_output_quantized", s.is_output_quantized);
    put(o, "is_symmetric", s.is_symmetric);
    put(o, "per_channel_quantization", s.per_channel_quantization);
    if (!s.params.empty()) {
      o["params"] = oj::object();
      for (const auto& [kind, p] : s.params) o["params"][kind] = param(p);
    }
    if (s.encoding_constraints)
      o["encoding_constraints"] = {{"min", s.encoding_constraints->first}, {"max", s.encoding_constraints->second}};
    j["op_type"][op] = o;
  }
  j["supergroups"] = oj::array();
  for (const auto& g : c.supergroups) j["supergroups"].push_back({{"op_list", g}});
  j["model_input"] = oj::object();
  put(j["model_input"], "is_input_quantized", c.model_input_quantized);
  j["model_output"] = oj::object();
  put(j["model_output"], "is_output_quantized", c.model_output_quantized);
  return j;
}

/// The settings of AIMET's default_config.json: op outputs and the model input quantized,
/// asymmetric activations; weights quantized and symmetric, bias not quantized; per-tensor;
/// Squeeze, Pad and Mean outputs left unquantized; supergroups Conv+Relu, Conv+Clip, Add+Relu,
/// Gemm+Relu.
inline sim_config default_sim_config() {
  sim_config c;
  c.defaults.is_output_quantized = true;
  c.defaults.params.is_quantized = true;
  c.defaults.params.is_symmetric = true;
  c.defaults.strict_symmetric = false;
  c.defaults.per_channel_quantization = false;
  c.params["bias"].is_quantized = false;
  for (const char* op : {"Squeeze", "Pad", "Mean"}) c.op_type[op].is_output_quantized = false;
  c.supergroups = {{"Conv", "Relu"}, {"Conv", "Clip"}, {"Add", "Relu"}, {"Gemm", "Relu"}};
  c.model_input_quantized = true;
  return c;
}

/// The settings of AIMET's default_config_per_channel.json: the default config with
/// per-channel weights, except Gemm and LayerNorm; Gather outputs unquantized; ConvTranspose+Relu
/// also a supergroup.
inline sim_config default_sim_config_per_channel() {
  sim_config c = default_sim_config();
  c.defaults.per_channel_quantization = true;
  c.op_type["Gemm"].per_channel_quantization = false;
  c.op_type["LayerNorm"].per_channel_quantization = false;
  c.op_type["Gather"].is_output_quantized = false;
  c.supergroups = {{"Conv", "Relu"}, {"Conv", "Clip"}, {"ConvTranspose", "Relu"},
                   {"Add", "Relu"}, {"Gemm", "Relu"}};
  return c;
}

}  // namespace qkit
