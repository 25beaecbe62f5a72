#!/usr/bin/env bash
# The canary upgrade under live traffic, measured on the real node: runs
# tests/e2e/tests/node_upgrade.rs (20 server workloads in 5 namespaces, one
# meshed load pod sending 40 req/s spread over all of them, `meshctl upgrade
# start 10% → restart → advance 100% → rollback --to-zero → advance 10% →
# advance 100% → finish`, a restart after each step) and prints what it
# recorded: failed requests with their causes, latency while pods restart
# against the steady state before the upgrade (same load pod, same run: the
# baseline), each step's wall time, pods restarted per minute.
#
#   sudo bash tests/bench/upgrade.sh            # needs root, like .ci/run
#   RUNS=3 bash tests/bench/upgrade.sh          # several runs, one line each
#
# Latency figures are per 5 s window of the load generator: the median
# window's p50 and p99 in steady state and during the upgrade, and the worst
# window's p99 during the upgrade.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/revmesh/target}"
runs="${RUNS:-1}"
bash tests/harness/install-kube.sh >/dev/null
cargo build --workspace --bins >/dev/null 2>&1 || cargo build --workspace --bins
for run in $(seq 1 "$runs"); do
  report="$(mktemp)"
  REVMESH_UPGRADE_REPORT="$report" cargo test -q -p revmesh-e2e --test node_upgrade >/dev/null 2>"$report.log" || {
    echo "run $run: the upgrade test failed (its report, if any, follows; log: $report.log)"
  }
  python3 - "$report" "$run" <<'EOF'
import json, sys
path, run = sys.argv[1], sys.argv[2]
try:
    r = json.load(open(path))
except (OSError, ValueError):
    sys.exit(f"run {run}: no report was written")
ok, failed = r["requests_ok"], r["requests_failed"]
print(f"run {run}: {r['workloads']} workloads at {r['rate_per_second']} req/s: {ok} requests ok, {failed} failed {r['failures_by_cause']}")
s50, s99 = r["steady_median_window_p50_ms"], r["steady_median_window_p99_ms"]
u50, u99, w99 = r["upgrade_median_window_p50_ms"], r["upgrade_median_window_p99_ms"], r["upgrade_worst_window_p99_ms"]
print(f"  latency p50 {s50:.1f} ms steady, {u50:.1f} ms during the upgrade ({u50 / s50:.2f}x)")
print(f"  latency p99 {s99:.1f} ms steady, {u99:.1f} ms during the upgrade ({u99 / s99:.2f}x), worst window {w99:.1f} ms")
for step in r["steps"]:
    print(f"  step {step['step']:<16} {step['moved']:>3} workloads moved  {step['seconds']:6.1f} s")
print(f"  {r['pods_restarted']} pods restarted, {r['pods_per_minute']:.1f} pods per minute; fleet of {r['workloads']} ready {r['fleet_ready_seconds']:.0f} s after the node")
for f in r["failures"][:20]:
    print(f"  failed: {f['target']} at {f['at_s']:.1f} s: {f['cause']}: {f['detail']}")
EOF
done
