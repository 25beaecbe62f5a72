"""Driver of tests/bench/graphql.sh (see there for what is measured)."""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import Processes, cpu_seconds, free_port, rss_mb, settle

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "10"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "50"))
# shared: every process may run on every CPU, as in the Guild's benchmark,
# where each gateway gets the same machine. split: the gateway alone on CPU 0,
# the subgraphs and oha on CPU 1.
CPUS = os.environ.get("CPUS", "shared")
if CPUS not in ("shared", "split"):
    raise SystemExit(f"CPUS must be shared or split, not {CPUS!r}")
GATEWAY_CPU, OTHERS_CPU = (None, None) if CPUS == "shared" else (0, 1)
TARGET = os.environ["TARGET_DIR"]
APOLLO = os.environ["APOLLO_DIR"]
# Hive Router's binary (graphql.sh builds it once); left out when unset.
HIVE_ROUTER = os.environ.get("HIVE_ROUTER", "")
# DEDUPE=0: identical in-flight subgraph requests are not shared, by ours nor
# by Hive Router (both share them by default; Apollo Gateway does not).
DEDUPE = os.environ.get("DEDUPE", "1") != "0"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../graphql-gateway/tests/data")

APOLLO_SCRIPT = """
const { ApolloServer } = require('@apollo/server');
const { startStandaloneServer } = require('@apollo/server/standalone');
const { ApolloGateway } = require('@apollo/gateway');
const fs = require('fs');
const gateway = new ApolloGateway({ supergraphSdl: fs.readFileSync(process.argv[2], 'utf8') });
const server = new ApolloServer({ gateway });
startStandaloneServer(server, { listen: { port: Number(process.argv[3]), host: '127.0.0.1' } })
  .then(({ url }) => console.error('apollo gateway at ' + url));
"""




