#!/usr/bin/env bash
# CI's fuzzing step: every fuzz target for a bounded time, failing on a crash.
#
#   fuzz/ci.sh [TOTAL_SECONDS]        (default $FUZZ_SECONDS, else 90; split evenly, 5 s minimum)
#
# A gate: it fails (exit 1) when nightly Rust, cargo-fuzz or a C++ compiler for libFuzzer cannot
# be had, when the fuzz crate's dependencies cannot be fetched, when a target does not build,
# when a target did not run (no executions reported), or when one finds a crash (or an input that
# runs over 60 s); a crashing input is printed in base64 so it can be copied from the log into
# fuzz/regressions/<target>/. It skips only when asked to: STRONGROOM_FUZZ_SKIP=<reason> prints
# the reason and exits 0 (for a machine that cannot fuzz, said out loud in its CI log).
#
# The time budget is for fuzzing only; the first build of the targets (with sanitizers) takes a
# few minutes more.
set -uo pipefail
cd "$(dirname "$0")"

total="${1:-${FUZZ_SECONDS:-90}}"
if [ -n "${STRONGROOM_FUZZ_SKIP:-}" ]; then
  echo "ci-fuzz: SKIPPED because STRONGROOM_FUZZ_SKIP says: $STRONGROOM_FUZZ_SKIP"
  exit 0
fi
skip() {
  echo "ci-fuzz: FAILED: $* (set STRONGROOM_FUZZ_SKIP=<reason> to skip fuzzing on purpose)"
  exit 1
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
if ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    echo "ci-fuzz: installing the nightly toolchain"
    timeout 600 rustup toolchain install nightly --profile minimal >/dev/null 2>&1 ||
      skip "no nightly toolchain, and \`rustup toolchain install nightly\` failed"
  else
    skip "no nightly toolchain and no rustup to install one"
  fi
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "ci-fuzz: installing cargo-fuzz"
  timeout 900 cargo install cargo-fuzz --locked >/dev/null 2>&1 ||
    skip "cargo-fuzz is not installed and \`cargo install cargo-fuzz --locked\` failed"
fi
command -v c++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 ||
  skip "no C++ compiler to build libFuzzer (install g++ or clang)"
timeout 900 cargo +nightly fetch >/dev/null 2>&1 ||
  skip "the fuzz crate's dependencies could not be fetched (network?)"

echo "ci-fuzz: $(cargo +nightly fuzz --version), $(rustc +nightly --version)"
if ! cargo +nightly fuzz build; then
  echo "ci-fuzz: FAILED: the fuzz targets do not build"
  exit 1
fi

targets=$(cargo +nightly fuzz list)
count=$(echo "$targets" | wc -w)
per=$(( total / count ))
[ "$per" -ge 5 ] || per=5
echo "ci-fuzz: $count targets, ${per}s each"

# store_model makes a store per input: keep its temporary directories off the disk if possible.
if [ -z "${STRONGROOM_FUZZ_TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export STRONGROOM_FUZZ_TMPDIR=/dev/shm
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
ran=0
for t in $targets; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  inputs=("$work/corpus/$t" "seeds/$t")
  [ -d "regressions/$t" ] && inputs+=("regressions/$t")
  if cargo +nightly fuzz run "$t" "${inputs[@]}" -- \
      -max_total_time="$per" -timeout=60 -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
    if [ -z "$execs" ] || [ "$execs" -eq 0 ]; then
      status=1
      echo "ci-fuzz: $t: FAILED: it reported no executions (it did not run); last lines of its log:"
      tail -n 20 "$work/$t.log"
      continue
    fi
    ran=$((ran + 1))
    echo "ci-fuzz: $t: ok, $execs executions"
  else
    status=1
    echo "ci-fuzz: $t: FAILED; last lines of its log:"
    tail -n 40 "$work/$t.log"
    for crash in "$work/artifacts/$t"/*; do
      [ -e "$crash" ] || continue
      echo "ci-fuzz: $t: crashing input $(basename "$crash") (base64; save it as fuzz/regressions/$t/$(basename "$crash")):"
      base64 -w 0 "$crash"
      echo
    done
  fi
done
if [ "$status" -eq 0 ] && [ "$ran" -ne "$count" ]; then
  echo "ci-fuzz: FAILED: $ran of $count targets ran"
  status=1
fi
[ "$status" -eq 0 ] && echo "ci-fuzz: every target ran clean ($ran of $count)"
exit $status
