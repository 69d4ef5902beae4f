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
exec "$here/run.sh" --netns2 --timeout "${VM_SUITES_TIMEOUT:-1500}" -- "$here/suites-guest.sh" "$build" $asan
