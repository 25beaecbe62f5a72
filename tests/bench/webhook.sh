#!/usr/bin/env bash
# Webhook admissions/s and latency on one core, on loopback, side by side with
# the direct path: nginx answering the same AdmissionReview response from memory
# over the same TLS, so the ratio shows what injection itself costs.
#
#   bash tests/bench/webhook.sh            # 5 rounds, 20 s each
#   ROUNDS=3 DURATION=10 bash tests/bench/webhook.sh
#
# Pins the server to CPU 0 and the load generator (oha, from crates.io) to CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-20}"
CONNECTIONS="${CONNECTIONS:-16}"

command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
command -v oha >/dev/null || cargo install --locked oha
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
cargo build --release -p webhook -p meshctl
target="${CARGO_TARGET_DIR:-target}/release"

work="$(mktemp -d)"
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"; }
pids=()
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=bench" -addext "subjectAltName=IP:127.0.0.1" \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
cp examples/rollouts.yml "$work/rollouts.yml"

# A realistic pod: what the ReplicaSet controller submits for examples/deployment.yaml.
cat >"$work/review.json" <<'JSON'
{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"7f1a2b3c-0000-4000-8000-000000000001",
"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
"operation":"CREATE","namespace":"payments-eu","userInfo":{"username":"system:serviceaccount:kube-system:replicaset-controller"},
"object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"checkout-api-5d8f7c9b6-","namespace":"payments-eu",
"labels":{"app":"checkout-api","pod-template-hash":"5d8f7c9b6","team":"payments"},
"annotations":{"prometheus.io/scrape":"true","sidecar.revmesh.io/proxyMemory":"96Mi"},
"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"checkout-api-5d8f7c9b6","uid":"8c1b","controller":true,"blockOwnerDeletion":true}]},
"spec":{"volumes":[{"name":"default-token-abcde","secret":{"secretName":"default-token-abcde"}},{"name":"config","configMap":{"name":"checkout"}}],
"containers":[{"name":"app","image":"registry.example/checkout:2.3.1","ports":[{"containerPort":8080,"protocol":"TCP"}],
"env":[{"name":"LOG_LEVEL","value":"info"},{"name":"DB_HOST","value":"postgres.payments-eu.svc"}],
"resources":{"requests":{"cpu":"250m","memory":"256Mi"},"limits":{"cpu":"1","memory":"512Mi"}},
"readinessProbe":{"httpGet":{"path":"/ready","port":8080}},"volumeMounts":[{"name":"config","mountPath":"/etc/checkout"},
{"name":"default-token-abcde","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}],
"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}],
"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"default",
"serviceAccount":"default","securityContext":{},"schedulerName":"default-scheduler","priority":0,"enableServiceLinks":true}},
"dryRun":false}}
JSON

wh_port=18443; wh_metrics=18444; ngx_port=18445
taskset -c 0 "$target/webhook" --listen "127.0.0.1:$wh_port" --metrics-listen "127.0.0.1:$wh_metrics" \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --rollouts "$work/rollouts.yml" 2>"$work/webhook.log" &
pids+=($!)

# The baseline answers with the webhook's own response to this review.
curl -sk -X POST -H 'Content-Type: application/json' --data-binary "@$work/review.json" \
  --retry 20 --retry-connrefused --retry-delay 0 "https://127.0.0.1:$wh_port/inject" >"$work/response.json"
python3 - "$work" "$ngx_port" <<'PY'
import json, sys
work, port = sys.argv[1], sys.argv[2]
body = open(f"{work}/response.json").read().strip().replace("\\", "\\\\").replace("'", "\\'")
open(f"{work}/nginx.conf", "w").write(f"""
worker_processes 1; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_buffer_size 64k;
  server {{ listen 127.0.0.1:{port} ssl; http2 on;
    ssl_certificate {work}/tls.crt; ssl_certificate_key {work}/tls.key;
    location / {{ default_type application/json; return 200 '{body}'; }} }} }}
""")
PY
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
sleep 1

run() { # name url -> "rps p50_ms p99_ms"
  taskset -c 1 oha --no-tui -j -z "${DURATION}s" -c "$CONNECTIONS" --insecure -m POST \
    -H 'Content-Type: application/json' -D "$work/review.json" "$2" >"$work/$1.json"
  python3 - "$work/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0); total = sum(codes.values()) or 1
print(f'{s["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {ok/total:.4f}')
PY
}

echo "round webhook_rps webhook_p50_ms webhook_p99_ms nginx_rps nginx_p50_ms nginx_p99_ms"
for round in $(seq 1 "$ROUNDS"); do
  read -r w_rps w_p50 w_p99 w_ok < <(run webhook "https://127.0.0.1:$wh_port/inject")
  read -r n_rps n_p50 n_p99 n_ok < <(run nginx "https://127.0.0.1:$ngx_port/inject")
  [[ "$w_ok" == "1.0000" ]] || echo "warning: webhook answered non-200 to some requests ($w_ok ok)" >&2
  echo "$round $w_rps $w_p50 $w_p99 $n_rps $n_p50 $n_p99" | tee -a "$work/rounds.txt"
done
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
med = lambda i: statistics.median(r[i] for r in rows)
print(f"median webhook: {med(1):.0f} admissions/s, p50 {med(2):.3f} ms, p99 {med(3):.3f} ms")
print(f"median nginx static baseline: {med(4):.0f} req/s, p50 {med(5):.3f} ms, p99 {med(6):.3f} ms")
print(f"webhook/baseline throughput ratio: {med(1)/med(4):.2f}")
PY
