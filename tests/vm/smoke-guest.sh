#!/bin/bash
# Runs inside the VM (tests/vm/smoke.sh boots it): proves the verbs stack is
# real end to end, then runs the given test binaries. Exits non-zero on the
# first failed check, naming it.
set -euo pipefail
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

echo "smoke: ibv_devices"
devs="$(ibv_devices)" || fail "ibv_devices failed"
echo "$devs"
grep -qw rxe0 <<<"$devs" || fail "rxe0 not listed by ibv_devices"

echo "smoke: ibv_devinfo -d rxe0"
info="$(ibv_devinfo -d rxe0)" || fail "ibv_devinfo -d rxe0 failed"
echo "$info"
grep -q 'state:[[:space:]]*PORT_ACTIVE' <<<"$info" || fail "rxe0 port 1 is not PORT_ACTIVE"
grep -q 'link_layer:[[:space:]]*Ethernet' <<<"$info" || fail "rxe0 link layer is not Ethernet (RoCE)"

# Data through the kernel's rxe: an RC ping-pong between two processes over
# rxe0 (GID 1 = ::ffff:192.0.2.1, RoCE v2). The client starts once the
# server's TCP port listens (polled, with a deadline).
echo "smoke: ibv_rc_pingpong over rxe0"
timeout 60 ibv_rc_pingpong -d rxe0 -g 1 -n 20 >/tmp/pp-server.log 2>&1 &
srv=$!
end=$((SECONDS + 30))
until ss -ltn | grep -q ':18515 '; do
  kill -0 "$srv" 2>/dev/null || { cat /tmp/pp-server.log; fail "ibv_rc_pingpong server exited early"; }
  [[ $SECONDS -lt $end ]] || fail "ibv_rc_pingpong server not listening after 30 s"
  sleep 0.1
done
timeout 60 ibv_rc_pingpong -d rxe0 -g 1 -n 20 192.0.2.1 || fail "ibv_rc_pingpong client failed"
wait "$srv" || { cat /tmp/pp-server.log; fail "ibv_rc_pingpong server failed"; }
cat /tmp/pp-server.log

for t in "$@"; do
  echo "smoke: running $t"
  "$t" || fail "$t exited $?"
done
echo "smoke: all checks passed"
