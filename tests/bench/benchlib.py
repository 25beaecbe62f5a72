"""What the benchmark drivers share: ports, process accounting, and the
processes a run starts (pinned to a CPU, stopped at the end)."""

import os
import socket
import subprocess


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_service(ip, port, revision=None):
    """Manifests for the control plane's dir source: Service and Endpoints of
    demo/web at ip:port, and with `revision` an injected Pod at that IP (so
    the control plane names its identity, demo/web)."""
    text = f"""apiVersion: v1
kind: Service
metadata: {{name: web, namespace: demo}}
spec:
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: web, namespace: demo}}
subsets:
- addresses: [{{ip: {ip}}}]
  ports: [{{name: http, port: {port}}}]
"""
    if revision:
        text += f"""---
apiVersion: v1
kind: Pod
metadata: {{name: web-0, namespace: demo, labels: {{revmesh.io/rev: {revision}}}}}
spec: {{serviceAccountName: web}}
status: {{podIP: {ip}}}
"""
    return text


def envoy_h2_cluster(name, address, port):
    """An Envoy static cluster speaking HTTP/2 to one address, as YAML at the
    indent of a `clusters:` list item (append a transport_socket for TLS)."""
    return f"""  - name: {name}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {address}, port_value: {port}}}}}}}}}]}}]}}
"""


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pids, idle_share=0.05, window=0.5, timeout=30.0):
    """Waits until the processes are idle: a gateway that fell behind keeps
    working on requests the load generator already gave up on, and that work
    would land in the next target's round."""
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(window)
        if sum(cpu_seconds(p) for p in pids) - before < idle_share * window:
            return
    raise SystemExit(f"processes {pids} stayed busy for {timeout} s after a round")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Processes:
    """Starts commands (pinned with taskset unless `cpu` is None), logs each
    to a file, and stops them all when the `with` block ends."""

    def __init__(self, log_dir, env=None):
        self.log_dir = log_dir
        self.env = env
        self.procs = []

    def start(self, cmd, name, cpu, cwd=None):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
        p = subprocess.Popen(pin + cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=self.env)
        self.procs.append(p)
        return p

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        return False
