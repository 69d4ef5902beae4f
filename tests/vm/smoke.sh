#!/usr/bin/env bash
# End-to-end check of the VM harness: boots the VM once and runs
# smoke-guest.sh in it with --netns2 (ibv_devices, ibv_devinfo -d rxe0
# PORT_ACTIVE, an RC ping-pong over rxe0, one from ns1/rxe1 to ns2/rxe2, then
# our test binaries).
#   tests/vm/smoke.sh [TEST_BINARY...]   default: build/tests/status_test
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
[[ $# -gt 0 ]] || set -- "$repo/build/tests/status_test"
bins=()
for b in "$@"; do
  [[ -x "$b" ]] || { echo "vm-smoke: ERROR: test binary not found or not executable: $b (build it first)" >&2; exit 125; }
  bins+=("$(realpath "$b")")
done
exec "$here/run.sh" --netns2 --timeout "${VM_SMOKE_TIMEOUT:-240}" -- "$here/smoke-guest.sh" "${bins[@]}"
