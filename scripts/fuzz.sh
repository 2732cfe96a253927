#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 20),
# seeded from tests/fixtures and fuzz/seeds/<target>. Exits non-zero if
# any target crashed (panic, failed assertion, overflow, timeout, OOM),
# printing the reproducer's path.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# FUZZ_PROFILE=dev builds without optimisation (about 2.5 minutes from
# nothing instead of 8 or more; each target then runs 3-10 times fewer
# executions per second): what CI uses for its short run. The default,
# release, is for real fuzzing.
#
# Works on a stable toolchain: cargo fuzz needs nightly-only flags
# (-Zsanitizer), which RUSTC_BOOTSTRAP=1 lets stable rustc accept.
set -euo pipefail

seconds=${1:-20}
shift || true
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
export RUSTC_BOOTSTRAP=1

# Pinned, like every other tool the checks install: a new cargo-fuzz
# release cannot change what CI runs without a commit here.
CARGO_FUZZ_VERSION=0.13.2
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

cd "$fuzz"
# Fuzz the dependency versions that ship: the main crate's lock file, to
# which cargo adds the fuzz-only crates (libfuzzer-sys and its own).
cp "$root/Cargo.lock" "$fuzz/Cargo.lock"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets: release (or dev), debug assertions and
# overflow checks on (cargo fuzz's default), AddressSanitizer.
profile=()
case ${FUZZ_PROFILE:-release} in
  release) ;;
  dev) profile=(--dev) ;;
  *) echo "fuzz.sh: FUZZ_PROFILE is release or dev, not ${FUZZ_PROFILE}" >&2; exit 2 ;;
esac
cargo fuzz build "${profile[@]}"

logs="$fuzz/logs"
mkdir -p "$logs"
failed=()
printf '%-20s %8s %12s %10s\n' target seconds executions exec/s
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  seeds=("$root/tests/fixtures")
  [ -d "seeds/$t" ] && seeds+=("seeds/$t")
  dict=()
  case $t in
    manifest | manifest_go_model) dict=(-dict=dicts/json_keys.dict) ;;
  esac
  before=$(ls "artifacts/$t" | wc -l)
  # corpus/<t> first: the only directory libFuzzer writes to.
  # -max_len: the largest fixtures are a few hundred KiB; 64 KiB keeps
  # mutation fast and still covers every parser's structure.
  # -timeout: an input taking over 10 s is reported as a hang.
  if cargo fuzz run "${profile[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
      -max_total_time="$seconds" -max_len=65536 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" >"$logs/$t.log" 2>&1; then
    rc=0
  else
    rc=$?
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$t.log" | tail -1)
  printf '%-20s %8s %12s %10s\n' "$t" "$seconds" "${runs:-?}" "${rate:-?}"
  after=$(ls "artifacts/$t" | wc -l)
  if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
    failed+=("$t")
    echo "  CRASH in $t (exit $rc); log: $logs/$t.log" >&2
    grep -h 'Test unit written to' "$logs/$t.log" | sed 's/^/  /' >&2 || true
    echo "  reproduce: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t <reproducer>)" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crashes"
