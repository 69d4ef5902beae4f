#!/usr/bin/env bash
# Regenerates the figures the README shows (bench/plots.py says what each
# is) from fresh benchmark runs on this machine:
#   bash bench/plots.sh [BUILD_DIR] [OUT_DIR]     (defaults: build docs/figures)
# BUILD_DIR must hold bench/primitives_bench and bench/txn_bench (the test
# command's build/). It runs only the cases the figures need, each with
# --benchmark_repetitions=3 so medians are there too, and keeps the JSON
# next to the PNGs (OUT_DIR/*.json), so a figure can be traced to its run.
# The benchmarks' summaries (each issue 16 target, measured, met or
# MISSED) are kept too, in OUT_DIR/summary.txt. About 8 minutes on the
# 2-core CI machine. --smoke: tiny budgets, for CI
# (checks the pipeline, not the numbers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
smoke=0
args=()
for a in "$@"; do
  if [[ "$a" == --smoke ]]; then smoke=1; else args+=("$a"); fi
done
build="${args[0]:-build}"
out="${args[1]:-docs/figures}"
for b in primitives_bench txn_bench; do
  [[ -x "$build/bench/$b" ]] || { echo "plots: $build/bench/$b missing (build first)" >&2; exit 2; }
done
mkdir -p "$out"
if [[ $smoke == 1 ]]; then
  min=0.01 reps=1 mt=0.05 tput=0.05
else
  min=0.3 reps=3 mt=1.5 tput=0.7
fi
"$build/bench/primitives_bench" \
  --benchmark_filter='BM_(Latency|Throughput)/gWRITE/mode:[0-9]/bytes:64/n:3/|BM_MultiTenant/client_on_nic_core' \
  --benchmark_min_time="$min" --benchmark_repetitions="$reps" --mt_seconds="$mt" \
  --benchmark_out="$out/primitives_bench.json" --benchmark_out_format=json 2> >(tee "$out/summary.txt" >&2)
"$build/bench/txn_bench" \
  --benchmark_filter='BM_CommitLatency/mode:[0-9]/ranges:1/bytes:64/|BM_CommitThroughput|BM_GroupCommit|BM_ContendedTransfers' \
  --benchmark_min_time="$min" --tput_seconds="$tput" \
  --benchmark_out="$out/txn_bench.json" --benchmark_out_format=json 2> >(tee -a "$out/summary.txt" >&2)
# Debian's python3 (its python3-matplotlib), not whatever python3 a PATH
# (pyenv, a venv) puts first; PYTHON overrides.
py="${PYTHON:-/usr/bin/python3}"
[[ -x "$py" ]] || py=python3
"$py" bench/plots.py --primitives "$out/primitives_bench.json" --txn "$out/txn_bench.json" --out "$out"
