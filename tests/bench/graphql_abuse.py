"""Driver of `ABUSE=1 bash tests/bench/graphql.sh`: the benchmark query's
latency (h2load, HTTP/1.1) on our gateway alone, then again while abusive clients keep sending
costly documents (a 1 MB alias bomb, a 1 MB token flood, fragments that
double per level, a document nested too deep). The abusive documents are
refused by the gateway's token pre-pass; the point is that the normal
query's latency barely moves. Also reported: the abusive requests answered
per second and their median answer time (as seen by the client, upload of
the megabyte included)."""

import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

from benchlib import Processes, free_port, settle
from graphql_bench import DATA, TARGET, h2load_latencies, percentile, post, wait_ready

DURATION = int(os.environ.get("DURATION", "10"))
CONCURRENCY = int(os.environ.get("CONCURRENCY", "10"))
ABUSERS = int(os.environ.get("ABUSERS", "4"))


def abusive_documents():
    aliases = ["{ "]
    size, i = 2, 0
    while size < 1 << 20:
        part = f"a{i}: __typename "
        aliases.append(part)
        size += len(part)
        i += 1
    aliases.append("}")
    doubling = ["{ me { ...F0 } }"]
    for level in range(40):
        doubling.append(f"fragment F{level} on User {{ id ...F{level + 1} ...F{level + 1} }}")
    doubling.append("fragment F40 on User { id }")
    return {
        "alias bomb (1 MB)": "".join(aliases),
        "token flood (1 MB)": "{ " + "__typename " * ((1 << 20) // 11) + "}",
        "doubling fragments (2^40 fields)": "\n".join(doubling),
        "depth 200": "{ me " * 200 + "}" * 200,
    }


def h2load(port, body_file):
    """The benchmark query for DURATION s over CONCURRENCY HTTP/1.1
    connections: (req/s, p50 ms, p99 ms)."""
    rps, latencies = h2load_latencies(port, body_file, DURATION, CONCURRENCY)
    return rps, percentile(latencies, 0.5), percentile(latencies, 0.99)


def abuse(port, bodies, stop, times, refused_wrongly):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while not stop.is_set():
        body = bodies[i % len(bodies)]
        i += 1
        started = time.perf_counter()
        conn.request("POST", "/graphql", body=body, headers={"content-type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        times.append(time.perf_counter() - started)
        code = answer.get("errors", [{}])[0].get("extensions", {}).get("code")
        if code != "OPERATION_LIMIT_EXCEEDED":
            refused_wrongly.append(answer)


def main():
    work = tempfile.mkdtemp()
    with Processes(work, dict(os.environ)) as processes:
        sub_port = free_port()
        subgraphs_p = processes.start([f"{TARGET}/examples/bench-subgraphs", str(sub_port)], "subgraphs", None)
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
        port = free_port()
        gateway_p = processes.start([f"{TARGET}/graphql-gateway", "--supergraph", supergraph, "--listen", f"127.0.0.1:{port}"], "revmesh", None)
        wait_ready(port, body)
        if post(port, body) != expected:
            raise SystemExit("the gateway does not answer the expected response")
        documents = abusive_documents()
        bodies = [json.dumps({"query": q}).encode() for q in documents.values()]
        for name, b in zip(documents, bodies):
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/graphql", body=b, headers={"content-type": "application/json"})
            answer = json.loads(conn.getresponse().read())
            took = (time.perf_counter() - started) * 1000
            print(f"{name}: {answer['errors'][0]['message']!r} in {took:.1f} ms", file=sys.stderr)

        settle([gateway_p.pid, subgraphs_p.pid])
        quiet = h2load(port, body_file)
        stop, times, wrong = threading.Event(), [], []
        threads = [threading.Thread(target=abuse, args=(port, bodies, stop, times, wrong)) for _ in range(ABUSERS)]
        for t in threads:
            t.start()
        try:
            loaded = h2load(port, body_file)
        finally:
            stop.set()
            for t in threads:
                t.join()
        if wrong:
            raise SystemExit(f"an abusive document was not refused by a limit: {wrong[0]}")
        print(f"\nbenchmark query, {CONCURRENCY} connections, {DURATION} s each; {ABUSERS} abusive clients in the second run")
        print(f"{'':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
        print(f"{'alone':28} {quiet[0]:8.1f} {quiet[1]:8.2f} {quiet[2]:8.2f}")
        print(f"{'while abusive clients run':28} {loaded[0]:8.1f} {loaded[1]:8.2f} {loaded[2]:8.2f}")
        print(f"abusive documents refused: {len(times) / DURATION:.0f}/s, median {statistics.median(times) * 1000:.1f} ms each (client side, upload included)")


if __name__ == "__main__":
    main()
