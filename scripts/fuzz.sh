#!/usr/bin/env bash
# Builds qkit's libFuzzer targets (fuzz/) with clang -fsanitize=fuzzer,address,undefined and
# runs each for SECONDS (default 60) on a copy of its committed seed corpus, under a memory
# bound. Installs nothing: scripts/deps.sh provides clang and libFuzzer.
#   scripts/fuzz.sh [seconds] [target...]   targets: npz idx encodings sim_config tensor_proto
#   scripts/fuzz.sh --seeds                 rewrites fuzz/corpus/* with qkit's writers
#   scripts/fuzz.sh --replay [target...]    runs every committed input once (a regression check)
# BUILD_DIR (default build-fuzz/), JOBS (default 1), RSS_MB (default 1024) and MALLOC_MB
# (default 512: the largest single allocation a target may make) can be set; RUNS=N stops each
# target after N executions instead (seconds 0 = no time limit), for the long runs of
# docs/reliability.md. The targets write each input to a file (qkit's readers take paths):
# TMPDIR defaults to /dev/shm where it exists, which nearly doubles the executions per second. Findings (crash-*,
# leak-*, oom-*, timeout-*) land in BUILD_DIR/findings/<target>/; the run then fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build-fuzz}
jobs=${JOBS:-1}
rss_mb=${RSS_MB:-1024}
malloc_mb=${MALLOC_MB:-512}
all=(npz idx encodings sim_config tensor_proto)

command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (run scripts/deps.sh)" >&2; exit 1; }
cmake -S "$here/fuzz" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ >/dev/null

if [[ ${1:-} == --seeds ]]; then
  cmake --build "$build" -j "$jobs" --target qkit_fuzz_make_seeds
  (cd "$here" && "$build/qkit_fuzz_make_seeds" fuzz/corpus)
  exit 0
fi

if [[ ${1:-} == --replay ]]; then
  shift
  targets=("$@")
  ((${#targets[@]})) || targets=("${all[@]}")
  for t in "${targets[@]}"; do
    cmake --build "$build" -j "$jobs" --target "qkit_fuzz_$t"
    # -runs=0: each corpus file once, no mutation; a crash or a non-qkit exception fails.
    echo -n "fuzz: replay $t: "
    "$build/qkit_fuzz_$t" -runs=0 -rss_limit_mb="$rss_mb" -malloc_limit_mb="$malloc_mb" \
      "$here/fuzz/corpus/$t" 2>&1 | tail -1
  done
  exit 0
fi

seconds=${1:-60}
shift || true
runs=()
[[ -n ${RUNS:-} ]] && runs=(-runs="$RUNS")
if [[ -z ${TMPDIR:-} && -d /dev/shm && -w /dev/shm ]]; then export TMPDIR=/dev/shm; fi
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

status=0
for t in "${targets[@]}"; do
  cmake --build "$build" -j "$jobs" --target "qkit_fuzz_$t"
  # Fuzz on a working copy, so the committed corpus changes only when someone decides to.
  work="$build/corpus/$t" findings="$build/findings/$t"
  rm -rf "$findings"
  mkdir -p "$work" "$findings"
  cp -n "$here/fuzz/corpus/$t/"* "$work/" 2>/dev/null || true
  echo "fuzz: $t for ${seconds}s${RUNS:+ or $RUNS executions}"
  if ! "$build/qkit_fuzz_$t" -max_total_time="$seconds" "${runs[@]}" -rss_limit_mb="$rss_mb" \
       -malloc_limit_mb="$malloc_mb" -timeout=10 -max_len=65536 -print_final_stats=1 \
       -artifact_prefix="$findings/" "$work" 2>&1 | tee "$build/$t.log" | grep -E "^(#[0-9]+ +DONE|stat::|==|SUMMARY|artifact_prefix|Test unit written)"; then
    :
  fi
  if ls "$findings"/* >/dev/null 2>&1; then
    echo "fuzz: $t found something: $(ls "$findings")" >&2
    status=1
  fi
done
exit $status
