#!/usr/bin/env bash
# Prepares the Soft-RoCE VM harness (tests/vm/run.sh):
#   1. installs the host packages it needs (apt-get; apt-get update first), and
#   2. fetches Debian's stock kernel for the guest WITHOUT installing it on the
#      host: linux-image-amd64 is resolved to its real package (e.g.
#      linux-image-6.1.0-57-amd64), downloaded with apt-get download, unpacked
#      with dpkg-deb -x into the cache, depmod'ed there, and the modules the
#      guest needs are picked with their dependencies from modules.dep.
# Idempotent; a second run with everything in place only re-resolves the
# kernel package name (no network) and prints the prepared kernel.
# Cache: $HYPERLOOP_VM_CACHE, default <repo>/build/vm (gitignored).
# Output: $CACHE/kernel.env (KPKG, KPKG_VERSION, KVER, VMLINUZ, MODDIR).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
CACHE="${HYPERLOOP_VM_CACHE:-$repo/build/vm}"
log() { echo "vm-prepare: $*" >&2; }
die() { echo "vm-prepare: ERROR: $*" >&2; exit 1; }

# Host tools, by package: qemu-system-x86 (qemu-system-x86_64), busybox-static
# (the initramfs's only binary), kmod (depmod/modprobe -d for modules.dep),
# cpio (initramfs archive), rdma-core + ibverbs-providers (librxe, run over 9p
# in the guest), ibverbs-utils (ibv_devices, ibv_devinfo), iproute2 (ip, rdma).
PACKAGES=(qemu-system-x86 busybox-static kmod cpio rdma-core ibverbs-providers
          ibverbs-utils iproute2)
SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 && SUDO=(sudo -n) || SUDO=(false)
fi
missing=()
for p in "${PACKAGES[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" == installed ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing: ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 -o Acquire::Retries=3 update \
    || die "apt-get update failed (needed to install: ${missing[*]})"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 -o Acquire::Retries=3 \
    install -y --no-install-recommends "${missing[@]}" </dev/null \
    || die "apt-get install failed for: ${missing[*]}"
fi

# Resolve the metapackage to the real kernel package. A fresh machine may have
# no package lists at all: update once and retry.
resolve() {
  apt-cache depends --no-recommends --no-suggests linux-image-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG="$(resolve || true)"
if [[ -z "$KPKG" ]]; then
  log "linux-image-amd64 unknown to apt-cache; running apt-get update"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 update >/dev/null \
    || die "apt-get update failed"
  KPKG="$(resolve || true)"
  [[ -n "$KPKG" ]] || die "cannot resolve linux-image-amd64 to a kernel package (apt-cache depends linux-image-amd64)"
fi
KPKG_VERSION="$(apt-cache show --no-all-versions "$KPKG" | awk '/^Version:/ { print $2; exit }')"
[[ -n "$KPKG_VERSION" ]] || die "no version for $KPKG in apt-cache"

kdir="$CACHE/kernel/${KPKG}_${KPKG_VERSION}"
root="$kdir/root"
if [[ ! -f "$kdir/.done" ]]; then
  mkdir -p "$kdir/deb"
  rm -rf "$root"
  log "downloading $KPKG=$KPKG_VERSION (not installed on the host)"
  ( cd "$kdir/deb" && rm -f ./*.deb && apt-get -o Acquire::Retries=3 download "$KPKG=$KPKG_VERSION" ) \
    || die "apt-get download $KPKG=$KPKG_VERSION failed"
  deb="$(ls "$kdir"/deb/*.deb)"
  log "unpacking $(basename "$deb")"
  dpkg-deb -x "$deb" "$root"
  rm -f "$deb"     # 68 MB; the unpacked tree is what is used
fi
KVER="$(ls "$root/lib/modules" | head -n1)"
[[ -n "$KVER" && -d "$root/lib/modules/$KVER" ]] || die "no lib/modules/<version> in $root"
VMLINUZ="$root/boot/vmlinuz-$KVER"
[[ -f "$VMLINUZ" ]] || die "kernel image missing: $VMLINUZ"
if [[ ! -f "$kdir/.done" ]]; then
  depmod -b "$root" "$KVER" || die "depmod -b $root $KVER failed"
  touch "$kdir/.done"
fi

# The guest's modules, each with its dependencies in load order (modules.dep,
# through modprobe --show-depends; 'builtin' lines are skipped). Only top-level
# names are listed here; whatever they need is found, not hard-coded.
#   virtio_pci 9pnet_virtio 9p: the host root over 9p; overlay: a writable
#   tmpfs layer over it; rdma_rxe + ib_uverbs + rdma_ucm: Soft-RoCE and its
#   user-space interfaces; crc32_generic: rxe's ICRC (crypto "crc32"), which
#   the kernel cannot request_module in the guest; dummy, veth: netdevs.
WANT=(virtio_pci 9pnet_virtio 9p overlay crc32_generic ib_uverbs rdma_ucm rdma_rxe dummy veth)
MODDIR="$kdir/guest-modules"
list="$(mktemp)"
for m in "${WANT[@]}"; do
  modprobe -d "$root" -S "$KVER" --show-depends "$m" >>"$list" 2>/dev/null \
    || die "module $m not found in $KPKG ($KVER)"
done
rm -rf "$MODDIR.tmp"; mkdir -p "$MODDIR.tmp"
: >"$MODDIR.tmp/order"
awk '$1 == "insmod" { print $2 }' "$list" | awk '!seen[$0]++' | while read -r ko; do
  name="$(basename "$ko")"
  case "$name" in
    *.ko.xz)  xz -dc "$ko" >"$MODDIR.tmp/${name%.xz}"; name="${name%.xz}" ;;
    *.ko.zst) zstd -qdc "$ko" >"$MODDIR.tmp/${name%.zst}"; name="${name%.zst}" ;;
    *.ko)     cp "$ko" "$MODDIR.tmp/$name" ;;
    *) die "unexpected module file $ko" ;;
  esac
  echo "$name" >>"$MODDIR.tmp/order"
done
rm -f "$list"
[[ -s "$MODDIR.tmp/order" ]] || die "no modules selected"
rm -rf "$MODDIR"; mv "$MODDIR.tmp" "$MODDIR"

cat >"$CACHE/kernel.env" <<ENV
KPKG=$KPKG
KPKG_VERSION=$KPKG_VERSION
KVER=$KVER
VMLINUZ=$VMLINUZ
MODDIR=$MODDIR
ENV
log "kernel: $KPKG $KPKG_VERSION ($KVER), $(wc -l <"$MODDIR/order") guest modules"
