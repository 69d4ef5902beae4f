#!/usr/bin/env bash
# Boots Debian's stock kernel under qemu (TCG) with Soft-RoCE and runs one
# command inside; exits with the command's exit status.
#
#   tests/vm/run.sh [--timeout SECONDS] [--netns2] [--rxe-module KO] [--log FILE] -- COMMAND [ARG...]
#
# COMMAND runs as root in the guest, in the host's file tree (the host's / over
# 9p, read-only, under a tmpfs overlay: writes succeed and vanish), in the
# current directory, with rxe0 on dummy0 (192.0.2.1/24) ready and ACTIVE.
# --netns2 adds namespaces ns1/ns2 joined by veth1 (ns1, 192.0.2.11/24) and
# veth2 (ns2, 192.0.2.12/24), and rxe1/rxe2 on the veth pair rv1/rv2
# (198.51.100.1 and .2, initial namespace: 6.1's rxe works only there).
# --rxe-module loads KO instead of the stock rdma_rxe.ko (a module built for
# this kernel, e.g. driver-patches/linux-6.1-rxe-cross-channel/build.sh).
# Exit status: COMMAND's; 124 if the VM ran past --timeout (qemu is killed;
# never a pass); 125 for any other harness failure (kernel panic, rxe0
# missing, module or mount failure, qemu error).
# The guest console goes to --log (default build/vm/console.log) and is
# printed on failure. Needs tests/vm/prepare.sh (run here when not yet done).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CACHE="${HYPERLOOP_VM_CACHE:-$repo/build/vm}"
TIMEOUT=300 NETNS2=0 RXE_KO="" LOG="$CACHE/console.log"
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2; exit 125; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --timeout) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || usage; TIMEOUT="$2"; shift 2 ;;
    --timeout=*) TIMEOUT="${1#*=}"; [[ "$TIMEOUT" =~ ^[0-9]+$ && "$TIMEOUT" -gt 0 ]] || usage; shift ;;
    --netns2) NETNS2=1; shift ;;
    --rxe-module) [[ $# -ge 2 ]] || usage; RXE_KO="$(realpath "$2")"; shift 2 ;;
    --log) [[ $# -ge 2 ]] || usage; LOG="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "vm: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ $# -gt 0 ]] || { echo "vm: no COMMAND after --" >&2; usage; }
say() { echo "vm: $*" >&2; }
die() { echo "vm: ERROR: $*" >&2; exit 125; }

[[ -f "$CACHE/kernel.env" ]] || bash "$here/prepare.sh" || die "tests/vm/prepare.sh failed"
# shellcheck disable=SC1091
. "$CACHE/kernel.env"
for f in "$VMLINUZ" "$MODDIR/order"; do [[ -f "$f" ]] || die "missing $f: run tests/vm/prepare.sh"; done
for t in qemu-system-x86_64 cpio gzip timeout; do
  command -v "$t" >/dev/null || die "$t not found: run tests/vm/prepare.sh"
done
BUSYBOX="$(command -v busybox || true)"
[[ -n "$BUSYBOX" ]] && ! ldd "$BUSYBOX" >/dev/null 2>&1 \
  || die "a static busybox is needed (package busybox-static): run tests/vm/prepare.sh"

# ---- initramfs, cached by the hash of everything that goes into it ----
if [[ -n "$RXE_KO" ]]; then
  [[ -f "$RXE_KO" ]] || die "--rxe-module: no such file $RXE_KO"
  grep -qx rdma_rxe.ko "$MODDIR/order" || die "rdma_rxe.ko is not among the guest modules"
fi
key="$( { sha256sum "$here/init" "$BUSYBOX" ${RXE_KO:+"$RXE_KO"}; echo "$MODDIR"; cat "$MODDIR/order"; } | sha256sum | cut -c1-16)"
INITRD="$CACHE/initramfs-${RXE_KO:+rxe-}$key.cpio.gz"
if [[ ! -f "$INITRD" ]]; then
  say "building initramfs ($INITRD)"
  stage="$(mktemp -d)"
  mkdir -p "$stage"/{bin,dev,proc,sys,modules}
  cp "$BUSYBOX" "$stage/bin/busybox"
  for a in $("$BUSYBOX" --list); do [[ "$a" == busybox ]] || ln -s busybox "$stage/bin/$a"; done
  install -m 0755 "$here/init" "$stage/init"
  cp "$MODDIR"/* "$stage/modules/"
  [[ -z "$RXE_KO" ]] || cp "$RXE_KO" "$stage/modules/rdma_rxe.ko"
  ( cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 ) >"$INITRD.tmp"
  rm -rf "$stage"
  mv "$INITRD.tmp" "$INITRD"
  # keep one stock and one --rxe-module initramfs
  if [[ -n "$RXE_KO" ]]; then pat='initramfs-rxe-*.cpio.gz'; else pat='initramfs-[0-9a-f]*.cpio.gz'; fi
  find "$CACHE" -maxdepth 1 -name "$pat" ! -name "$(basename "$INITRD")" -delete
fi

# ---- the run directory: 9p, read-write; command, config, status ----
mkdir -p "$CACHE/runs"
RUN="$(mktemp -d "$CACHE/runs/run.XXXXXX")"
trap 'rm -rf "$RUN"' EXIT
cp "$here/guest.sh" "$RUN/guest.sh"
printf '%q ' "$@" >"$RUN/cmd"; echo >>"$RUN/cmd"
{ echo "NETNS2=$NETNS2"; echo "DEADLINE_S=30"; printf 'GUEST_CWD=%q\n' "$PWD"; } >"$RUN/config"
mkdir -p "$(dirname "$LOG")"

say "booting $KPKG $KPKG_VERSION (TCG) for: $*"
t0=${EPOCHREALTIME/./}
set +e
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg,thread=multi,tb-size=256 -cpu max -m 512 -smp 2 \
  -nographic -no-reboot -nic none \
  -kernel "$VMLINUZ" -initrd "$INITRD" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$RUN",mount_tag=run,security_model=none \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  </dev/null >"$LOG" 2>&1
qrc=$?
set -e
us=$(( ${EPOCHREALTIME/./} - t0 )); wall="$((us / 1000000)).$(printf %01d $(( us / 100000 % 10 )))"
ready="$(sed -n 's/.*devices ready at uptime \([0-9.]*\) s.*/\1/p' "$LOG" | tail -n1)"
say "wall ${wall}s; guest ready (boot + modules + rxe0) at ${ready:-?}s uptime; console: $LOG"

failed() {
  echo "vm: FAILED: $*" >&2
  echo "---- guest console ($LOG) ----" >&2
  tr -d '\r' <"$LOG" >&2
  echo "---- end of guest console ----" >&2
}
status="$(cat "$RUN/status" 2>/dev/null || true)"
if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
  failed "timeout: the VM did not finish within ${TIMEOUT}s (qemu killed)"; exit 124
fi
if grep -q 'Kernel panic' "$LOG"; then failed "kernel panic in the guest"; exit 125; fi
if [[ $qrc -eq 17 ]]; then failed "harness failure inside the guest (see vm-init/vm-guest lines)"; exit 125; fi
if (( qrc % 2 == 1 && qrc >= 33 )); then
  if [[ $qrc -eq 255 ]]; then rc="${status#rc }"; else rc=$(( (qrc - 1) / 2 - 16 )); fi
  if [[ "$status" != "rc $rc" ]]; then
    failed "exit port said rc=$rc but the status file says '${status:-nothing}'"; exit 125
  fi
  sed -n '/==== vm command output ====/,/==== vm command exited/p' "$LOG" | tr -d '\r' | sed '1d;$d'
  if [[ $rc -ne 0 ]]; then failed "the command exited $rc"; fi
  exit "$rc"
fi
failed "qemu exited $qrc without a result from the guest (qemu error, or the guest rebooted/powered off)"
exit 125
