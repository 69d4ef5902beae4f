#!/usr/bin/env bash
# Checks run.sh's exit-status contract with real VM boots (about 6 boots,
# 1-2 min on 2 cores; not part of .ci/test.sh, run it after changing the
# harness): the command's status comes out unchanged (0, 3, 200), and a
# harness failure in the guest, a kernel panic and a timeout are failures
# with their own codes, never 0.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failures=0
# expect EXIT_STATUS REASON_PATTERN RUN_SH_ARGS...: REASON_PATTERN must match
# run.sh's stderr ('' for none).
expect() {
  local want="$1" why="$2"; shift 2
  local err got
  err="$("$here/run.sh" --log "$log" "$@" 2>&1 >/dev/null)"
  got=$?
  if [[ $got -eq $want ]] && { [[ -z "$why" ]] || grep -q -- "$why" <<<"$err"; }; then
    echo "selftest: ok   exit $got: $*"
  else
    echo "selftest: FAIL exit $got, expected $want${why:+ and '$why'}: $*"
    failures=$((failures + 1))
  fi
}
expect 0   '' --timeout 120 -- true
expect 3   '' --timeout 120 -- sh -c 'exit 3'
expect 200 '' --timeout 120 -- sh -c 'exit 200'
# The command kills guest.sh (its grandparent) before a status is written.
expect 125 'harness failure inside the guest' --timeout 120 -- sh -c 'kill -9 "$(cut -d" " -f4 /proc/$PPID/stat)"'
expect 125 'kernel panic' --timeout 120 -- sh -c 'echo c > /proc/sysrq-trigger'
expect 124 'timeout' --timeout 15  -- sleep 600
[[ $failures -eq 0 ]] && echo "selftest: all passed" || { echo "selftest: $failures failed"; exit 1; }
