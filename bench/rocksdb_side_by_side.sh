#!/usr/bin/env bash
# The replicated RocksDB side by side, in one run (examples/rocksdb/README.md):
#   1. stock db_bench (Debian's rocksdb-tools) fillrandom and readwhilewriting,
#      --sync=1, on: the local WAL (fsync'd); the replicated WAL over 3
#      replicas (the FileSystem plugin, offload and CPU forwarding); and
#      --disable_wal=1 (the ceiling)
#   2. build/bench/rocksdb_bench: the same synced Puts measured with Google
#      Benchmark (p50/p99/p99.9, foreign CPU, the targets met/missed), and the
#      multi-tenant case (4 tenants on 3 shared replica hosts, busy tenant
#      threads): p99 offload vs CPU forwarding
#   3. hyperloop-ycsb workloads A-F on the local WAL and the replicated WAL
# Usage: bash bench/rocksdb_side_by_side.sh [BUILD_DIR] [--smoke]
#   BUILD_DIR defaults to build/ (built by the README's commands).
#   --smoke: tiny sizes (the test command runs it so the script keeps working).
# Output: the tables on stdout; raw outputs in $OUT (printed at the end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD=build
SMOKE=0
for a in "$@"; do
  case "$a" in
    --smoke) SMOKE=1 ;;
    *) BUILD="$a" ;;
  esac
done
PLUGIN="$BUILD/examples/rocksdb/libhyperloop_walfs.so"
BENCH="$BUILD/bench/rocksdb_bench"
YCSB="$BUILD/examples/rocksdb/ycsb/hyperloop-ycsb"
for f in "$PLUGIN" "$YCSB"; do
  [[ -e "$f" ]] || { echo "rocksdb_side_by_side: $f is missing (build with RocksDB installed: bash .ci/install-deps.sh)" >&2; exit 1; }
done
command -v db_bench >/dev/null || { echo "rocksdb_side_by_side: db_bench is missing (apt-get install rocksdb-tools)" >&2; exit 1; }

OUT="$(mktemp -d /tmp/hl-rocks-sbs.XXXXXX)"
DB="$OUT/db"
if [[ $SMOKE -eq 1 ]]; then
  NUM=2000; NUM_CPU=200; RWW_SEC=1; YREC=500; YREC_CPU=100; YOPS=500; YOPS_CPU=50; BSEC=0.2
else
  NUM=20000; NUM_CPU=2000; RWW_SEC=5; YREC=10000; YREC_CPU=1000; YOPS=20000; YOPS_CPU=1000; BSEC=2
fi
# Memtables of 4 MiB (every WAL file <= ~4 MiB: RocksDB switches files when a
# memtable fills) on a 64 MiB ring; the same for every WAL kind.
COMMON=(--db="$DB" --key_size=16 --value_size=100 --histogram=1 --write_buffer_size=4194304
        --max_total_wal_size=16777216 --seed=1)

# db_bench NAME BENCHMARK NUM FLAGS... -> one row: µs/op, ops/s, P50, P99, P99.9
run_db_bench() {
  local label="$1" bench="$2" num="$3"
  shift 3
  local log="$OUT/db_bench.$bench.$label.log"
  rm -rf "$DB"
  local extra=()
  if [[ "$bench" == readwhilewriting ]]; then
    # Load first (same storage), then 1 writer + 1 reader for RWW_SEC.
    extra=(--benchmarks=fillrandom,readwhilewriting --duration="$RWW_SEC" --threads=1)
  else
    extra=(--benchmarks="$bench")
  fi
  case "$label" in
    local) db_bench "${COMMON[@]}" "${extra[@]}" --num="$num" --sync=1 >"$log" 2>&1 ;;
    nowal) db_bench "${COMMON[@]}" "${extra[@]}" --num="$num" --disable_wal=1 >"$log" 2>&1 ;;
    offload|cpu)
      HYPERLOOP_WALFS="replicas=3,mode=$label,ring_mb=64" LD_PRELOAD="$PLUGIN" \
        db_bench "${COMMON[@]}" "${extra[@]}" --num="$num" --sync=1 --fs_uri=hyperloop >"$log" 2>&1 ;;
  esac
  # The last benchmark's line and its write histogram's percentiles.
  local line pct
  line="$(grep -E "^$bench +:" "$log" | tail -1)"
  pct="$(awk -v b="$bench" '$1==b{found=1} found && /^Percentiles:/{print; exit}' "$log")"
  local us ops p50 p99 p999
  us="$(awk '{print $3}' <<<"$line")"
  ops="$(awk '{print $5}' <<<"$line")"
  p50="$(sed -n 's/.*P50: \([0-9.]*\).*/\1/p' <<<"$pct")"
  p99="$(sed -n 's/.*P99: \([0-9.]*\).*/\1/p' <<<"$pct")"
  p999="$(sed -n 's/.*P99.9: \([0-9.]*\).*/\1/p' <<<"$pct")"
  local repl
  repl="$(grep -o 'hyperloop-walfs: .*' "$log" | sed 's/hyperloop-walfs: //' || true)"
  printf "| %-17s | %-8s | %7s | %9s | %9s | %9s | %9s | %s\n" "$bench" "$label" "$num" "$us" "$ops" "$p50" "$p99 / $p999" "${repl:-}"
  [[ -n "$us" ]] || { echo "rocksdb_side_by_side: no result in $log:" >&2; tail -20 "$log" >&2; return 1; }
}

