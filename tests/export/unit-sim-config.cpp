// QuantSim config JSON: AIMET's shipped configs parse to qkit's defaults, more specific
// sections override less specific ones, and bad input names its JSON path.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <qkit/sim/sim_config.hpp>

namespace unit_sim_config {  // the suite is one translation unit: tests/CMakeLists.txt

namespace {

// AIMET's aimet_common/quantsim_config/default_config.json, as shipped (tabs included).
const char* const aimet_default_config = R"({
  "defaults":
  {
    "ops":
    {
      "is_output_quantized": "True"
    },
    "params":
    {
      "is_quantized": "True",
      "is_symmetric": "True"
    },
    "strict_symmetric": "False",
	"per_channel_quantization": "False"
  },

  "params":
  {
    "bias":
    {
      "is_quantized": "False"
    }
  },

  "op_type":
  {
    "Squeeze":
    {
      "is_output_quantized": "False"
    },
    "Pad":
    {
      "is_output_quantized": "False"
    },
    "Mean":
    {
      "is_output_quantized": "False"
    }
  },

  "supergroups":
  [
    {
      "op_list": ["Conv", "Relu"]
    },
    {
      "op_list": ["Conv", "Clip"]
    },
    {
      "op_list": ["Add", "Relu"]
    },
    {
      "op_list": ["Gemm", "Relu"]
    }
  ],

  "model_input":
  {
    "is_input_quantized": "True"
  },

  "model_output":
  {}
}
)";

// AIMET's default_config_per_channel.json, as shipped.
const char* const aimet_default_config_per_channel = R"({
  "defaults":
  {
    "ops":
    {
      "is_output_quantized": "True"
    },
    "params":
    {
      "is_quantized": "True",
      "is_symmetric": "True"
    },
    "strict_symmetric": "False",
    "per_channel_quantization": "True"
  },

  "params":
  {
    "bias":
    {
      "is_quantized": "False"
    }
  },

  "op_type":
  {
    "Squeeze":
    {
      "is_output_quantized": "False"
    },
    "Pad":
    {
      "is_output_quantized": "False"
    },
    "Mean":
    {
      "is_output_quantized": "False"
    },
    "Gemm":
    {
      "per_channel_quantization": "False"
    },
    "LayerNorm":
    {
      "per_channel_quantization": "False"
    },
    "Gather":
    {
      "is_output_quantized": "False"
    }
  },

  "supergroups":
  [
    {
      "op_list": ["Conv", "Relu"]
    },
    {
      "op_list": ["Conv", "Clip"]
    },
    {
      "op_list": ["ConvTranspose", "Relu"]
    },
    {
      "op_list": ["Add", "Relu"]
    },
    {
      "op_list": ["Gemm", "Relu"]
    }
  ],

  "model_input":
  {
    "is_input_quantized": "True"
  },

  "model_output":
  {}
}
)";

}  // namespace

TEST_CASE("AIMET's default configs parse to qkit's default_sim_config(_per_channel)") {
  const auto c = qkit::parse_sim_config_text(aimet_default_config, "default_config.json");
  CHECK(c == qkit::default_sim_config());
  const auto pc = qkit::parse_sim_config_text(aimet_default_config_per_channel);
  CHECK(pc == qkit::default_sim_config_per_channel());
  CHECK(!(c == pc));

  // What they mean.
  const auto conv = c.resolve_op("Conv");
  CHECK(conv.output_quantized);
  CHECK(!conv.input_quantized);
  CHECK(!conv.symmetric);
  CHECK(!conv.per_channel);
  CHECK(conv.scheme == qkit::scheme::asymmetric);
  CHECK(!c.resolve_op("Squeeze").output_quantized);
  const auto w = c.resolve_param("Conv", "weight");
  CHECK(w.quantized);
  CHECK(w.symmetric);
  CHECK(!w.per_channel);
  CHECK(w.scheme == qkit::scheme::unsigned_symm);  // AIMET quantizers: unsigned symmetric on
  CHECK(!c.resolve_param("Conv", "bias").quantized);
  CHECK(c.model_input_quantized == true);
  CHECK(!c.model_output_quantized.has_value());
  CHECK(c.is_supergroup({"Conv", "Clip"}));
  CHECK(!c.is_supergroup({"Clip", "Conv"}));

  CHECK(pc.resolve_param("Conv", "weight").per_channel);
  CHECK(!pc.resolve_param("Gemm", "weight").per_channel);
  CHECK(pc.is_supergroup({"ConvTranspose", "Relu"}));
}

