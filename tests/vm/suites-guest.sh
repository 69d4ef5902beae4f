#!/bin/bash
# Runs inside the VM (tests/vm/suites.sh boots it): the suites on rxe0,
# rxe1 and rxe2, each summarised; exits non-zero at the first failure,
# naming it and printing the end of its log.
#   suites-guest.sh BUILD_DIR [ASAN_BUILD_DIR]
# With HYPERLOOP_RXE_CC=1 the guest runs the patched rdma_rxe of
# driver-patches/linux-6.1-rxe-cross-channel (tests/vm/suites.sh's second
# boot): its marker is checked, verbs_test expects cross-channel, and
# conformance_test (its CrossChannel suite now on rxe0's cross-channel, not
# its refusal) must pass on soft and rxe0 with the same count, the device
# suites (primitives in kCpuForward, txn, daemons) as on the stock one, then
# the same suites in kOffload (tests/device-suites.sh --offload) and
# hyperloop-perf --mode offload.
set -uo pipefail
BUILD="$1"
ASAN="${2:-}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOGS="$(mktemp -d /tmp/vm-suites.XXXXXX)"
SECONDS=0
fail() { echo "vm-suites: FAIL: $*" >&2; exit 1; }
step() { printf '\n==== vm-suites [%4ds] %s\n' "$SECONDS" "$*"; }
# gtest LABEL LOG ENV... -- BINARY ARGS...: runs it, prints its summary, fails on a failure
gtest() {
  local label="$1" log="$LOGS/$2.log"
  shift 2
  "$@" --gtest_color=no >"$log" 2>&1
  local rc=$?
  grep -E '^\[==========\] [0-9]+ tests? from .* ran|^\[  (PASSED|FAILED|SKIPPED) +\]' "$log" | sed 's/^/   /'
  if [[ $rc -ne 0 ]]; then
    grep -E '^\[  FAILED  \]|Failure' -A6 "$log" | head -60 >&2
    fail "$label (exit $rc; log $log)"
  fi
  if grep -q '^\[  SKIPPED \]' "$log"; then fail "$label skipped tests"; fi
}
ran() { grep -E '^\[==========\] [0-9]+ tests? from .* ran' "$1" | sed -E 's/^\[==========\] ([0-9]+) .*/\1/'; }

step "rdma devices"
ibv_devices || fail "ibv_devices"
CC="${HYPERLOOP_RXE_CC:-0}"
marker=/sys/module/rdma_rxe/parameters/cross_channel_abi
if [[ "$CC" == 1 ]]; then
  step "the patched rdma_rxe"
  abi="$(cat "$marker" 2>/dev/null)" || fail "no $marker: the stock module is loaded"
  echo "   cross_channel_abi $abi, taint $(cat /sys/module/rdma_rxe/taint)"
  [[ "$abi" == 1 ]] || fail "cross_channel_abi is $abi, not 1"
else
  [[ ! -e "$marker" ]] || fail "the stock stage runs a patched rdma_rxe"
fi

step "verbs_test on rxe0"
gtest "verbs_test on rxe0" verbs env HYPERLOOP_VERBS_DEVICE=rxe0 HYPERLOOP_EXPECT_CROSS_CHANNEL="$CC" "$BUILD/tests/verbs_test"

step "conformance_test on soft and on rxe0"
gtest "conformance_test on soft" conf-soft env HYPERLOOP_CONFORMANCE_DEVICES=soft "$BUILD/tests/conformance_test"
gtest "conformance_test on rxe0" conf-rxe0 env HYPERLOOP_CONFORMANCE_DEVICES=rxe0 "$BUILD/tests/conformance_test"
n_soft="$(ran "$LOGS/conf-soft.log")" n_rxe="$(ran "$LOGS/conf-rxe0.log")"
echo "   conformance: soft $n_soft tests, rxe0 $n_rxe tests"
[[ -n "$n_soft" && "$n_soft" -gt 0 && "$n_soft" == "$n_rxe" ]] || fail "conformance counts differ (soft $n_soft, rxe0 $n_rxe)"

