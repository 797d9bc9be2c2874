#!/usr/bin/env bash
# Runs every test: C unit tests (build/tests/test_*, and build/asan/tests/test_*
# when `make asan` built them), Lua tests
# (tests/lua/test_*.lua through build/fsdp-lua) and multi-rank tests
# (tests/dist/test_*.sh). Prints one line per test and a closing
# "N passed, N failed"; exits non-zero if any failed.
# Usage: tests/run.sh [substring-filter]
set -u
cd "$(dirname "$0")/.."
filter="${1:-}"
pass=0; fail=0; failed=()
logdir=build/test-logs
mkdir -p "$logdir"

run_one() {
    local name="$1"; shift
    [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && return
    local log="$logdir/$(echo "$name" | tr '/ ' '__').log"
    local t0=$(date +%s.%N)
    if timeout 1200 "$@" >"$log" 2>&1; then
        pass=$((pass+1)); printf "ok   %-45s %6.1fs\n" "$name" "$(awk "BEGIN{print $(date +%s.%N) - $t0}")"
    else
        fail=$((fail+1)); failed+=("$name")
        printf 'FAIL %-45s (log: %s)\n' "$name" "$log"
        tail -n 25 "$log" | sed 's/^/     | /'
    fi
}

for t in build/tests/test_*; do
    [ -x "$t" ] && run_one "c/$(basename "$t")" "$t"
done
# the same C tests under ASan + UBSan (`make asan`; `make test` builds them)
for t in build/asan/tests/test_*; do
    [ -x "$t" ] && run_one "asan/$(basename "$t")" "$t"
done
for t in tests/lua/test_*.lua; do
    [ -f "$t" ] && run_one "lua/$(basename "$t" .lua)" build/fsdp-lua "$t"
done
for t in tests/dist/test_*.sh; do
    [ -f "$t" ] && run_one "dist/$(basename "$t" .sh)" bash "$t"
done
for t in tests/dist/test_*.lua; do
    [ -f "$t" ] && run_one "dist/$(basename "$t" .lua)" build/fsdp-lua "$t"
done

echo
[ ${#failed[@]} -gt 0 ] && printf 'failed: %s\n' "${failed[*]}"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ] && [ "$pass" -gt 0 ]
