#!/usr/bin/env bash
# Checks that the patch in this folder applies to rdma-core v44.0 and builds
# with warnings as errors. NOT run by CI: it downloads a source package and
# builds a third-party tree, and nothing in the test command needs it. Run it
# by hand (README.md, "What was and was not run", says what its runs found).
#
#   driver-patches/rdma-core-44-cross-channel/check.sh [options] [TREE]
#
# TREE      an rdma-core v44.0 source tree: the top of `apt-get source
#           rdma-core` (Debian 12: 44.0-2) or of `git checkout v44.0` of
#           github.com/linux-rdma/rdma-core. It is copied, never modified.
#           Without TREE the script runs `apt-get source rdma-core` in the
#           work directory (needs a deb-src line for bookworm in apt's sources
#           and `apt-get update` run since; it adds none itself).
# --work DIR   work directory, must not hold a src/ yet; kept afterwards
#              (default: a new mktemp -d, removed at the end unless --keep);
#              the patched tree is DIR/src, the build DIR/build
# --keep       keep the work directory
# --full       build every target, and the untouched tree as well if some
#              target fails (default: only libibverbs and the mlx5 provider,
#              the two the patch touches, and what they need)
# --no-modes   skip the extra builds of libibverbs with -DIOCTL_MODE=write and
#              -DIOCTL_MODE=ioctl (the patch has a branch for each)
# --any-version  accept a tree whose CMakeLists.txt is not PACKAGE_VERSION 44.0
#
# Steps, each fatal on failure:
#  1. the tree's version is 44.0 (CMakeLists.txt's PACKAGE_VERSION);
#  2. `git apply --check` and `patch -p1 --dry-run` both accept the patch
#     without fuzz, then `git apply` applies it;
#  3. cmake -GNinja -DIN_PLACE=1 -DENABLE_WERROR=1 -DNO_PYVERBS=1
#     -DNO_MAN_PAGES=1 -DCMAKE_BUILD_TYPE=Release, with dpkg-buildflags'
#     CFLAGS where dpkg-buildflags exists (as Debian's build would have),
#     then ninja (the same cmake + ninja that rdma-core's build.sh runs):
#     libibverbs and mlx5 must build without a warning; with --full every
#     other target too, except objects that also fail, with the same flags,
#     in the unpatched tree (stock v44.0 under Debian 12's gcc 12 has one:
#     providers/cxgb4/qp.c, -Werror=maybe-uninitialized);
#  4. build/include/infiniband/verbs.h declares IBV_QP_CREATE_CROSS_CHANNEL,
#     _MANAGED_SEND and _MANAGED_RECV; a small program compiled against
#     build/include as C (gnu11) and as C++20 with -Wall -Wextra -Werror
#     (C++: less the one deprecation stock verbs.h already has) asserts their
#     values (1 << 2, 1 << 3, 1 << 4: the kernel's IB_QP_CREATE_*), and the C
#     one links with and runs on the built libibverbs; the built libmlx5
#     exists;
#  5. the patched man page ibv_create_qp_ex.3 formats without groff warnings
#     (if groff is installed);
#  6. unless --no-modes, libibverbs builds with -Werror in IOCTL_MODE=write
#     and IOCTL_MODE=ioctl too;
#  7. where Debian's libibverbs1 / ibverbs-providers 44.0-* are installed,
#     the built libibverbs.so.1 and libmlx5.so.1 export exactly the symbols
#     (with versions) of the installed ones, so they can stand in for them.
# Build dependencies (Debian): cmake ninja-build pkg-config gcc g++
# libnl-3-dev libnl-route-3-dev libudev-dev; the script installs none.
# Nothing here talks to an RDMA device; it never ran on ConnectX hardware.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PATCH="$here/0001-verbs-mlx5-cross-channel-QP-create-flags-managed-send.patch"
log() { echo "rdma-core-cc-check: $*" >&2; }
die() { echo "rdma-core-cc-check: ERROR: $*" >&2; exit 1; }

tree="" work="" keep=0 full=0 modes=1 any_version=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --work) work="${2:?--work needs a directory}"; shift 2 ;;
    --keep) keep=1; shift ;;
    --full) full=1; shift ;;
    --no-modes) modes=0; shift ;;
    --any-version) any_version=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *) [[ -z "$tree" ]] || die "one TREE only"; tree="$1"; shift ;;
  esac