if [[ -n "$ASAN" ]]; then
  step "verbs_test and conformance_test of the ASan/UBSan build on rxe0"
  gtest "verbs_test (ASan) on rxe0" verbs-asan env HYPERLOOP_VERBS_DEVICE=rxe0 "$ASAN/tests/verbs_test"
  gtest "conformance_test (ASan) on rxe0" conf-asan env HYPERLOOP_CONFORMANCE_DEVICES=rxe0 "$ASAN/tests/conformance_test"
fi

# hyperloop-probe (docs/probe.md): exit 0 means every step PASSed or was
# n/a. The stock rxe has atomics but no cross-channel: rc-write and
# atomic-cas PASS, the four cross-channel steps are n/a by its caps. The
# patched rxe runs them all (the conformance suite's WAIT and SEND_EN tests,
# the primitives' RECV-patching and offload chains, above and below).
step "hyperloop-probe --device rxe0"
"$BUILD/tools/hyperloop-probe" --device rxe0 --timeout-ms 30000 >"$LOGS/probe.log" 2>&1
rc=$?
grep -E '^(PASS|FAIL|n/a|summary)' "$LOGS/probe.log" | sed 's/^/   /'
[[ $rc -eq 0 ]] || { cat "$LOGS/probe.log" >&2; fail "hyperloop-probe --device rxe0 (exit $rc)"; }
if [[ "$CC" == 1 ]]; then
  probe_pass="rc-write atomic-cas wait send-enable recv-patch chain-offload" probe_na=""
else
  probe_pass="rc-write atomic-cas" probe_na="wait send-enable recv-patch chain-offload"
fi
for s in $probe_pass; do grep -q "^PASS $s " "$LOGS/probe.log" || fail "hyperloop-probe: $s did not PASS on rxe0"; done
for s in $probe_na; do grep -q "^n/a $s " "$LOGS/probe.log" || fail "hyperloop-probe: $s is not n/a on the stock rxe0"; done

step "device suites on rxe0: primitives, txn, daemons"
export HYPERLOOP_DAEMON_TEST_WATCHDOG_S="${HYPERLOOP_DAEMON_TEST_WATCHDOG_S:-600}"
bash "$repo/tests/device-suites.sh" rxe0 "$BUILD" || fail "device suites on rxe0"

if [[ "$CC" == 1 ]]; then
  step "device suites on rxe0 in kOffload: the replicas' rxe forwards by itself"
  bash "$repo/tests/device-suites.sh" rxe0 --offload "$BUILD" || fail "offload device suites on rxe0"
  step "hyperloop-perf --mode offload on rxe0 (TCG emulation: the timings are not performance)"
  "$BUILD/tools/hyperloop-perf" -d rxe0 --mode offload -r 3 -s 64 -n 200 >"$LOGS/perf-off.log" 2>&1 ||
    { cat "$LOGS/perf-off.log" >&2; fail "hyperloop-perf -d rxe0 --mode offload"; }
  cat "$LOGS/perf-off.log"
  step "all suites passed on the patched rdma_rxe"
  exit 0
fi

step "two namespaces: daemons in ns1 (rxe1) and ns2 (rxe2), the client in ns1"
bash "$repo/tests/device-suites.sh" rxe1 --netns "$BUILD" || fail "two-namespace daemon test"

step "hyperloop-perf on rxe0 (TCG emulation: the timings are not performance)"
"$BUILD/tools/hyperloop-perf" -d rxe0 --mode cpu-forward -r 3 -s 64 -n 200 >"$LOGS/perf.log" 2>&1 ||
  { cat "$LOGS/perf.log" >&2; fail "hyperloop-perf -d rxe0 --mode cpu-forward"; }
cat "$LOGS/perf.log"
if "$BUILD/tools/hyperloop-perf" -d rxe0 --mode offload -r 3 -n 10 >"$LOGS/perf-off.log" 2>&1; then
  fail "hyperloop-perf --mode offload on rxe0 succeeded (stock rxe has no cross-channel)"
fi
grep -qi "not supported\|NotSupported" "$LOGS/perf-off.log" || { cat "$LOGS/perf-off.log" >&2; fail "offload on rxe0 did not say why it cannot run"; }
echo "   offload on rxe0: refused as expected: $(grep -i -m1 'support' "$LOGS/perf-off.log")"
step "all suites passed"