def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_ready(port, body, timeout=60.0):
    """Until the gateway on `port` answers `body` with no errors (a gateway
    up before the subgraphs answers with partial data and errors)."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = post(port, body)
            if not last.get("errors"):
                return
        except Exception as e:
            last = e
        time.sleep(0.2)
    raise SystemExit(f"no answer without errors on {port}: {str(last)[:500]}")






def h2load_latencies(port, body_file, duration, concurrency, cpu=None):
    """`duration` s of the benchmark query over `concurrency` HTTP/1.1
    connections with h2load (on `cpu` if given): (req/s, the sorted
    per-request latencies in ms) from its per-request log."""
    log = tempfile.mktemp(suffix=".log")
    out = subprocess.run(
        ([] if cpu is None else ["taskset", "-c", str(cpu)]) + ["h2load", "--h1", "-D", str(duration), "-c", str(concurrency), "-t", "1",
         "-d", body_file, "-H", "content-type: application/json", "--log-file", log, f"http://127.0.0.1:{port}/graphql"],
        capture_output=True, text=True, check=True,
    ).stdout
    latencies, statuses = [], set()
    with open(log) as f:
        for line in f:
            # start time, status, latency in microseconds
            fields = line.split()
            if len(fields) >= 3:
                statuses.add(fields[1])
                latencies.append(int(fields[2]) / 1000)
    os.unlink(log)
    if statuses - {"200"} or not latencies:
        raise SystemExit(f"unexpected answers from {port}: {statuses}\n{out}")
    latencies.sort()
    return len(latencies) / duration, latencies


def percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def h2load(port, body_file):
    """The same measurement with h2load (HTTP/1.1), where oha is not
    installed: (req/s, p95 ms, p99 ms)."""
    rps, latencies = h2load_latencies(port, body_file, DURATION, CONCURRENCY, OTHERS_CPU)
    return rps, percentile(latencies, 0.95), percentile(latencies, 0.99)


def oha(port, body_file):
    if shutil.which("oha") is None:
        return h2load(port, body_file)
    out = subprocess.run(
        ([] if OTHERS_CPU is None else ["taskset", "-c", str(OTHERS_CPU)]) + ["oha", "--no-tui", "--output-format", "json", "-z", f"{DURATION}s", "-c", str(CONCURRENCY), "-m", "POST",
         "-H", "content-type: application/json", "-D", body_file, f"http://127.0.0.1:{port}/graphql"],
        capture_output=True, text=True, check=True,
    ).stdout
    data = json.loads(out)
    codes = data.get("statusCodeDistribution", {})
    if set(codes) - {"200"}:
        raise SystemExit(f"non-200 answers from {port}: {codes}")
    pct = data["latencyPercentiles"]
    return data["summary"]["requestsPerSec"], pct["p95"] * 1000, pct["p99"] * 1000


def main():
    work = tempfile.mkdtemp()
    env = dict(os.environ, NODE_PATH=os.path.join(APOLLO, "node_modules"), NODE_ENV="production")
    with Processes(work, env) as processes:
        start = processes.start
        sub_port = free_port()
        subgraphs_p = start([f"{TARGET}/examples/bench-subgraphs", str(sub_port)], "subgraphs", OTHERS_CPU)
        with open(os.path.join(DATA, "supergraph.graphql")) as f:
            sdl = f.read().replace("http://0.0.0.0:4200", f"http://127.0.0.1:{sub_port}")
        supergraph = os.path.join(work, "supergraph.graphql")
        with open(supergraph, "w") as f:
            f.write(sdl)
        body_file = os.path.join(DATA, "query.json")
        with open(body_file, "rb") as f:
            body = f.read()
        with open(os.path.join(DATA, "expected-response.json")) as f:
            expected = json.load(f)

        ours = free_port()
        ours_config = os.path.join(work, "gateway.yaml")
        with open(ours_config, "w") as f:
            f.write(f"dedupeSubgraphRequests: {'true' if DEDUPE else 'false'}\n")
        ours_p = start([f"{TARGET}/graphql-gateway", "--supergraph", supergraph, "--config", ours_config, "--listen", f"127.0.0.1:{ours}"], "revmesh", GATEWAY_CPU)
        apollo = free_port()
        script = os.path.join(work, "apollo.js")
        with open(script, "w") as f:
            f.write(APOLLO_SCRIPT)
        apollo_p = start(["node", script, supergraph, str(apollo)], "apollo", GATEWAY_CPU, cwd=APOLLO)
        targets = {"revmesh": (ours, ours_p), "apollo-gateway": (apollo, apollo_p)}
        if HIVE_ROUTER:
            hive = free_port()
            with open(os.path.join(work, "router.config.yaml"), "w") as f:
                f.write(f"supergraph:\n  source: file\n  path: {supergraph}\nhttp:\n  host: 127.0.0.1\n  port: {hive}\n"
                        f"traffic_shaping:\n  all:\n    dedupe_enabled: {'true' if DEDUPE else 'false'}\n")
            hive_p = start([HIVE_ROUTER], "hive-router", GATEWAY_CPU, cwd=work)
            targets["hive-router"] = (hive, hive_p)
        for name, (port, _) in targets.items():
            wait_ready(port, body)
            got = post(port, body)
            if got != expected:
                raise SystemExit(f"{name} does not answer the expected response")
            print(f"{name} answers the expected response", file=sys.stderr)

        results = {n: {"rps": [], "p95": [], "p99": [], "cpu": [], "subgraph_cpu": []} for n in targets}
        for r in range(ROUNDS):
            for name, (port, proc) in targets.items():
                settle([p.pid for _, p in targets.values()] + [subgraphs_p.pid])
                before, sub_before = cpu_seconds(proc.pid), cpu_seconds(subgraphs_p.pid)
                rps, p95, p99 = oha(port, body_file)
                results[name]["cpu"].append((cpu_seconds(proc.pid) - before) / DURATION * 100)
                results[name]["subgraph_cpu"].append((cpu_seconds(subgraphs_p.pid) - sub_before) / DURATION * 100)
                results[name]["rps"].append(rps)
                results[name]["p95"].append(p95)
                results[name]["p99"].append(p99)
            print(f"round {r + 1}/{ROUNDS}: " + ", ".join(f"{n} {results[n]['rps'][-1]:.0f} rps" for n in targets), file=sys.stderr)
        med = {n: {k: statistics.median(v) for k, v in res.items()} for n, res in results.items()}
        rss = {n: rss_mb(p.pid) for n, (_, p) in targets.items()}
        print(f"\nbenchmark query, {CONCURRENCY} connections, median of {ROUNDS} rounds of {DURATION} s, CPUs {CPUS}")
        print(f"{'gateway':16} {'req/s':>9} {'p95 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'CPU %':>6} {'subgraphs CPU %':>16}")
        for n in targets:
            m = med[n]
            print(f"{n:16} {m['rps']:9.1f} {m['p95']:8.1f} {m['p99']:8.1f} {rss[n]:7.1f} {m['cpu']:6.0f} {m['subgraph_cpu']:16.0f}")
        print(f"\nrevmesh/apollo-gateway: {med['revmesh']['rps'] / med['apollo-gateway']['rps']:.1f}x req/s")
        if "hive-router" in med:
            print(f"revmesh/hive-router: {med['revmesh']['rps'] / med['hive-router']['rps']:.2f}x req/s, "
                  f"RSS {rss['revmesh']:.0f} MB vs {rss['hive-router']:.0f} MB")


if __name__ == "__main__":
    main()
