#!/usr/bin/env bash
# A long fuzzing campaign: every target (or the ones named) for SECONDS each, two at a time,
# on nightly with AddressSanitizer (stable without a sanitizer when nightly is absent).
#
#   fuzz/campaign.sh [SECONDS] [TARGET...]        # default 600 s, every target
#
# Corpora grow in fuzz/corpus/<target> (ignored by git), seeded from fuzz/seeds/<target> and
# fuzz/regressions/<target>; crashes land in fuzz/artifacts/<target>; each target's log, with
# libFuzzer's final "Done N runs in S second(s)", in fuzz/artifacts/<target>.log.
# Checks that fail on a known, reported kernel issue are skipped when TRIPLET_FUZZ_KNOWN
# names the issue (see fuzz_targets/common/mod.rs), e.g.
#   TRIPLET_FUZZ_KNOWN=nca-sum-overflow,anchor-sum-overflow fuzz/campaign.sh 600
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^triplet-kernels-fuzz$')
fi
toolchain=()
sanitizer=(-s none)
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
  sanitizer=(-s address)
fi
cargo "${toolchain[@]}" fuzz build "${sanitizer[@]}"
mkdir -p artifacts

run() {
  local t=$1
  mkdir -p "corpus/$t"
  local extra=()
  [ -d "seeds/$t" ] && extra+=("seeds/$t")
  [ -d "regressions/$t" ] && extra+=("regressions/$t")
  local status=0
  nice -n 10 cargo "${toolchain[@]}" fuzz run "${sanitizer[@]}" "$t" "corpus/$t" "${extra[@]}" -- \
    -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"artifacts/$t.log" 2>&1 ||
    status=$?
  echo "$t: $(grep -E '^Done [0-9]+ runs' "artifacts/$t.log" || echo 'stopped early, see the log') (exit $status)"
  return $status
}

status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  pids=()
  for t in "${targets[@]:i:2}"; do
    run "$t" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" || status=1
  done
done
exit $status
