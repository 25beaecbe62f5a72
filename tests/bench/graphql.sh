#!/usr/bin/env bash
# GraphQL gateway throughput, side by side in one run: our gateway, Apollo
# Gateway 2 (npm @apollo/gateway on @apollo/server) and Hive Router 0.3.10
# (HIVE=1; built once with cargo install), all over the same four
# subgraphs (async-graphql, `cargo run --example bench-subgraphs`), both
# answering the benchmark query of shared/bench/graphql at a fixed concurrency.
#
#   bash tests/bench/graphql.sh                   # 5 interleaved rounds of 10 s, 50 connections
#   ROUNDS=3 DURATION=5 CONCURRENCY=50 CPUS=split bash tests/bench/graphql.sh
#   DEDUPE=0 bash tests/bench/graphql.sh          # identical in-flight subgraph requests not shared (ours, Hive Router)
#   ABUSE=1 bash tests/bench/graphql.sh           # our gateway only: the query's latency alone and
#                                                 # while clients send costly documents (graphql_abuse.py)
#
# CPUS=shared (the default): nothing is pinned, so each gateway gets the whole
# machine, shared with the subgraphs and oha, as each gateway gets the same
# 4 vCPUs in the Guild's benchmark. CPUS=split: the gateway alone on CPU 0,
# the subgraphs and oha on CPU 1. Before each round the processes are left to
# go idle. Reported per gateway: median req/s, p95 and p99 latency, RSS after
# the runs, and the CPU of the gateway and of the subgraphs. The first answer
# of each gateway is checked against the expected response.
set -euo pipefail
cd "$(dirname "$0")/../.."
export ROUNDS="${ROUNDS:-5}" DURATION="${DURATION:-10}" CONCURRENCY="${CONCURRENCY:-50}"
if [ "${ABUSE:-0}" = 1 ]; then
  command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
  cargo build --release -p graphql-gateway --bins --examples
  export TARGET_DIR="${CARGO_TARGET_DIR:-target}/release" APOLLO_DIR=""
  exec python3 tests/bench/graphql_abuse.py
fi
command -v oha >/dev/null || cargo install --locked oha
command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; }
apollo="$HOME/.cache/revmesh/apollo-gateway"
if [ ! -d "$apollo/node_modules/@apollo/gateway" ]; then
  mkdir -p "$apollo"
  (cd "$apollo" && npm init -y >/dev/null && npm install --silent @apollo/gateway@2 @apollo/server@4 graphql@16)
fi
# Hive Router 0.3.10's dependencies (ntex) need rustc 1.97: HIVE_TOOLCHAIN
# names a toolchain at least that new (nightly by default). Built once, cached.
export HIVE_ROUTER=""
if [ "${HIVE:-0}" = 1 ]; then
  hive="$HOME/.cache/revmesh/hive-router"
  if [ ! -x "$hive/bin/hive_router" ]; then
    # --features graphiql: its build script then skips fetching the web IDE
    # from npm (that package version is gone from the registry).
    CARGO_TARGET_DIR="$hive/target" cargo "+${HIVE_TOOLCHAIN:-nightly}" install hive-router --version 0.3.10 --locked --features graphiql --root "$hive"
  fi
  HIVE_ROUTER="$hive/bin/hive_router"
fi
cargo build --release -p graphql-gateway --bins --examples
export TARGET_DIR="${CARGO_TARGET_DIR:-target}/release" APOLLO_DIR="$apollo"
exec python3 tests/bench/graphql_bench.py
