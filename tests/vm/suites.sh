#!/usr/bin/env bash
# The Soft-RoCE suites: boots the VM once (--netns2) and runs, on the
# kernel's rxe devices, everything issue 11 asks to run there
# (tests/vm/suites-guest.sh):
#   verbs_test         the verbs backend's own contract, a chain and a store on rxe0
#   conformance_test   the device specification on soft and on rxe0: the same
#                      tests, the same count, all green
#   device suites      tests/device-suites.sh rxe0: primitives (kCpuForward),
#                      txn bank transfers, daemons with `device rxe0` and a
#                      SIGKILL recovery; then --netns: daemons in ns1/ns2 on
#                      rxe1/rxe2, the client in ns1
#   hyperloop-perf     all in one process on rxe0 (under TCG: not performance)
#   hyperloop-probe    --device rxe0: exit 0, rc-write and atomic-cas PASS, the
#                      cross-channel steps n/a (all PASS on the patched rxe)
#   patched rxe        a second boot with driver-patches/linux-6.1-rxe-cross-channel's
#                      rdma_rxe (built by its build.sh): verbs_test expecting
#                      cross-channel, conformance_test on soft and rxe0, the
#                      device suites on rxe0 (nothing regresses), then the
#                      same suites in kOffload (tests/device-suites.sh
#                      --offload, with the SIGSTOPped-daemons proof) and
#                      hyperloop-perf --mode offload
#
#   sanitizers         with ASAN_BUILD: verbs_test and conformance_test of
#                      that (ASan/UBSan) build on rxe0 as well
#
#   tests/vm/suites.sh [BUILD_DIR [ASAN_BUILD_DIR]]      default: build
# Exit status: 0 when every suite passed; the VM harness's otherwise
# (tests/vm/README.md: 124 timeout, 125 harness failure, else the first
# failing suite's).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build="$(realpath "${1:-$repo/build}")"
asan=""
if [[ $# -ge 2 ]]; then
  asan="$(realpath "$2")"
  for b in verbs_test conformance_test; do
    [[ -x "$asan/tests/$b" ]] || { echo "vm-suites: ERROR: $asan/tests/$b missing (build first)" >&2; exit 125; }
  done
fi
for b in verbs_test conformance_test primitives_test txn_test daemon_test; do
  [[ -x "$build/tests/$b" ]] || { echo "vm-suites: ERROR: $build/tests/$b missing (build first)" >&2; exit 125; }
done
[[ -x "$build/tools/hyperloop-perf" ]] || { echo "vm-suites: ERROR: $build/tools/hyperloop-perf missing (build first)" >&2; exit 125; }
[[ -x "$build/tools/hyperloop-probe" ]] || { echo "vm-suites: ERROR: $build/tools/hyperloop-probe missing (build first)" >&2; exit 125; }
echo "vm-suites: the stock rdma_rxe" >&2
"$here/run.sh" --netns2 --timeout "${VM_SUITES_TIMEOUT:-1500}" -- "$here/suites-guest.sh" "$build" $asan
# Second boot: the same kernel with the cross-channel rdma_rxe, built here
# from linux-source-6.1 and linux-headers of exactly its version.
echo "vm-suites: building the patched rdma_rxe (driver-patches/linux-6.1-rxe-cross-channel)" >&2
ko="$(bash "$repo/driver-patches/linux-6.1-rxe-cross-channel/build.sh")" || { echo "vm-suites: ERROR: the patched module did not build" >&2; exit 1; }
echo "vm-suites: the patched rdma_rxe ($ko)" >&2
exec "$here/run.sh" --rxe-module "$ko" --timeout "${VM_SUITES_TIMEOUT:-1500}" -- \
  env HYPERLOOP_RXE_CC=1 "$here/suites-guest.sh" "$build"
