#!/usr/bin/env bash
# Installs what hyperloop needs to build and test, from Debian 12 packages.
# Idempotent: when every package is already installed it does nothing (no
# apt-get update), so repeated runs take well under a second. Runs as root on
# a fresh Debian 12 machine (uses sudo when run as another user, if present).
set -euo pipefail

# Exactly what the build needs (README.md, "Dependencies", says why each).
PACKAGES=(
  g++                # C++20 compiler (GCC 12) and its ASan/UBSan/TSan runtimes
  cmake              # build system generator (>= 3.25)
  ninja-build        # build tool used by the .ci scripts
  pkg-config         # locating rdma-core / PMDK libraries
  libibverbs-dev     # rdma-core verbs headers and library (rnic/verbs, rnic/mlx5)
  ibverbs-providers  # rdma-core provider drivers, incl. mlx5dv (rnic/mlx5)
  rdma-core          # rdma-core userspace infrastructure
  libpmem2-dev       # PMDK libpmem2: persistent memory regions
  libboost-dev       # Boost.Intrusive (header-only) for the NIC's data-path queues
  libgtest-dev       # GoogleTest
  libgmock-dev       # GoogleMock
  libbenchmark-dev   # Google Benchmark
  iproute2           # ip netns / veth for the network-namespace tests
  libssl-dev         # OpenSSL libcrypto: HMAC-SHA256 tenant authentication, CSPRNG
  libzookeeper-mt-dev  # ZooKeeper's C client: tenants' configuration records (coord/)
  zookeeper          # the ZooKeeper server (and a JRE) that coord_test starts on loopback
  librocksdb-dev     # RocksDB 7.8: the replicated RocksDB in examples/rocksdb (with zlib's crc32)
  rocksdb-tools      # stock db_bench, run over the replicated WAL by bench/rocksdb_side_by_side.sh
  # The Soft-RoCE VM (tests/vm/README.md); its kernel is fetched by tests/vm/prepare.sh
  qemu-system-x86    # qemu-system-x86_64 (TCG) boots Debian's stock kernel with rdma_rxe
  busybox-static     # the VM's initramfs
  kmod               # depmod/modprobe -d: the guest modules and their dependencies
  cpio               # initramfs archive
  ibverbs-utils      # ibv_devices, ibv_devinfo, ibv_rc_pingpong in the VM smoke check
  python3-matplotlib # bench/plots.py: the latency CDF, p99 vs busy tenants and commits/s figures
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "install-deps: missing: ${missing[*]}"

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
  else
    echo "install-deps: must run as root (or with sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
APT_OPTS=(-o Dpkg::Use-Pty=0 -o Acquire::Retries=3)

# apt-get update, retried: a fresh machine's first update may hit a transient error.
for attempt in 1 2 3; do
  if "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" update; then
    break
  fi
  if [[ $attempt -eq 3 ]]; then
    echo "install-deps: apt-get update failed" >&2
    exit 1
  fi
  sleep $((attempt * 5))
done

# Install the whole list (already-installed ones are no-ops), so apt resolves
# them together.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y \
  --no-install-recommends "${PACKAGES[@]}" </dev/null

# Verify: every package must now be installed.
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "installed" ]]; then
    echo "install-deps: $pkg is still not installed" >&2
    exit 1
  fi
done
echo "install-deps: done"
