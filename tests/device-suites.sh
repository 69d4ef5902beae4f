#!/usr/bin/env bash
# tests/device-suites.sh DEVICE [--netns | --offload] [BUILD_DIR]
#
# Runs the device-capable test subsets with HYPERLOOP_TEST_DEVICE=DEVICE
# (tests/device_test_util.h): every cluster, client and daemon of those tests
# opens DEVICE with rnic::open_device and checks that it got that device, so
# nothing here can pass on another one. Without --netns, these three, in this
# order:
#
#   primitives   BUILD/tests/primitives_test --gtest_filter='OnDevice/*'
#                gWRITE, gCAS, gMEMCPY, gFLUSH in kCpuForward against a model,
#                pipelined, several client threads (prim_device_test.cc)
#   txn          BUILD/tests/txn_test --gtest_filter='OnDevice/*'
#                concurrent bank transfers with the conservation check, and
#                concurrent commits on disjoint stripes (TxnThreads)
#   daemons      BUILD/tests/daemon_test --gtest_filter='OnDevice/*'
#                hyperloop-replica processes with `device DEVICE` and the
#                client in this process: every primitive on three daemons, bank
#                transfers (one and two threads), SIGKILL of a daemon and
#                recover(), a client gone with unapplied commits, a failed
#                recover()
# With --offload, the same three in kOffload (OnDeviceOffload/*: the same
# tests over a chain whose replica NICs forward by themselves), for a device
# with cross-channel: soft, or rdma_rxe patched by
# driver-patches/linux-6.1-rxe-cross-channel.
# With --netns, only this one (the client on DEVICE):
#   netns        BUILD/tests/daemon_test --gtest_filter='TwoNamespacesTest.*'
#                run inside network namespace $HYPERLOOP_NETNS_CLIENT_NETNS
#                (default ns1; '-': here): Store::connect over two daemons,
#                one per entry of $HYPERLOOP_NETNS_DAEMONS (default
#                ns1/192.0.2.11/rxe1,ns2/192.0.2.12/rxe2: NETNS/ADDRESS/DEVICE,
#                the Soft-RoCE VM's two namespaces joined by veth), the client
#                on DEVICE: bank transfers, SIGKILL of one daemon, restart,
#                recover(). On a machine without them, e.g.:
#                  HYPERLOOP_NETNS_CLIENT_NETNS=- \
#                  HYPERLOOP_NETNS_DAEMONS=-/127.0.0.11/soft,-/127.0.0.12/soft \
#                  tests/device-suites.sh soft --netns
#
# BUILD_DIR: the argument, else $BUILD, else build. Prints each suite's gtest
# summary lines; exits non-zero at the first failing suite, naming it (and
# its log, kept in $TMPDIR). Also a failure: a suite that selected no test, or
# whose output lacks "device under test: DEVICE".
# HYPERLOOP_DAEMON_TEST_WATCHDOG_S (default 90) bounds each daemon test (raise
# it on a slow machine, e.g. a TCG VM).
set -uo pipefail

usage() {
  echo "usage: $0 DEVICE [--netns | --offload] [BUILD_DIR]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
DEVICE=$1
shift
NETNS=0
SUITE=OnDevice
BUILD_DIR=${BUILD:-build}
for a in "$@"; do
  case $a in
    --netns) NETNS=1 ;;
    --offload) SUITE=OnDeviceOffload ;;
    -*) usage ;;
    *) BUILD_DIR=$a ;;
  esac
done
[[ -n $DEVICE ]] || usage
for bin in primitives_test txn_test daemon_test; do
  [[ -x $BUILD_DIR/tests/$bin ]] || { echo "device-suites: no $BUILD_DIR/tests/$bin (build it first)" >&2; exit 2; }
done

export HYPERLOOP_TEST_DEVICE=$DEVICE
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/device-suites.XXXXXX")

# run NAME PREFIX... -- BINARY FILTER
run() {
  local name=$1
  shift
  local prefix=()
  while [[ $1 != -- ]]; do prefix+=("$1"); shift; done
  shift
  local bin=$1 filter=$2 log=$LOGS/$1.$name.log
  echo "== $name: ${prefix[*]:+${prefix[*]} }$bin --gtest_filter='$filter' (HYPERLOOP_TEST_DEVICE=$DEVICE)"
  "${prefix[@]}" "$BUILD_DIR/tests/$bin" --gtest_filter="$filter" --gtest_color=no >"$log" 2>&1
  local rc=$?
  grep -E '^\[==========\] [0-9]+ tests? from .* ran|^\[  PASSED  \] |^\[  FAILED  \] [0-9]+ tests?,|^\[  SKIPPED \] [0-9]+ tests?,' \
    "$log" | sed 's/^/   /'
  if [[ $rc -ne 0 ]]; then
    echo "device-suites: FAILED: $name ($bin --gtest_filter='$filter', exit $rc); log: $log" >&2
    grep -E -A4 'Failure$|HANG' "$log" | head -40 >&2
    exit 1
  fi
  if grep -qE '^\[==========\] 0 tests' "$log"; then
    echo "device-suites: FAILED: $name selected no test ($bin --gtest_filter='$filter'); log: $log" >&2
    exit 1
  fi
  if grep -qE '^\[  SKIPPED \]' "$log"; then
    echo "device-suites: FAILED: $name skipped tests; log: $log" >&2
    exit 1
  fi
  if ! grep -qF "device under test: $DEVICE " "$log"; then
    echo "device-suites: FAILED: $name never said 'device under test: $DEVICE'; log: $log" >&2
    exit 1
  fi
}

if [[ $NETNS -eq 0 ]]; then
  run primitives -- primitives_test "$SUITE/*"
  run txn -- txn_test "$SUITE/*"
  run daemons -- daemon_test "$SUITE/*"
else
  export HYPERLOOP_NETNS_DAEMONS=${HYPERLOOP_NETNS_DAEMONS:-ns1/192.0.2.11/rxe1,ns2/192.0.2.12/rxe2}
  client_ns=${HYPERLOOP_NETNS_CLIENT_NETNS:-ns1}
  prefix=()
  [[ $client_ns == - ]] || prefix=(ip netns exec "$client_ns")
  echo "   HYPERLOOP_NETNS_DAEMONS=$HYPERLOOP_NETNS_DAEMONS, client in ${client_ns/#-/this namespace}"
  run netns "${prefix[@]}" -- daemon_test 'TwoNamespacesTest.*'
fi
echo "device-suites: all passed on $DEVICE (logs: $LOGS)"
