"""What the benchmark drivers share: ports, process accounting, and the
processes a run starts (pinned to a CPU, stopped at the end)."""

import os
import socket
import subprocess


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Processes:
    """Starts commands pinned with taskset, logs each to a file, and stops
    them all when the `with` block ends."""

    def __init__(self, log_dir, env=None):
        self.log_dir = log_dir
        self.env = env
        self.procs = []

    def start(self, cmd, name, cpu, cwd=None):
        log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=self.env)
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
