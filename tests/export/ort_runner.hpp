// Test helper: runs an ONNX model in ONNX Runtime (tools/ort/run_model.js under node) on one
// float32 input and returns the first output. A missing node or onnxruntime-node is a test
// failure that says to run scripts/deps.sh: an export that was never run proves nothing.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace qkit_test {

/// Whether ONNX Runtime for node is there; if not, fails the current test with instructions.
inline bool require_ort() {
  const std::filesystem::path src(QKIT_SOURCE_DIR);
  const auto pkg = src / "tools/ort/node_modules/onnxruntime-node/package.json";
  const bool have_node = std::system("node --version > /dev/null 2>&1") == 0;
  if (!have_node) {
    FAIL_CHECK("node is not on PATH; run scripts/deps.sh to install nodejs and onnxruntime-node");
    return false;
  }
  if (!std::filesystem::exists(pkg)) {
    FAIL_CHECK("onnxruntime-node is missing (" << pkg.string()
               << "); run scripts/deps.sh to install it into tools/ort");
    return false;
  }
  return true;
}

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

/// Runs `model` on `input` of `shape` with optimization level `opt` (disabled, basic,
/// extended, all). Returns false (after a failed check naming the log) if ORT fails.
inline bool run_ort(const std::filesystem::path& model, const std::vector<float>& input,
                    const std::vector<std::int64_t>& shape, std::vector<float>& output,
                    const std::string& opt = "disabled") {
  if (!require_ort()) return false;
  const std::filesystem::path src(QKIT_SOURCE_DIR);
  const auto base = model.parent_path() / model.stem();
  const auto in_path = base.string() + "." + opt + ".input.bin";
  const auto out_path = base.string() + "." + opt + ".output.bin";
  const auto log_path = base.string() + "." + opt + ".log";
  {
    std::ofstream in(in_path, std::ios::binary);
    in.write(reinterpret_cast<const char*>(input.data()),
             static_cast<std::streamsize>(input.size() * sizeof(float)));
  }
  std::filesystem::remove(out_path);
  std::string dims;
  for (auto d : shape) dims += (dims.empty() ? "" : ",") + std::to_string(d);
  const std::string cmd = "node " + shell_quote((src / "tools/ort/run_model.js").string()) + " " +
                          shell_quote(model.string()) + " " + shell_quote(in_path) + " " + dims +
                          " " + shell_quote(out_path) + " --opt " + opt + " > " +
                          shell_quote(log_path) + " 2>&1";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    std::ifstream log(log_path);
    const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
    FAIL_CHECK("ONNX Runtime failed on " << model.string() << " (opt " << opt << "): " << text);
    return false;
  }
  std::ifstream out(out_path, std::ios::binary | std::ios::ate);
  const auto bytes = static_cast<std::size_t>(out.tellg());
  out.seekg(0);
  output.resize(bytes / sizeof(float));
  out.read(reinterpret_cast<char*>(output.data()), static_cast<std::streamsize>(bytes));
  return true;
}

}  // namespace qkit_test
