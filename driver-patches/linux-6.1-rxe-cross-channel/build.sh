#!/usr/bin/env bash
# Builds the patched rdma_rxe.ko for the VM's kernel (tests/vm/prepare.sh's
# kernel.env: KPKG_VERSION, KVER), out of tree, from Debian's packages of
# exactly that version:
#   linux-headers-$KVER   installed with apt-get (pulls -common, linux-kbuild-6.1
#                         and the compiler); the host's own kernel is untouched
#   linux-source-6.1      $KPKG_VERSION, apt-get download, only
#                         drivers/infiniband/sw/rxe extracted
# then applies every *.patch here (patch -p1, after a --dry-run) and runs
#   make -C /usr/src/linux-headers-$KVER M=<rxe dir> CONFIG_RDMA_RXE=m modules
#
#   driver-patches/linux-6.1-rxe-cross-channel/build.sh [OUT_DIR]
# OUT_DIR (default build/vm/rxe-cc) receives rdma_rxe.ko (debug info
# stripped) and build.env (the versions it was built from). Idempotent: with
# the same patches and version the module is reused.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CACHE="${HYPERLOOP_VM_CACHE:-$repo/build/vm}"
OUT="$(realpath -m "${1:-$CACHE/rxe-cc}")"
log() { echo "rxe-cc-build: $*" >&2; }
die() { echo "rxe-cc-build: ERROR: $*" >&2; exit 1; }

[[ -f "$CACHE/kernel.env" ]] || bash "$repo/tests/vm/prepare.sh" >&2 || die "tests/vm/prepare.sh failed"
# shellcheck disable=SC1091
. "$CACHE/kernel.env"
[[ -n "${KVER:-}" && -n "${KPKG_VERSION:-}" ]] || die "kernel.env lacks KVER/KPKG_VERSION"
case "$KVER" in 6.1.*) ;; *) die "this patch is for Linux 6.1; the VM kernel is $KVER" ;; esac

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n) || SUDO=(false)
fi
# apt-get's progress goes to stderr: stdout carries only the module's path
# (what tests/vm/suites.sh reads).
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 -o Acquire::Retries=3 \
    install -y --no-install-recommends "$@" </dev/null >&2
}
HDRS="/usr/src/linux-headers-$KVER"
want="linux-headers-$KVER=$KPKG_VERSION"
have="$(dpkg-query -W -f='${db:Status-Status} ${Version}' "linux-headers-$KVER" 2>/dev/null || true)"
if [[ "$have" != "installed $KPKG_VERSION" || ! -f "$HDRS/Makefile" ]] || ! command -v patch >/dev/null ||
   ! command -v make >/dev/null || ! command -v xz >/dev/null; then
  log "installing $want (and make, patch, xz-utils)"
  apt_install "$want" make patch xz-utils || {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 update >/dev/null \
      && apt_install "$want" make patch xz-utils; } || die "apt-get install $want failed"
fi

patches=("$here"/*.patch)
[[ -f "${patches[0]}" ]] || die "no *.patch in $here"
key="$( { echo "$KPKG_VERSION $KVER"; cat "${patches[@]}"; } | sha256sum | cut -c1-16)"
if [[ -f "$OUT/rdma_rxe.ko" && -f "$OUT/build.env" ]] && grep -qx "KEY=$key" "$OUT/build.env"; then
  log "up to date: $OUT/rdma_rxe.ko"
  echo "$OUT/rdma_rxe.ko"
  exit 0
fi

SRC="$CACHE/linux-source-6.1_$KPKG_VERSION"
if [[ ! -d "$SRC/drivers/infiniband/sw/rxe" ]]; then
  work="$(mktemp -d "$CACHE/src.XXXXXX")"
  trap 'rm -rf "$work"' EXIT
  log "downloading linux-source-6.1=$KPKG_VERSION (not installed)"
  ( cd "$work" && apt-get -o Acquire::Retries=3 download "linux-source-6.1=$KPKG_VERSION" >&2 ) \
    || die "apt-get download linux-source-6.1=$KPKG_VERSION failed"
  dpkg-deb --fsys-tarfile "$work"/linux-source-6.1_*.deb \
    | tar -x -C "$work" ./usr/src/linux-source-6.1.tar.xz
  rm -f "$work"/linux-source-6.1_*.deb
  tar -xJf "$work/usr/src/linux-source-6.1.tar.xz" -C "$work" \
    linux-source-6.1/drivers/infiniband/sw/rxe
  rm -rf "$SRC"; mkdir -p "$SRC/drivers/infiniband/sw"
  mv "$work/linux-source-6.1/drivers/infiniband/sw/rxe" "$SRC/drivers/infiniband/sw/rxe"
  rm -rf "$work"; trap - EXIT
fi

B="$OUT/tree"
rm -rf "$B"; mkdir -p "$B/drivers/infiniband/sw"
cp -r "$SRC/drivers/infiniband/sw/rxe" "$B/drivers/infiniband/sw/rxe"
for p in "${patches[@]}"; do
  ( cd "$B" && patch -p1 --dry-run --silent <"$p" >/dev/null ) || die "$(basename "$p") does not apply to linux-source-6.1 $KPKG_VERSION"
  ( cd "$B" && patch -p1 --silent <"$p" ) || die "applying $(basename "$p") failed"
  log "applied $(basename "$p")"
done
log "make -C $HDRS M=$B/drivers/infiniband/sw/rxe"
make -C "$HDRS" M="$B/drivers/infiniband/sw/rxe" CONFIG_RDMA_RXE=m -j"$(nproc)" modules >"$OUT/make.log" 2>&1 \
  || { tail -n 40 "$OUT/make.log" >&2; die "module build failed (log: $OUT/make.log)"; }
if grep -E "warning:|error:" "$OUT/make.log" | grep -v "Skipping BTF" >&2; then
  die "the module built with warnings (log: $OUT/make.log)"
fi
ko="$B/drivers/infiniband/sw/rxe/rdma_rxe.ko"
vm="$(modinfo -F vermagic "$ko" | awk '{print $1}')"
[[ "$vm" == "$KVER" ]] || die "vermagic $vm is not $KVER"
strip --strip-debug -o "$OUT/rdma_rxe.ko" "$ko"
{ echo "KEY=$key"; echo "KVER=$KVER"; echo "KPKG_VERSION=$KPKG_VERSION"; } >"$OUT/build.env"
log "built $OUT/rdma_rxe.ko for $KVER (linux-source-6.1 $KPKG_VERSION)"
echo "$OUT/rdma_rxe.ko"