done
[[ -f "$PATCH" ]] || die "no patch at $PATCH"
for t in cmake ninja pkg-config cc c++ git patch nm; do
  command -v "$t" >/dev/null 2>&1 || die "$t is not installed (see the header of this script)"
done
for m in libnl-3.0 libnl-route-3.0 libudev; do
  pkg-config --exists "$m" || die "pkg-config finds no $m (apt-get install libnl-3-dev libnl-route-3-dev libudev-dev)"
done

if [[ -z "$work" ]]; then
  work="$(mktemp -d "${TMPDIR:-/tmp}/rdma-core-cc.XXXXXX")"
  [[ "$keep" -eq 1 ]] || trap 'rm -rf "$work"' EXIT
else
  mkdir -p "$work"; work="$(cd "$work" && pwd)"
fi
src="$work/src"
# git apply inside an enclosing repository would resolve the patch's paths
# against that repository's top and skip them: never look above $work.
export GIT_CEILING_DIRECTORIES="$work"
[[ ! -e "$src" ]] || die "$src exists: give an empty --work directory"

if [[ -n "$tree" ]]; then
  [[ -f "$tree/CMakeLists.txt" && -f "$tree/libibverbs/cmd_qp.c" ]] || die "$tree is not an rdma-core source tree"
  log "copying $tree"
  mkdir -p "$src"
  # a git checkout: only the tracked files (no build/ from an earlier run)
  if git -C "$tree" rev-parse -q --verify HEAD >/dev/null 2>&1 &&
     [[ "$(git -C "$tree" rev-parse --show-toplevel)" == "$(cd "$tree" && pwd -P)" ]] &&
     [[ -n "$(git -C "$tree" ls-files -- CMakeLists.txt)" ]]; then
    log "git tree at $(git -C "$tree" rev-parse HEAD)$(git -C "$tree" diff --quiet HEAD || echo ' (with local changes)')"
    (cd "$tree" && git ls-files -z | tar --null -T - -cf -) | tar -xf - -C "$src"
  else
    (cd "$tree" && tar --exclude=./build --exclude=./build-deb -cf - .) | tar -xf - -C "$src"
  fi
else
  log "apt-get source rdma-core (in $work)"
  ( cd "$work" && apt-get source rdma-core >&2 ) ||
    die "apt-get source rdma-core failed: add a deb-src line for bookworm and run apt-get update, or pass a tree (git clone -b v44.0 https://github.com/linux-rdma/rdma-core)"
  d="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'rdma-core-*' | head -n1)"
  [[ -n "$d" ]] || die "apt-get source left no rdma-core-* directory"
  log "Debian source $(cd "$work" && ls ./*.dsc)"
  mv "$d" "$src"
fi

