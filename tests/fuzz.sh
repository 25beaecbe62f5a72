#!/usr/bin/env bash
# Fuzzes the sidecar's parsers and its xDS translation with cargo-fuzz
# (targets in sidecar/fuzz/fuzz_targets, seed corpora in sidecar/fuzz/seeds).
# Each target runs for $FUZZ_SECONDS (default 60) from its seeds; any crash,
# panic, leak or timeout fails the script, and libFuzzer's reproducer is kept
# in sidecar/fuzz/artifacts/<target>/ (replay it with
# `cargo +nightly fuzz run -s none <target> <file>`).
#
#   FUZZ_SECONDS=60 FUZZ_TARGETS="request_head chunked" tests/fuzz.sh
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs
# cargo-fuzz if it is missing. Builds go to $HOME/.cache/revmesh/fuzz-target
# (override with FUZZ_TARGET_DIR), apart from the workspace's target directory.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${FUZZ_SECONDS:-60}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$HOME/.cache/revmesh/fuzz-target}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: cargo-fuzz needs the nightly toolchain; install it with: rustup toolchain install nightly" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi

cd "$root/sidecar/fuzz"
# No sanitizer (-s none): the code fuzzed is safe Rust (the sidecar's one
# unsafe block, a getsockopt, is not reached from here), so AddressSanitizer
# would cost build and run time for nothing; overflow checks and debug
# assertions stay on (cargo-fuzz's default build). `fuzz run` builds first.
targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
for target in $targets; do
  # New inputs go to a scratch corpus; the committed seeds are only read.
  mkdir -p "$work/corpus/$target"
  log="$work/$target.log"
  echo "fuzz.sh: $target for ${seconds}s"
  if cargo +nightly fuzz run -s none "$target" "$work/corpus/$target" "seeds/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+\s+DONE' "$log" | sed "s/^/  /" || true
  else
    failed+=("$target")
    echo "fuzz.sh: $target FAILED; the end of its log:" >&2
    tail -n 60 "$log" >&2
  fi
done

if ((${#failed[@]})); then
  echo "fuzz.sh: crashes in: ${failed[*]} (reproducers in sidecar/fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: every target ran ${seconds}s without a crash"
