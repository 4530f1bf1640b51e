#!/usr/bin/env bash
# Installs what is missing, builds qkit with everything on, and runs the whole test suite
# through ctest. BUILD_DIR (default build/) and JOBS (default: all cores) can be set.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
jobs=${JOBS:-$(nproc)}
"$here/scripts/deps.sh"
cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DQKIT_WITH_ONNX=ON
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@"