ver="$(sed -n 's/^set(PACKAGE_VERSION "\([^"]*\)").*/\1/p' "$src/CMakeLists.txt")"
log "tree is rdma-core $ver"
if [[ "$ver" != "44.0" ]]; then
  [[ "$any_version" -eq 1 ]] || die "the patch is for 44.0, the tree is $ver (--any-version to try anyway)"
fi

# 2. apply: both tools must accept it as it is, without fuzz. With --full an
# untouched copy is kept for the comparison build of step 3.
if [[ "$full" -eq 1 ]]; then cp -a "$src" "$work/src-stock"; fi
( cd "$src" && git apply --check -v "$PATCH" ) >&2 || die "git apply --check refuses the patch"
out="$( cd "$src" && patch -p1 --dry-run <"$PATCH" )" || { echo "$out" >&2; die "patch -p1 --dry-run refuses the patch"; }
echo "$out" >&2
if grep -q "fuzz" <<<"$out"; then die "patch applies only with fuzz"; fi
( cd "$src" && git apply "$PATCH" ) || die "git apply failed"
grep -q IBV_QP_CREATE_MANAGED_SEND "$src/libibverbs/verbs.h" || die "verbs.h lacks IBV_QP_CREATE_MANAGED_SEND after git apply"
log "applied $(basename "$PATCH")"

# 3. build, warnings as errors
cflags=""
if command -v dpkg-buildflags >/dev/null 2>&1; then cflags="$(dpkg-buildflags --get CFLAGS)"; fi
configure() { # SOURCE_DIR BUILD_DIR [extra cmake args]
  local s="$1" b="$2"; shift 2
  mkdir -p "$b"
  ( cd "$b" && CFLAGS="$cflags" cmake -GNinja -DIN_PLACE=1 -DENABLE_WERROR=1 -DNO_PYVERBS=1 \
      -DNO_MAN_PAGES=1 -DCMAKE_BUILD_TYPE=Release "$@" "$s" ) >"$b.cmake.log" 2>&1 ||
    { tail -n 30 "$b.cmake.log" >&2; die "cmake failed (log: $b.cmake.log)"; }
  grep -q "Enabled -Werror" "$b.cmake.log" || die "cmake did not enable -Werror (log: $b.cmake.log)"
}
b="$work/build"
configure "$src" "$b"
if [[ "$full" -eq 1 ]]; then
  # Every target, going on past failures (-k 0). Some files of stock v44.0
  # that the patch does not touch may not build with -Werror under a newer
  # compiler than upstream's CI had; so the same build of the untouched tree
  # runs too, and the patched one may fail only where the stock one does.
  log "ninja -k 0 (all targets; log: $b.ninja.log)"
  ninja -k 0 -C "$b" >"$b.ninja.log" 2>&1 || true
  failed="$(sed -n 's/^FAILED: //p' "$b.ninja.log" | sort -u)"
  if [[ -n "$failed" ]]; then
    bs="$work/build-stock"
    configure "$work/src-stock" "$bs"
    log "ninja -k 0 of the unpatched tree, for comparison (log: $bs.ninja.log)"
    ninja -k 0 -C "$bs" >"$bs.ninja.log" 2>&1 || true
    stock_failed="$(sed -n 's/^FAILED: //p' "$bs.ninja.log" | sort -u)"
    new="$(comm -23 <(echo "$failed") <(echo "$stock_failed"))"
    if [[ -n "$new" ]]; then
      echo "$new" >&2
      die "these fail with the patch and not without it (log: $b.ninja.log)"
    fi
    log "failing with -Werror in the stock tree too, not touched by the patch:"
    while read -r f; do log "  $f"; done <<<"$failed"
  fi
  # what the patch touches must have built, whatever else failed
  ninja -C "$b" ibverbs mlx5 >>"$b.ninja.log" 2>&1 || die "libibverbs or mlx5 failed (log: $b.ninja.log)"
else
  log "ninja ibverbs mlx5 (log: $b.ninja.log)"
  ninja -C "$b" ibverbs mlx5 >"$b.ninja.log" 2>&1 ||
    { grep -E "error|warning" "$b.ninja.log" | head -n 40 >&2; die "the build failed (log: $b.ninja.log)"; }
  if grep -E "warning:" "$b.ninja.log" >&2; then die "the build printed warnings (log: $b.ninja.log)"; fi
fi

# 4. the built headers and libraries
h="$b/include/infiniband/verbs.h"
[[ -f "$h" ]] || die "no $h"
for f in IBV_QP_CREATE_CROSS_CHANNEL IBV_QP_CREATE_MANAGED_SEND IBV_QP_CREATE_MANAGED_RECV; do
  grep -q "$f" "$h" || die "$h lacks $f"
done
lib="$(find "$b/lib" -maxdepth 1 -name 'libibverbs.so.1*' -type f | head -n1)"
mlx5="$(find "$b/lib" -maxdepth 1 -name 'libmlx5.so.1*' -type f | head -n1)"
[[ -n "$lib" ]] || die "no built libibverbs.so.1 in $b/lib"
[[ -n "$mlx5" ]] || die "no built libmlx5.so.1 in $b/lib"
t="$work/flags-test"; mkdir -p "$t"
cat >"$t/flags.c" <<'EOF'
#include <infiniband/verbs.h>
#include <infiniband/mlx5dv.h>
#include <stdio.h>
#include <string.h>
_Static_assert(IBV_QP_CREATE_CROSS_CHANNEL == (1 << 2), "IB_QP_CREATE_CROSS_CHANNEL");
_Static_assert(IBV_QP_CREATE_MANAGED_SEND == (1 << 3), "IB_QP_CREATE_MANAGED_SEND");
_Static_assert(IBV_QP_CREATE_MANAGED_RECV == (1 << 4), "IB_QP_CREATE_MANAGED_RECV");
int main(void)
{
	struct ibv_qp_init_attr_ex a;
	struct ibv_device **l;
	int n = 0;

	memset(&a, 0, sizeof(a));
	a.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_CREATE_FLAGS;
	a.create_flags = IBV_QP_CREATE_CROSS_CHANNEL | IBV_QP_CREATE_MANAGED_SEND;
	l = ibv_get_device_list(&n);
	if (l) {
		printf("create_flags 0x%x; %d verbs device(s)\n", (unsigned)a.create_flags, n);
		ibv_free_device_list(l);
	} else {
		printf("create_flags 0x%x; no device list: %m\n", (unsigned)a.create_flags);
	}
	return 0;
}
EOF
cat >"$t/flags.cc" <<'EOF'
#include <infiniband/verbs.h>
#include <infiniband/mlx5dv.h>
static_assert(IBV_QP_CREATE_CROSS_CHANNEL == (1 << 2));
static_assert(IBV_QP_CREATE_MANAGED_SEND == (1 << 3));
static_assert(IBV_QP_CREATE_MANAGED_RECV == (1 << 4));
unsigned flags()
{
	ibv_qp_init_attr_ex a{};
	a.create_flags = IBV_QP_CREATE_CROSS_CHANNEL | IBV_QP_CREATE_MANAGED_RECV;
	return a.create_flags;
}
EOF
cc -std=gnu11 -Wall -Wextra -Werror -I "$b/include" -o "$t/flags" "$t/flags.c" -L "$b/lib" -libverbs ||
  die "the C test program does not build against $b/include"
# -Wno-deprecated-enum-enum-conversion: stock v44.0's verbs.h already ORs
# enumerators of different enums (IBV_CREATE_CQ_SUP_WC_FLAGS), which C++20
# deprecates; installed in /usr/include it is a system header, where that
# warning is never shown. Any other warning is an error.
c++ -std=c++20 -Wall -Wextra -Werror -Wno-deprecated-enum-enum-conversion -fsyntax-only \
    -I "$b/include" "$t/flags.cc" ||
  die "verbs.h / mlx5dv.h do not compile as C++20 with -Werror"
LD_LIBRARY_PATH="$b/lib" "$t/flags" >&2 || die "the test program failed to run"
log "built: $(basename "$lib"), $(basename "$mlx5"); verbs.h declares the three flags"

# 5. the man page
if command -v groff >/dev/null 2>&1; then
  w="$(groff -man -ww -z "$src/libibverbs/man/ibv_create_qp_ex.3" 2>&1 || true)"
  [[ -z "$w" ]] || { echo "$w" >&2; die "groff warns on ibv_create_qp_ex.3"; }
  log "ibv_create_qp_ex.3 formats without groff warnings"
fi

# 6. the other two IOCTL_MODEs (the patch's VERBS_IOCTL_ONLY branch and the
# write-only macros)
if [[ "$modes" -eq 1 ]]; then
  for mode in write ioctl; do
    bm="$work/build-$mode"
    configure "$src" "$bm" -DIOCTL_MODE="$mode"
    log "ninja ibverbs with IOCTL_MODE=$mode"
    ninja -C "$bm" ibverbs >"$bm.ninja.log" 2>&1 ||
      { grep -E "error|warning" "$bm.ninja.log" | head -n 40 >&2; die "IOCTL_MODE=$mode build failed (log: $bm.ninja.log)"; }
    if grep -E "warning:" "$bm.ninja.log" >&2; then die "IOCTL_MODE=$mode printed warnings"; fi
  done
fi

# 7. the same ABI as Debian's binaries of 44.0, where those are installed
for pkg_lib in "libibverbs1 $lib" "ibverbs-providers $mlx5"; do
  read -r pkg built <<<"$pkg_lib"
  pv="$(dpkg-query -W -f='${db:Status-Status} ${Version}' "$pkg" 2>/dev/null || true)"
  if [[ "$pv" != "installed 44.0-"* ]]; then
    log "$pkg 44.0 is not installed: exported symbols not compared"
    continue
  fi
  inst="$(dpkg -L "$pkg" | grep -m1 "/$(basename "$built")\$" || true)"
  [[ -n "$inst" && -f "$inst" ]] || { log "$pkg ${pv#installed } has no $(basename "$built"): not compared"; continue; }
  syms() { nm -D --defined-only --with-symbol-versions "$1" | awk '{print $NF}' | sort; }
  if ! diff <(syms "$inst") <(syms "$built") >&2; then
    die "$(basename "$built") exports other symbols than $inst (${pv#installed })"
  fi
  log "$(basename "$built") exports the same $(syms "$built" | wc -l) symbols as $pkg ${pv#installed }"
done

what="libibverbs, mlx5"; [[ "$full" -eq 1 ]] && what="all targets"
log "OK: the patch applies to rdma-core $ver and builds with -Werror ($what)"
[[ "$keep" -eq 1 ]] && log "kept $work"
exit 0