echo "# stock db_bench $(db_bench --version 2>/dev/null | head -1 || true); $(nproc) CPUs; $(date -u +%FT%TZ)"
echo "# the replicas' regions: the software RNIC's DRAM in db_bench's process (3 replica hosts);"
echo "# durable = in the memory of all 3 replicas; local = fsync'd to this machine's disk"
echo
printf "| %-17s | %-8s | %7s | %9s | %9s | %9s | %9s | %s\n" benchmark wal num "µs/op" "ops/s" "P50 µs" "P99 / P99.9" "replicated-WAL counters"
printf "|%s\n" "-------------------|----------|---------|-----------|-----------|-----------|-----------|---"
for bench in fillrandom readwhilewriting; do
  run_db_bench local "$bench" "$NUM"
  run_db_bench nowal "$bench" "$NUM"
  run_db_bench offload "$bench" "$NUM"
  run_db_bench cpu "$bench" "$NUM_CPU"
done

echo
if [[ -x "$BENCH" ]]; then
  "$BENCH" --rocks_seconds="$BSEC" --benchmark_out="$OUT/rocksdb_bench.json" --benchmark_out_format=json \
    >"$OUT/rocksdb_bench.log" 2>&1
  sed -n '/^==== replicated RocksDB/,$p' "$OUT/rocksdb_bench.log"
else
  echo "($BENCH not built: configure with -DHYPERLOOP_BUILD_BENCHMARKS=ON)"
fi

echo
echo "# hyperloop-ycsb, 1 thread, $YREC records ($YREC_CPU with cpu), zipfian 0.99 unless the workload says otherwise"
printf "| %-3s | %-9s | %10s | %s\n" wl env "ops/s" "per operation: avg / p50 / p99 / p99.9 µs"
for w in a b c d e f; do
  for env in local hyperloop:mode=offload hyperloop:mode=cpu; do
    ops=$YOPS rec=$YREC
    [[ "$env" == *cpu ]] && ops=$YOPS_CPU rec=$YREC_CPU  # ~15 ms a synced write: see the README
    log="$OUT/ycsb.$w.${env//[:=]/_}.log"
    "$YCSB" --workload "$w" --records "$rec" --operations "$ops" --threads 1 --dir "$OUT/ycsb" --env "$env" >"$log" 2>&1
    tput="$(awk -F', ' '/^# run phase/{r=1} r && /\[OVERALL\], Throughput/{print $3; exit}' "$log")"
    per="$(awk -F', ' '/^# run phase/{r=1} r && /^\[[A-Z-]+\], /{op=$1; gsub(/[\[\]]/,"",op)}
      r && /AverageLatency/{a[op]=$3} r && /50thPercentile/{p[op]=$3} r && /99thPercentile/{q[op]=$3}
      r && /99.9Percentile/{z[op]=$3; o=o sprintf("%s %.1f/%.1f/%.1f/%.1f; ", op, a[op], p[op], q[op], z[op])}
      END{print o}' "$log")"
    errs="$(awk -F', ' '/Return=(ERROR|NOT_FOUND)/{n+=$3} END{print n+0}' "$log")"
    printf "| %-3s | %-9s | %10.0f | %s errors=%s\n" "$w" "${env#hyperloop:mode=}" "$tput" "$per" "$errs"
    [[ "$errs" == 0 ]] || { echo "rocksdb_side_by_side: $log has $errs failed operations" >&2; exit 1; }
  done
done
rm -rf "$DB" "$OUT/ycsb"
echo
echo "raw outputs: $OUT"
