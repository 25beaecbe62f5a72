#!/usr/bin/env bash
# Control-plane scale: N simulated Delta-xDS proxies (xds-load) against one
# control plane serving S services from a watched folder; measures the control
# plane's RSS and CPU and the convergence time after an endpoint change
# (including the folder poll, which plays the debounce's part here).
#
#   bash tests/bench/xds.sh                 # 1,000 services, 2,000 proxies
#   SERVICES=100 PROXIES=200 bash tests/bench/xds.sh
#   TRANSPORT=tls bash tests/bench/xds.sh   # the proxies use the TLS port and
#                                           # authenticate with a bootstrap token,
#                                           # as sidecars do (default: plaintext)
#
# No baseline can run here (istiod is not in the package registries); the
# issue's comparison is Istio's published 1 vCPU / 1.5 GB for 2,000 sidecars and
# 1,000 services.
set -euo pipefail
cd "$(dirname "$0")/../.."
SERVICES="${SERVICES:-1000}"
PROXIES="${PROXIES:-2000}"
ROUNDS="${ROUNDS:-5}"
TRANSPORT="${TRANSPORT:-plaintext}"
case "$TRANSPORT" in plaintext|tls) ;; *) echo "TRANSPORT is plaintext or tls, not $TRANSPORT" >&2; exit 2 ;; esac
cargo build --release -p control-plane --bins
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/mesh"
python3 - "$work/mesh" "$SERVICES" <<'PY'
import sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    ns = f"team-{i % 50}"
    with open(f"{root}/svc-{i:04d}.yaml", "w") as f:
        f.write(f"""apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: {ns}}}
spec:
  clusterIP: 10.{96 + i // 65000}.{(i // 250) % 256}.{i % 250 + 1}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
""")
    if i == 0:
        continue  # svc-0's Endpoints live in their own file: the one the benchmark rewrites
    with open(f"{root}/svc-{i:04d}.yaml", "a") as f:
        f.write(f"""---
apiVersion: v1
kind: Endpoints
metadata: {{name: svc-{i}, namespace: {ns}}}
subsets:
- addresses: [{{ip: 10.2.{i // 250}.{i % 250 + 1}}}, {{ip: 10.3.{i // 250}.{i % 250 + 1}}}]
  ports: [{{name: http, port: 8080}}]
""")
with open(f"{root}/changed-endpoints.yaml", "w") as f:
    f.write("""apiVersion: v1
kind: Endpoints
metadata: {name: svc-0, namespace: team-0}
subsets:
- addresses: [{ip: 10.1.0.1}]
  ports: [{name: http, port: 8080}]
""")
PY

read -r xds debug ca < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
token="bench-$(od -An -tx8 -N16 /dev/urandom | tr -d ' \n')"
echo "$token team-0/bench" >"$work/tokens"
taskset -c 0 "$target/control-plane" --revision bench --source "dir:$work/mesh" --poll-interval 100ms \
  --xds-listen "127.0.0.1:$xds" --debug-listen "127.0.0.1:$debug" --ca-listen "127.0.0.1:$ca" \
  --ca-bootstrap-tokens "$work/tokens" 2>"$work/cp.log" &
cp_pid=$!
pids+=("$cp_pid")
sleep 1
kill -0 "$cp_pid" || { cat "$work/cp.log"; exit 1; }
if [ "$TRANSPORT" = tls ]; then
  # The root stands in for the ConfigMap a pod mounts; fetched without verification.
  curl -sk "https://127.0.0.1:$ca/v1/root" >"$work/root.pem"
  export XDS_LOAD_TOKEN="$token"
  connect=(--xds "127.0.0.1:$ca" --tls-root "$work/root.pem" --server-name localhost --identity team-0/bench)
else
  connect=(--xds "127.0.0.1:$xds")
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$cp_pid/stat"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$cp_pid/status"; }
hz=$(getconf CLK_TCK)
t0=$(date +%s.%N); c0=$(cpu_ticks)
echo "transport: $TRANSPORT"
taskset -c 1 "$target/xds-load" "${connect[@]}" --revision bench --proxies "$PROXIES" \
  --expect-clusters "$SERVICES" --change-file "$work/mesh/changed-endpoints.yaml" \
  --change-cluster "outbound|80||svc-0.team-0.svc.cluster.local" --change-object team-0/svc-0 --rounds "$ROUNDS"
t1=$(date +%s.%N); c1=$(cpu_ticks)
echo "control plane RSS at the end: $(rss_mb) MB (peak $(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$cp_pid/status") MB)"
python3 -c "print(f'control plane CPU: {($c1 - $c0) / $hz:.1f} s over {$t1 - $t0:.1f} s of run ({($c1 - $c0) / $hz / ($t1 - $t0) * 100:.0f}% of one core)')"
echo "pushes: $(curl -s "127.0.0.1:$debug/metrics" | awk '/^revmesh_control_plane_xds_pushes_total/ {s += $2} END {print s}')"
