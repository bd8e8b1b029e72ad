#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 20), starting from the checked-in regression
# inputs. Any crash fails the run; libFuzzer saves the input under fuzz/artifacts/<target>/ —
# copy it to fuzz/regressions/<target>/ with a descriptive name so `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --quiet
fi
# cargo-fuzz passes -Z sanitizer flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
for target in chain challenge registration mqtt attestation lorawan semtech_udp sigfox; do
  mkdir -p "corpus/$target"
  cp -n regressions/$target/* "corpus/$target/" 2>/dev/null || true
  echo "fuzz: $target for ${seconds}s"
  log=$(mktemp)
  if ! cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target FAILED — the crashing input is in fuzz/artifacts/$target/"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" || true
  rm -f "$log"
done