TEST_CASE("sim config: more specific sections override less specific ones") {
  const auto c = qkit::parse_sim_config_text(R"({
    "defaults": {"ops": {"is_output_quantized": true, "is_symmetric": "False"},
                 "params": {"is_quantized": "True", "is_symmetric": "True"},
                 "strict_symmetric": "True", "unsigned_symmetric": "False",
                 "per_channel_quantization": "True", "hw_version": "V73",
                 "supported_kernels": [{"activation": {"bitwidth": 8, "dtype": "int"},
                                        "param": {"bitwidth": 8, "dtype": "int"}}]},
    "params": {"bias": {"is_quantized": "True", "is_symmetric": "False"},
               "weight": {"is_symmetric": "False"}},
    "op_type": {
      "Gemm": {"per_channel_quantization": "False", "is_symmetric": "True",
               "params": {"weight": {"is_symmetric": "True"}}},
      "Softmax": {"encoding_constraints": {"min": 0.0, "max": 1.0}},
      "Relu": {"is_input_quantized": "True", "is_output_quantized": "False"}},
    "supergroups": [{"op_list": ["Conv", "BatchNormalization", "Relu"]}],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {"is_output_quantized": "True"}
  })");
  // params.weight overrides defaults.params; op_type.Gemm.params.weight overrides params.weight.
  CHECK(!c.resolve_param("Conv", "weight").symmetric);
  CHECK(c.resolve_param("Gemm", "weight").symmetric);
  CHECK(c.resolve_param("Gemm", "weight").scheme == qkit::scheme::strict_symmetric);
  CHECK(c.resolve_param("Conv", "weight").quantized);  // from defaults.params
  CHECK(c.resolve_param("Conv", "bias").quantized);
  CHECK(!c.resolve_param("Conv", "bias").symmetric);
  // A kind no section names falls back to defaults.params.
  CHECK(c.resolve_param("Conv", "running_mean").symmetric);
  // per-channel: defaults on, Gemm off.
  CHECK(c.resolve_param("Conv", "weight").per_channel);
  CHECK(!c.resolve_param("Gemm", "weight").per_channel);
  // Activations: op_type over defaults.ops.
  CHECK(!c.resolve_op("Conv").symmetric);
  CHECK(c.resolve_op("Gemm").symmetric);
  CHECK(c.resolve_op("Relu").input_quantized);
  CHECK(!c.resolve_op("Relu").output_quantized);
  CHECK(c.resolve_op("Add").output_quantized);
  REQUIRE(c.op_type.at("Softmax").encoding_constraints.has_value());
  CHECK(c.op_type.at("Softmax").encoding_constraints->second == 1.0);
  CHECK(c.is_supergroup({"Conv", "BatchNormalization", "Relu"}));
  CHECK(c.model_output_quantized == true);
}

TEST_CASE("sim config: loads from a file") {
  const auto dir = std::filesystem::path(QKIT_TEST_OUTPUT) / "export";
  std::filesystem::create_directories(dir);
  const auto p = dir / "default_config.json";
  std::ofstream(p) << aimet_default_config;
  CHECK(qkit::load_sim_config(p) == qkit::default_sim_config());
  CHECK_THROWS_WITH_AS(qkit::load_sim_config(dir / "missing_config.json"),
                       doctest::Contains("missing_config.json"), qkit::config_error);
}

