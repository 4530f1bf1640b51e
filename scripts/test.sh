#!/usr/bin/env bash
# Installs what is missing, then builds and runs qkit's whole test suite in the three
# configurations CI runs (.ci/run calls this script and nothing else):
#   normal    BUILD_DIR (default build/): g++ Release, everything on (ONNX), tests built with
#             qkit::optimize (-march=native -ffp-contract=off); every ctest.
#   sanitize  BUILD_DIR-sanitize: the tests and examples again, with clang (a second compiler
#             in CI) and AddressSanitizer and UndefinedBehaviorSanitizer (-O1 -g1, any UB report
#             fatal), built for baseline x86-64 (QKIT_TESTS_NATIVE=OFF), so this run also
#             proves the kernels users get without qkit::optimize; the Fashion-MNIST suite runs
#             there on 500 test images and without its accuracy studies (compiled out;
#             SANITIZE_EXCLUDE, a ctest -E regex, leaves out more).
#   fuzz      BUILD_DIR-fuzz: the libFuzzer targets (clang); each replays its committed corpus
#             and fuzzes for 20 seconds (fuzz/CMakeLists.txt).
# JOBS (default: all cores) sets build and ctest parallelism; PARTS (default "normal sanitize
# fuzz") picks configurations. Extra arguments go to every ctest call. Prints the time of
# each step at the end. With JOBS > 1, ctest runs JOBS tests at once, each on one qkit thread
# (QKIT_NUM_THREADS=1 unless set): two tests of two threads each on two cores took 1.5 times as
# long as two of one thread (docs/reliability.md, "CI time").
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$here/build}
jobs=${JOBS:-$(nproc)}
parts=${PARTS:-normal sanitize fuzz}

if (( jobs > 1 )); then export QKIT_NUM_THREADS=${QKIT_NUM_THREADS:-1}; fi

times=()
step() {  # step NAME COMMAND...: runs it and records how long it took
  local name=$1 t0=$SECONDS
  shift
  "$@"
  times+=("$(printf '%-18s %5d s' "$name" $((SECONDS - t0)))")
  echo "test.sh: $name took $((SECONDS - t0)) s"
}
report() {
  echo "test.sh: time per step (JOBS=$jobs)"
  printf '  %s\n' "${times[@]}"
}
trap report EXIT
has() { [[ " $parts " == *" $1 "* ]]; }
# New build folders use Ninja: it starts targets in the order CMake defines them (the longest
# compiles first, CMakeLists.txt), where Make's recursive build reached the ptq suite, the
# longest, halfway through. A folder configured before keeps its generator (CMake refuses to
# switch one).
generator() { if [[ -f $1/CMakeCache.txt ]]; then :; else echo -G Ninja; fi; }

step deps "$here/scripts/deps.sh"

if has normal; then
  # shellcheck disable=SC2046  # generator prints nothing or two words
  step normal-configure cmake $(generator "$build") -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release -DQKIT_WITH_ONNX=ON
  step normal-build cmake --build "$build" -j "$jobs"
  step normal-ctest ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@"
fi

if has sanitize; then
  san=$build-sanitize
  # clang: its sanitizers are the reference implementation, the code gets a second compiler in
  # CI, and it compiled this configuration in 0.68 times GCC's CPU time (docs/reliability.md,
  # "CI time"). -O1 keeps xtensor's expression templates fast enough to run every suite; -g1
  # (line tables only) still gives sanitizer reports file:line stacks and compiles 20% faster
  # than -g.
  # Benchmarks are not tests and stay out. QKIT_FASHION_TEST_IMAGES: tests/fashion/fixtures.cmake.
  # shellcheck disable=SC2046
  step sanitize-configure cmake $(generator "$san") -S "$here" -B "$san" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" -DQKIT_SANITIZE=ON -DQKIT_TESTS_NATIVE=OFF \
    -DQKIT_WITH_ONNX=ON -DQKIT_BUILD_BENCHMARKS=OFF -DQKIT_FASHION_TEST_IMAGES=500 \
    -DQKIT_FASHION_ACCURACY_STUDIES=OFF
  step sanitize-build cmake --build "$san" -j "$jobs"
  # Leaks are reported too (detect_leaks); UBSan prints the stack of what it stops at.
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
  # The Fashion-MNIST suite is built there without its accuracy studies
  # (QKIT_FASHION_ACCURACY_STUDIES=OFF, tests/fashion/fixtures.cmake: PTQ, AdaRound, Sequential
  # MSE, AutoQuant, AMP, QAT W4A8/W8A8, QuantAnalyzer, the debugging workflow, one epoch of
  # training, the precision sweep, the float-mode ONNX Runtime comparison): each costs minutes
  # under AddressSanitizer and tests numbers the normal build already asserts, not memory
  # safety. Its QuantSim-equals-FP32 test, the analytical bias correction, a few steps of range
  # learning on the real model (the QAT W4A4 test, reduced there) and the integer target mode
  # still run, as do the fashion tests of the io and nn suites. SANITIZE_EXCLUDE (a ctest -E
  # regex) leaves out more.
  exclude=()
  if [[ -n ${SANITIZE_EXCLUDE:-} ]]; then exclude=(-E "$SANITIZE_EXCLUDE"); fi
  step sanitize-ctest ctest --test-dir "$san" --output-on-failure -j "$jobs" "${exclude[@]}" "$@"
fi

if has fuzz; then
  fz=$build-fuzz
  step fuzz-configure cmake -S "$here/fuzz" -B "$fz" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++
  step fuzz-build cmake --build "$fz" -j "$jobs"
  step fuzz-ctest ctest --test-dir "$fz" --output-on-failure -j "$jobs" "$@"
fi
