#!/usr/bin/env bash
# Runs every fuzz target for a bounded time each.
#
#   fuzz/run-all.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60, every target)
#
# Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`). Each target starts from its committed
# seeds (fuzz/seeds/<target>) and saved crashes (fuzz/regressions/<target>) plus a scratch corpus
# under fuzz/corpus/ (not committed; new inputs go there, never into the committed folders). A
# crash is moved from fuzz/artifacts/<target>/ to fuzz/regressions/<target>/, where
# `tests/fuzz_regressions.rs` replays it in the normal test suite from then on; the script then
# exits non-zero. An input that runs for more than 60 s is a hang, saved the same way. Ends with a
# table of executions per target.
#
# `store_model` makes a store in a fresh temporary directory per input; STRONGROOM_FUZZ_TMPDIR
# puts those in /dev/shm when there is one (no disk syncs: about twice the executions).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
  targets="$*"
else
  targets=$(cargo +nightly fuzz list)
fi
if [ -z "${STRONGROOM_FUZZ_TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export STRONGROOM_FUZZ_TMPDIR=/dev/shm
fi
cargo +nightly fuzz build
status=0
summary=""
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== fuzzing $t for ${secs}s"
  inputs=("corpus/$t" "seeds/$t")
  [ -d "regressions/$t" ] && inputs+=("regressions/$t")
  if ! cargo +nightly fuzz run "$t" "${inputs[@]}" -- \
        -max_total_time="$secs" -timeout=60 -print_final_stats=1 2>"artifacts/$t.log"; then
    status=1
    echo "!! $t failed; last lines of its log:"
    tail -n 30 "artifacts/$t.log"
  fi
  grep -E "^stat::number_of_executed_units|^stat::new_units_added" "artifacts/$t.log" | sed "s/^/   $t /" || true
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "artifacts/$t.log" | tail -n 1)
  summary+=$(printf '%-20s %12s' "$t" "${execs:-?}")$'\n'
  for crash in artifacts/"$t"/crash-* artifacts/"$t"/oom-* artifacts/"$t"/timeout-* artifacts/"$t"/leak-*; do
    [ -e "$crash" ] || continue
    mkdir -p "regressions/$t"
    mv "$crash" "regressions/$t/"
    echo "!! saved $crash as regressions/$t/$(basename "$crash"): commit it"
    status=1
  done
done
echo "== executions per target (${secs}s each)"
printf '%s' "$summary"
exit $status
