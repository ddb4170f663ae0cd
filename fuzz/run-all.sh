#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each.
#
#   fuzz/run-all.sh [SECONDS_PER_TARGET]     (default 60)
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). Each target starts from its committed
# seeds (fuzz/seeds/<target>) plus a scratch corpus under fuzz/corpus/ (not committed). A crash
# is copied to fuzz/regressions/<target>/, where `tests/fuzz_regressions.rs` replays it in the
# normal test suite from then on; the script then exits non-zero.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
targets=$(cargo +nightly fuzz list)
status=0
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== fuzzing $t for ${secs}s"
  if ! cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 2>"artifacts/$t.log"; then
    status=1
    echo "!! $t failed; last lines of its log:"
    tail -n 30 "artifacts/$t.log"
  fi
  grep -E "^stat::number_of_executed_units|^stat::new_units_added" "artifacts/$t.log" | sed "s/^/   $t /" || true
  for crash in artifacts/"$t"/crash-* artifacts/"$t"/oom-* artifacts/"$t"/timeout-*; do
    [ -e "$crash" ] || continue
    mkdir -p "regressions/$t"
    cp "$crash" "regressions/$t/"
    echo "!! saved $crash as regressions/$t/$(basename "$crash"): commit it"
    status=1
  done
done
exit $status
