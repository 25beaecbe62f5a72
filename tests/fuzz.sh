#!/usr/bin/env bash
# Fuzzes the parsers that read bytes from outside with cargo-fuzz: the
# sidecar's (HTTP/1 heads, chunked bodies, sniffing, xDS translation; in
# sidecar/fuzz) and the GraphQL gateway's own (the token pass over client
# documents, supergraph field sets; in graphql-gateway/fuzz). Targets are in
# <crate>/fuzz/fuzz_targets, seed corpora in <crate>/fuzz/seeds. Each target
# runs for $FUZZ_SECONDS (default 60) from its seeds; any crash, panic, leak
# or timeout fails the script, and libFuzzer's reproducer is kept in
# <crate>/fuzz/artifacts/<target>/ (replay it there with
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

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=()
ran=()
for crate in sidecar graphql-gateway; do
  cd "$root/$crate/fuzz"
  # No sanitizer (-s none): the code fuzzed is safe Rust (the sidecar's one
  # unsafe block, a getsockopt, is not reached from here), so AddressSanitizer
  # would cost build and run time for nothing; overflow checks and debug
  # assertions stay on (cargo-fuzz's default build). `fuzz run` builds first.
  all=$(cargo +nightly fuzz list)
  targets=$all
  if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    targets=$(for t in $FUZZ_TARGETS; do grep -qxF "$t" <<<"$all" && echo "$t"; done || true)
  fi
  for target in $targets; do
    # New inputs go to a scratch corpus; the committed seeds are only read.
    mkdir -p "$work/corpus/$target"
    log="$work/$target.log"
    ran+=("$target")
    echo "fuzz.sh: $crate $target for ${seconds}s"
    if cargo +nightly fuzz run -s none "$target" "$work/corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
      grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^#[0-9]+\s+DONE' "$log" | sed "s/^/  /" || true
    else
      failed+=("$crate/$target")
      echo "fuzz.sh: $crate $target FAILED; the end of its log:" >&2
      tail -n 60 "$log" >&2
    fi
  done
done

# A name in FUZZ_TARGETS that no crate has is a mistake, not a pass.
for t in ${FUZZ_TARGETS:-}; do
  if ! printf '%s\n' "${ran[@]}" | grep -qxF "$t"; then
    echo "fuzz.sh: no fuzz crate has a target $t (see cargo +nightly fuzz list in sidecar/fuzz and graphql-gateway/fuzz)" >&2
    exit 1
  fi
done

if ((${#failed[@]})); then
  echo "fuzz.sh: crashes in: ${failed[*]} (reproducers in <crate>/fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: every target ran ${seconds}s without a crash"
