#!/usr/bin/env bash
# Installs what is missing, builds, and runs the main end-to-end example: train a
# MobileNet-style network on Fashion-MNIST in C++, then simulate and export it quantized.
# Output goes to OUT (default: demo-output/).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
out=${OUT:-$here/demo-output}
"$here/scripts/deps.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DQKIT_WITH_ONNX=ON
cmake --build "$build" -j "$(nproc)" --target fashion_mnist
"$build/examples/fashion_mnist" --data /usr/share/datasets/fashion-mnist --out "$out" "$@"
