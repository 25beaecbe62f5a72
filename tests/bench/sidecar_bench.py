"""Driver of tests/bench/sidecar.sh (see there for what is measured)."""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from benchlib import Processes, cpu_seconds, envoy_h2_cluster, free_port, rss_mb, web_service
import sidecar_pair

ROUNDS = int(os.environ.get("ROUNDS", "5"))
DURATION = int(os.environ.get("DURATION", "5"))
TARGET = os.environ["TARGET_DIR"]
HOST = "web.demo"
HZ = os.sysconf("SC_CLK_TCK")
SHAPES = os.environ.get("SHAPES", "one-hop,two-hop").split(",")




def wait_http(url, headers=None, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout}s")






def wrk(port):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{DURATION}s", "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors", out)
    if errors:
        raise SystemExit(f"errors through port {port}:\n{out}")
    return requests, rps


def oha(port):
    out = subprocess.run(
        ["taskset", "-c", "1", "oha", "--no-tui", "--output-format", "json", "-z", f"{DURATION}s", "-q", "1000", "--latency-correction",
         "-c", "8", "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return pct["p50"] * 1e6, pct["p99"] * 1e6  # microseconds


def main():
    work = tempfile.mkdtemp()
    with Processes(work) as processes:
        start = processes.start
        nginx_port = free_port()
        body = "x" * 1024
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""master_process off; daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 200 '{body}'; }} }} }}
""")
        start(["nginx", "-c", conf], "nginx", 1)

        mesh = os.path.join(work, "mesh")
        os.makedirs(mesh)
        with open(os.path.join(mesh, "web.yaml"), "w") as f:
            f.write(web_service("127.0.0.1", nginx_port))
        xds, tls, debug = free_port(), free_port(), free_port()
        start([f"{TARGET}/control-plane", "--revision", "bench", "--source", f"dir:{mesh}", "--xds-listen", f"127.0.0.1:{xds}",
               "--tls-listen", f"127.0.0.1:{tls}", "--debug-listen", f"127.0.0.1:{debug}"], "control-plane", 1)
        wait_http(f"http://127.0.0.1:{debug}/ready")

        ours = free_port()
        p = [free_port() for _ in range(4)]
        sidecar = start([f"{TARGET}/sidecar", "run", "--revision", "bench", "--control-plane", f"127.0.0.1:{xds}", "--xds-plaintext",
                         "--capture", "false", "--outbound-listen", f"127.0.0.1:{ours}", "--admin-listen", f"127.0.0.1:{p[0]}",
                         "--metrics-listen", f"127.0.0.1:{p[1]}", "--ready-listen", f"127.0.0.1:{p[2]}", "--log-level", "warn",
                         "--worker-threads", "1"], "sidecar", 0)

        envoy_port, envoy_admin = free_port(), free_port()
        bootstrap = os.path.join(work, "envoy.yaml")
        with open(bootstrap, "w") as f:
            f.write(f"""node:
  id: bench-envoy
  cluster: bench
  metadata: {{REVMESH_REVISION: "bench", REVMESH_OUTBOUND_ADDRESS: "127.0.0.1:{envoy_port}", REVMESH_INTERCEPTION: NONE}}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {envoy_admin}}}}}
dynamic_resources:
  ads_config:
    api_type: DELTA_GRPC
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
{envoy_h2_cluster("xds", "127.0.0.1", xds)}""")
        envoy = start(["envoy", "-c", bootstrap, "--concurrency", "1", "-l", "warning", "--base-id", str(free_port())], "envoy", 0)

        haproxy_port = free_port()
        hcfg = os.path.join(work, "haproxy.cfg")
        with open(hcfg, "w") as f:
            f.write(f"""global
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend bench
  bind 127.0.0.1:{haproxy_port}
  default_backend web
backend web
  http-reuse always
  server nginx 127.0.0.1:{nginx_port}
