#!/usr/bin/env bash
# Installs dependencies, builds and runs every test:
#   1. build/      RelWithDebInfo, tests + benchmarks, ctest; rnic/mlx5 with
#                  -Werror; hyperloop-probe expecting "no mlx5 device" (exit 2)
#   2. build-asan/ AddressSanitizer + UndefinedBehaviorSanitizer, ctest
#   2b. build-tsan/ ThreadSanitizer, the threaded suites only (see below)
#   3. the demo (the main job) under the sanitizers, and a short smoke run of
#      the benchmark binary and of the replicated RocksDB's side-by-side script
#   4. install check: cmake --install, then a consumer project that does
#      find_package(hyperloop) and links hyperloop::txn
#   5. Soft-RoCE VM (tests/vm): Debian's stock kernel under qemu with rxe0;
#      the smoke check (ibv_devinfo, RC ping-pongs over rxe0 and ns1/rxe1 to
#      ns2/rxe2, status_test), then our suites on the kernel's rxe devices
#      (tests/vm/suites.sh: verbs_test, conformance_test on soft and rxe0,
#      primitives/txn/daemons on rxe0, daemons in two namespaces, hyperloop-perf;
#      verbs_test and conformance_test of build-asan/ on rxe0 too)
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

# Issue 15: rnic/mlx5 is built above with -Werror against Debian's rdma-core
# 44 (its target sets it), its encoder tests ran in ctest (mlx5_prm_test);
# here the probe must say that this machine has no ConnectX, and exit 2.
section "hyperloop-probe without an mlx5 device (expects exit 2, \"no mlx5 device found\")"
test -e build/rnic/libhyperloop_rnic_mlx5.a || { echo "rnic/mlx5 was not built (libmlx5 not found?)" >&2; false; }
probe_rc=0
build/tools/hyperloop-probe > build/probe.out 2>&1 || probe_rc=$?
cat build/probe.out
[[ "$probe_rc" == 2 ]] || { echo "hyperloop-probe exited $probe_rc, not 2" >&2; false; }
grep -q "no mlx5 device found" build/probe.out

section "configure build-asan/ (address,undefined; no benchmarks)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHYPERLOOP_BUILD_TESTS=ON -DHYPERLOOP_BUILD_BENCHMARKS=OFF \
  -DHYPERLOOP_SANITIZE=address,undefined

section "build build-asan/"
cmake --build build-asan -j "$JOBS"

section "ctest build-asan/"
ctest --test-dir build-asan --output-on-failure --no-tests=error -j "$JOBS"

# ---- ThreadSanitizer: the suites whose code runs on several threads ----
# soft_rnic_test (SingleThread and ThreadPerNic executors), primitives_test
# (both forwarding modes, replica agent threads, client threads sharing a
# group), txn_test (concurrent bank transfers with a reader, disjoint stripes,
# 100 tenants, recovery), daemon_test (daemons built with TSan too; they
# inherit TSAN_OPTIONS), wire_test (the TCP wire's epoll loop against
# executor threads, 7 s) and control_test (the control server's epoll loop,
# daemons, log sinks, 8 s). The other suites drive NICs from one thread
# (ManualExecutor) or none, where TSan finds nothing and only costs time,
# except soak_test, a long soak (100,000 connections) left to the normal build.
# Whole suites, no filter: 1.5 to 3 min to build and under 3 min to run on 2 cores
# (txn_test 90 s of it, HundredTenants 45 s; --gtest_filter=-*HundredTenants*
# is the first thing to drop if the stage outgrows 10 min). Reports go to
# files (log_path) so a report from a daemon fails the stage as well;
# halt_on_error=1 stops a process at its first report. No suppressions: the
# soft RNIC's DMA is atomic by design (engine.cc, dma_from_host/dma_to_host).
TSAN_SUITES=(soft_rnic_test primitives_test txn_test daemon_test wire_test control_test)

section "configure build-tsan/ (thread; no benchmarks)"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DHYPERLOOP_BUILD_TESTS=ON -DHYPERLOOP_BUILD_BENCHMARKS=OFF \
  -DHYPERLOOP_SANITIZE=thread

section "build build-tsan/ (${TSAN_SUITES[*]}, hyperloop-replica)"
cmake --build build-tsan -j "$JOBS" --target "${TSAN_SUITES[@]}" hyperloop-replica

section "ThreadSanitizer runs (build-tsan/tests: ${TSAN_SUITES[*]})"
rm -rf build-tsan/tsan-reports
mkdir -p build-tsan/tsan-reports
tsan_reports() {
  if compgen -G 'build-tsan/tsan-reports/report.*' >/dev/null; then
    cat build-tsan/tsan-reports/report.* >&2
    return 1
  fi
}
for t in "${TSAN_SUITES[@]}"; do
  TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:log_path=$PWD/build-tsan/tsan-reports/report" \
    "build-tsan/tests/$t" --gtest_brief=1 || { tsan_reports || true; false; }
  tsan_reports
done

section "demos under ASan/UBSan (build-asan/examples)"
build-asan/examples/hyperloop-demo 200
build-asan/examples/hyperloop-remote-patch-demo
build-asan/examples/hyperloop-txn-demo 200

section "benchmark smoke runs (build/bench/soft_rnic_bench, txn_bench latency cases)"
build/bench/soft_rnic_bench --benchmark_min_time=0.01
build/bench/txn_bench --benchmark_filter=BM_CommitLatency --benchmark_min_time=0.01

section "figures pipeline, smoke budgets (bench/plots.sh: benchmarks' JSON to PNGs)"
bash bench/plots.sh build build/figures-smoke --smoke

section "replicated RocksDB side by side, smoke sizes (bench/rocksdb_side_by_side.sh)"
if [[ -e build/examples/rocksdb/libhyperloop_walfs.so ]]; then
  bash bench/rocksdb_side_by_side.sh build --smoke
else
  echo "RocksDB was not found: examples/rocksdb is not built" >&2
  false
fi

section "install check"
TMP="$(mktemp -d)"
cmake --install build --prefix "$TMP/prefix"
cmake -S tests/install_consumer -B "$TMP/consumer-build" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_PREFIX_PATH="$TMP/prefix"
cmake --build "$TMP/consumer-build" -j "$JOBS"
"$TMP/consumer-build/hyperloop_install_consumer"

section "Soft-RoCE VM (tests/vm)"
bash tests/vm/prepare.sh
bash tests/vm/smoke.sh build/tests/status_test
bash tests/vm/suites.sh build build-asan

section "all checks passed"
