#!/usr/bin/env bash
# Installs what qkit's build, tests, benchmarks and examples need, and only what is missing:
# Debian packages through apt-get, and ONNX Runtime for Node (the runtime that checks exported
# models) from the npm registry into tools/ort. Safe to run again and again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

debs=(g++ cmake make ninja-build pkg-config zlib1g-dev
      libxtensor-dev libxsimd-dev nlohmann-json3-dev doctest-dev libbenchmark-dev
      dataset-fashion-mnist libonnx-testdata libonnx-dev libprotobuf-dev protobuf-compiler
      libopenblas-dev nodejs npm
      clang libclang-rt-dev   # scripts/fuzz.sh: clang and libFuzzer + sanitizer runtimes (Debian 12: 14)
      chromium)               # the report tests open every HTML page in headless Chromium

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs/npm may come from outside Debian (already on PATH): then they are not missing.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ $p == nodejs || $p == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

ort="$here/tools/ort"
if [[ ! -f "$ort/node_modules/onnxruntime-node/package.json" ]]; then
  echo "deps: installing onnxruntime-node into tools/ort"
  (cd "$ort" && npm install --ignore-scripts --no-audit --no-fund --no-package-lock --loglevel=error)
fi
echo "deps: ok"
