#!/usr/bin/env bash
# Installs dependencies, builds and runs every test:
#   1. build/      RelWithDebInfo, tests + benchmarks, ctest
#   2. build-asan/ AddressSanitizer + UndefinedBehaviorSanitizer, ctest
#   3. the demo (the main job) under the sanitizers, and a short smoke run of
#      the benchmark binary
#   4. install check: cmake --install, then a consumer project that does
#      find_package(hyperloop) and links hyperloop::txn
# Fresh Debian 12, as root: bash .ci/test.sh   (exits non-zero on any failure)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS="${JOBS:-2}"
# For the sanitizer build's binaries (others ignore them).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
START=$SECONDS
section() { printf '\n==== [%4ds] %s ====\n' "$((SECONDS - START))" "$*"; }
TMP=""
trap 'printf "\n==== FAILED: \"%s\" (line %d, exit %d) after %ds ====\n" "$BASH_COMMAND" "$LINENO" "$?" "$((SECONDS - START))" >&2' ERR
trap 'if [[ -n "$TMP" ]]; then rm -rf "$TMP"; fi' EXIT

section "install dependencies"
bash .ci/install-deps.sh

section "configure build/ (RelWithDebInfo, tests + benchmarks)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHYPERLOOP_BUILD_TESTS=ON -DHYPERLOOP_BUILD_BENCHMARKS=ON

section "build build/"
cmake --build build -j "$JOBS"

section "ctest build/"
ctest --test-dir build --output-on-failure --no-tests=error -j "$JOBS"

section "configure build-asan/ (address,undefined; no benchmarks)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHYPERLOOP_BUILD_TESTS=ON -DHYPERLOOP_BUILD_BENCHMARKS=OFF \
  -DHYPERLOOP_SANITIZE=address,undefined

section "build build-asan/"
cmake --build build-asan -j "$JOBS"

section "ctest build-asan/"
ctest --test-dir build-asan --output-on-failure --no-tests=error -j "$JOBS"

section "demos under ASan/UBSan (build-asan/examples)"
build-asan/examples/hyperloop-demo 200
build-asan/examples/hyperloop-remote-patch-demo
build-asan/examples/hyperloop-txn-demo 200

section "benchmark smoke runs (build/bench/soft_rnic_bench, txn_bench latency cases)"
build/bench/soft_rnic_bench --benchmark_min_time=0.01
build/bench/txn_bench --benchmark_filter=BM_CommitLatency --benchmark_min_time=0.01

section "install check"
TMP="$(mktemp -d)"
cmake --install build --prefix "$TMP/prefix"
cmake -S tests/install_consumer -B "$TMP/consumer-build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$TMP/prefix"
cmake --build "$TMP/consumer-build" -j "$JOBS"
"$TMP/consumer-build/hyperloop_install_consumer"

section "all checks passed"
