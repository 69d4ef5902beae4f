#!/usr/bin/env bash
# The main job: install dependencies, build (Release), run the demos on the
# software RNIC: the four group primitives over a 3-replica chain, then bank
# transfers as replicated transactions with a power failure and recovery, both
# forwarding modes. Fresh Debian 12, as root: bash .ci/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

JOBS="${JOBS:-2}"
section() { printf '\n==== %s ====\n' "$*"; }

section "install dependencies"
bash .ci/install-deps.sh

section "configure (Release, Ninja, build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release

section "build"
cmake --build build -j "$JOBS" --target hyperloop-demo hyperloop-txn-demo

section "run build/examples/hyperloop-demo (the four group primitives)"
build/examples/hyperloop-demo

section "run build/examples/hyperloop-txn-demo (transactions, power failure, recovery)"
build/examples/hyperloop-txn-demo