""")
        haproxy = start(["haproxy", "-f", hcfg, "-db"], "haproxy", 0)

        targets = {"direct": nginx_port, "revmesh": ours, "envoy": envoy_port, "haproxy": haproxy_port}
        for name, port in targets.items():
            wait_http(f"http://127.0.0.1:{port}/", {"Host": HOST})
            print(f"{name} answers on {port}", file=sys.stderr)

        one_hop = {"direct": (nginx_port, []), "revmesh": (ours, [sidecar]), "envoy": (envoy_port, [envoy]), "haproxy": (haproxy_port, [haproxy])}
        if "one-hop" in SHAPES:
            report("one hop", measure(one_hop))
        if "two-hop" in SHAPES:
            pair = sidecar_pair.start_pairs(processes, work, TARGET, nginx_port)
            for name, (port, _) in pair.items():
                wait_http(f"http://127.0.0.1:{port}/", {"Host": HOST})
                print(f"{name} answers on {port}", file=sys.stderr)
            report("two-hop mTLS pair (client proxy -> mTLS -> server proxy)", measure({"direct": (nginx_port, []), **pair}))


def measure(targets):
    """Interleaved rounds over `targets` (name -> (port, proxy processes));
    medians per target, with the proxies' RSS summed."""
    results = {name: {"rps": [], "cpu_us": [], "p50": [], "p99": []} for name in targets}
    for r in range(ROUNDS):
        for name, (port, procs) in targets.items():
            before = sum(cpu_seconds(p.pid) for p in procs)
            requests, rps = wrk(port)
            used = sum(cpu_seconds(p.pid) for p in procs) - before
            p50, p99 = oha(port)
            res = results[name]
            res["rps"].append(rps)
            res["cpu_us"].append(used * 1e6 / requests)
            res["p50"].append(p50)
            res["p99"].append(p99)
        print(f"round {r + 1}/{ROUNDS}: " + ", ".join(f"{n} {results[n]['rps'][-1]:.0f} rps" for n in targets), file=sys.stderr)
    med = {n: {k: statistics.median(v) for k, v in res.items()} for n, res in results.items()}
    for n, (_, procs) in targets.items():
        med[n]["rss"] = sum(rss_mb(p.pid) for p in procs)
    return med


def report(shape, med):
    direct = med["direct"]
    print(f"\n{shape}, HTTP/1.1 keep-alive, 1 KB responses; median of {ROUNDS} rounds of {DURATION} s")
    print(f"{'target':10} {'max req/s':>10} {'CPU µs/req':>11} {'added p50 µs':>13} {'added p99 µs':>13} {'RSS MB':>7}")
    for n, m in med.items():
        added50 = m["p50"] - direct["p50"] if n != "direct" else 0.0
        added99 = m["p99"] - direct["p99"] if n != "direct" else 0.0
        print(f"{n:10} {m['rps']:10.0f} {m['cpu_us']:11.1f} {added50:13.0f} {added99:13.0f} {m['rss']:7.1f}")
    ours_m, env_m, hap_m = med["revmesh"], med["envoy"], med["haproxy"]
    print(f"\nrevmesh/envoy: CPU per request {ours_m['cpu_us'] / env_m['cpu_us']:.2f}x, max req/s {ours_m['rps'] / env_m['rps']:.2f}x, RSS {ours_m['rss'] / env_m['rss']:.2f}x")
    print(f"revmesh/haproxy: CPU per request {ours_m['cpu_us'] / hap_m['cpu_us']:.2f}x, max req/s {ours_m['rps'] / hap_m['rps']:.2f}x")
    if "haproxy-h2" in med:
        h2_m = med["haproxy-h2"]
        print(f"revmesh/haproxy-h2: CPU per request {ours_m['cpu_us'] / h2_m['cpu_us']:.2f}x, max req/s {ours_m['rps'] / h2_m['rps']:.2f}x")


if __name__ == "__main__":
    main()
