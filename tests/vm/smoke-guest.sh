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

# Data through the kernel's rxe: an RC ping-pong between two processes
# (GID 1 = the netdev's IPv4 address, RoCE v2). The client starts once the
# server's TCP port listens (polled, with a deadline).
#   pingpong LABEL SERVER_NETNS SERVER_DEV CLIENT_NETNS CLIENT_DEV SERVER_TCP_ADDR
# ('-' for the initial namespace)
inns() { local ns="$1"; shift; if [[ "$ns" == - ]]; then "$@"; else ip netns exec "$ns" "$@"; fi; }
pingpong() {
  local label="$1" sns="$2" sdev="$3" cns="$4" cdev="$5" addr="$6"
  echo "smoke: ibv_rc_pingpong $label"
  inns "$sns" timeout 60 ibv_rc_pingpong -d "$sdev" -g 1 -n 20 >/tmp/pp-server.log 2>&1 &
  local srv=$! end=$((SECONDS + 30))
  until inns "$sns" ss -ltn | grep -q ':18515 '; do
    kill -0 "$srv" 2>/dev/null || { cat /tmp/pp-server.log; fail "$label: ibv_rc_pingpong server exited early"; }
    [[ $SECONDS -lt $end ]] || fail "$label: ibv_rc_pingpong server not listening after 30 s"
    sleep 0.1
  done
  inns "$cns" timeout 60 ibv_rc_pingpong -d "$cdev" -g 1 -n 20 "$addr" || fail "$label: ibv_rc_pingpong client failed"
  wait "$srv" || { cat /tmp/pp-server.log; fail "$label: ibv_rc_pingpong server failed"; }
  cat /tmp/pp-server.log
}
pingpong "over rxe0 (two processes)" - rxe0 - rxe0 192.0.2.1
if [[ -e /sys/class/infiniband/rxe1 ]]; then    # run.sh --netns2
  tx0="$(cat /sys/class/net/rv1/statistics/tx_packets)"
  pingpong "from ns1 (rxe1) to ns2 (rxe2)" ns2 rxe2 ns1 rxe1 192.0.2.12
  tx1="$(cat /sys/class/net/rv1/statistics/tx_packets)"
  echo "smoke: rv1 sent $((tx1 - tx0)) packets"
  [[ $((tx1 - tx0)) -ge 20 ]] || fail "the rxe1->rxe2 traffic did not cross the rv1/rv2 veth"
fi

for t in "$@"; do
  echo "smoke: running $t"
  "$t" || fail "$t exited $?"
done
echo "smoke: all checks passed"
