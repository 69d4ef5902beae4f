#!/bin/sh
# Runs in the guest, chrooted into the host root (overlay: writes go to a
# tmpfs and vanish). Creates the RDMA devices, checks them, runs the command.
# Writes /run/vm/status: "rc N" once the command has run; nothing otherwise
# (the init then reports a harness failure). Settings from /run/vm/config.
set -u
. /run/vm/config          # NETNS2=0|1, DEADLINE_S, command in /run/vm/cmd
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp
fail() { echo "vm-guest: FAIL: $*"; exit 1; }
at() { echo "vm-guest: $* at uptime $(cut -d' ' -f1 /proc/uptime) s"; }

# Poll until the port of $1 is ACTIVE, for at most DEADLINE_S seconds.
wait_active() {
  f="/sys/class/infiniband/$1/ports/1/state"
  end=$(( $(cut -d. -f1 /proc/uptime) + DEADLINE_S ))
  while :; do
    if [ -r "$f" ] && grep -q ACTIVE "$f"; then return 0; fi
    [ "$(cut -d. -f1 /proc/uptime)" -lt "$end" ] || return 1
    sleep 0.05
  done
}

ip link set lo up
# dummy.ko creates dummy0 when loaded; create it only if missing.
ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy || fail "ip link add dummy0"
ip addr add 192.0.2.1/24 dev dummy0 || fail "address on dummy0"
ip link set dummy0 up || fail "dummy0 up"
rdma link add rxe0 type rxe netdev dummy0 || fail "rdma link add rxe0 type rxe netdev dummy0"
wait_active rxe0 || fail "rxe0 missing or its port not ACTIVE within ${DEADLINE_S}s"
at "rxe0 ACTIVE"

if [ "$NETNS2" = 1 ]; then
  # Two namespaces joined by a veth pair (TCP between them) ...
  ip netns add ns1 || fail "ip netns add ns1"
  ip netns add ns2 || fail "ip netns add ns2"
  ip link add veth1 netns ns1 type veth peer name veth2 netns ns2 || fail "veth pair veth1/veth2"
  ip -n ns1 link set lo up; ip -n ns2 link set lo up
  ip -n ns1 addr add 192.0.2.11/24 dev veth1 || fail "address on veth1"
  ip -n ns2 addr add 192.0.2.12/24 dev veth2 || fail "address on veth2"
  ip -n ns1 link set veth1 up || fail "veth1 up"
  ip -n ns2 link set veth2 up || fail "veth2 up"
  at "ns1/ns2 ready"
  # ... and the RDMA pair. 6.1's rxe has its UDP socket and routes only in the
  # initial namespace, so rxe1/rxe2 sit on a second veth pair there (rv1/rv2;
  # the rdma devices are visible from every namespace). Policy routing makes
  # traffic between their addresses cross the veth instead of lo: a rule per
  # direction for locally sent packets (iif lo) ahead of the local table.
  ip link add rv1 type veth peer name rv2 || fail "veth pair rv1/rv2"
  ip addr add 198.51.100.1/32 dev rv1 || fail "address on rv1"
  ip addr add 198.51.100.2/32 dev rv2 || fail "address on rv2"
  sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
    net.ipv4.conf.rv1.rp_filter=0 net.ipv4.conf.rv2.rp_filter=0 \
    net.ipv4.conf.all.accept_local=1 net.ipv4.conf.rv1.accept_local=1 \
    net.ipv4.conf.rv2.accept_local=1 || fail "sysctl rp_filter/accept_local on rv1/rv2"
  # One ip process for all of it (each exec costs 0.2-0.3 s under TCG).
  ip -batch - <<'IP' || fail "routing rv1 <-> rv2 (ip -batch above)"
link set rv1 up
link set rv2 up
route add 198.51.100.2/32 dev rv1 table 101
route add 198.51.100.1/32 dev rv2 table 102
rule add pref 10 iif lo from 198.51.100.1 to 198.51.100.2 lookup 101
rule add pref 10 iif lo from 198.51.100.2 to 198.51.100.1 lookup 102
rule add pref 100 lookup local
rule del pref 0 lookup local
IP
  at "rv1/rv2 routed"
  rdma link add rxe1 type rxe netdev rv1 || fail "rdma link add rxe1 type rxe netdev rv1"
  rdma link add rxe2 type rxe netdev rv2 || fail "rdma link add rxe2 type rxe netdev rv2"
  wait_active rxe1 || fail "rxe1 port not ACTIVE within ${DEADLINE_S}s"
  wait_active rxe2 || fail "rxe2 port not ACTIVE within ${DEADLINE_S}s"
fi
rdma link show
echo "vm-guest: devices ready at uptime $(cut -d' ' -f1 /proc/uptime) s; running the command"
echo "==== vm command output ===="
cd "$GUEST_CWD" 2>/dev/null || cd /
bash /run/vm/cmd </dev/null
rc=$?
echo "==== vm command exited $rc ===="
echo "rc $rc" > /run/vm/status
exit 0