TEST_CASE("sim config: bad input is a config error naming the JSON path") {
  auto expect = [](const std::string& text, const std::string& needle) {
    CAPTURE(text);
    try {
      qkit::parse_sim_config_text(text, "cfg.json");
      FAIL("no error for a bad config");
    } catch (const qkit::config_error& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find("cfg.json") != std::string::npos);
      CHECK(msg.find(needle) != std::string::npos);
    }
  };
  const std::string d = R"("defaults": {"ops": {}, "params": {}})";
  expect("{" + d + ", \"op_type\": {\"Conv\": {\"is_output_quantized\": \"yes\"}}}",
         "op_type.Conv.is_output_quantized: expected \"True\" or \"False\", got \"yes\"");
  expect("{" + d + ", \"op_type\": {\"Conv\": {\"is_output_quantised\": \"True\"}}}",
         "op_type.Conv.is_output_quantised: unknown key");
  expect("{" + d + ", \"layers\": {}}", "layers: unknown key");
  expect(R"({"defaults": {"ops": {"is_symmetric": 1}, "params": {}}})",
         "defaults.ops.is_symmetric: expected");
  expect(R"({"defaults": {"ops": {}, "params": {"bitwidth": 8}}})",
         "defaults.params.bitwidth: unknown key");
  expect("{" + d + ", \"params\": {\"weight\": \"True\"}}", "params.weight: expected an object");
  expect("{" + d + ", \"op_type\": {\"Gemm\": {\"params\": {\"bias\": {\"is_quantized\": 0}}}}}",
         "op_type.Gemm.params.bias.is_quantized");
  expect("{" + d + ", \"supergroups\": [{\"op_list\": [\"Conv\"]}]}",
         "supergroups[0].op_list: a supergroup needs at least two ops, got 1");
  expect("{" + d + ", \"supergroups\": [{\"op_list\": [\"Conv\", 3]}]}",
         "supergroups[0].op_list: expected op type names");
  expect("{" + d + ", \"supergroups\": {\"op_list\": [\"Conv\", \"Relu\"]}}",
         "supergroups: expected a list");
  expect("{" + d + ", \"model_input\": {\"is_output_quantized\": \"True\"}}",
         "model_input.is_output_quantized: unknown key");
  expect("{" + d + ", \"op_type\": {\"Softmax\": {\"encoding_constraints\": {\"min\": 1}}}}",
         "op_type.Softmax.encoding_constraints.max: missing");
  // A misspelt op type would match no layer and silently change nothing: it is refused, and
  // the message lists the ONNX names (Conv is PyTorch's Conv2d).
  expect("{" + d + ", \"op_type\": {\"Conv2d\": {\"is_output_quantized\": \"False\"}}}",
         "op_type.Conv2d: unknown op type 'Conv2d' (op types are ONNX names; known: Add,");
  expect("{" + d + ", \"op_type\": {\"Conv2d\": {}}}", ", Conv, ");
  expect("{" + d + ", \"supergroups\": [{\"op_list\": [\"Conv\", \"Relu\"]}, "
         "{\"op_list\": [\"Gemm\", \"ReLU\"]}]}",
         "supergroups[1].op_list: unknown op type 'ReLU'");
  expect(R"({"params": {}})", "defaults: missing");
  expect(R"({"defaults": {"ops": {}, "params": {}}, )", "not valid JSON");
  expect("[1, 2]", "expected an object");
}

TEST_CASE("sim config: sim_config_to_json writes what AIMET's shipped configs parse to, and reads back equal") {
  // AIMET's shipped files are the independent truth: qkit's writer, fed what those files parse
  // to, must write a file that parses to the same config (its keys AIMET's, its values
  // "True"/"False" strings); a config with every field set round-trips too.
  for (const char* text : {aimet_default_config, aimet_default_config_per_channel}) {
    const auto c = qkit::parse_sim_config_text(text, "aimet");
    const auto j = qkit::sim_config_to_json(c);
    CHECK(qkit::parse_sim_config(nlohmann::json::parse(j.dump()), "written") == c);
    CHECK(j["defaults"]["params"]["is_symmetric"] == "True");
  }
  qkit::sim_config c = qkit::default_sim_config();
  c.op_type["Conv"].params["weight"].is_symmetric = false;
  c.op_type["Relu"].encoding_constraints = std::pair{0.0, 6.0};
  c.op_type["Add"].is_input_quantized = true;
  c.model_output_quantized = false;
  c.defaults.unsigned_symmetric = false;
  CHECK(qkit::parse_sim_config(nlohmann::json::parse(qkit::sim_config_to_json(c).dump()), "written") == c);
}
}  // namespace unit_sim_config
