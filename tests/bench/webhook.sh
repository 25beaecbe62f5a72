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
CONNECTIONS="${CONNECTIONS:-16}"   # closed-loop throughput runs
RATE_CONNECTIONS="${RATE_CONNECTIONS:-4}"   # fixed-rate latency runs

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

read -r wh_port wh_metrics ngx_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
taskset -c 0 "$target/webhook" --listen "127.0.0.1:$wh_port" --metrics-listen "127.0.0.1:$wh_metrics" \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --rollouts "$work/rollouts.yml" 2>"$work/webhook.log" &
pids+=($!)
sleep 0.5
kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/webhook.log"; echo "the webhook did not start" >&2; exit 1; }

# The baseline answers with the webhook's own response to this review.
curl -sk -X POST -H 'Content-Type: application/json' --data-binary "@$work/review.json" \
  --retry 20 --retry-connrefused --retry-delay 0 "https://127.0.0.1:$wh_port/inject" >"$work/response.json"
cat >"$work/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 1024; }
http { access_log off; client_body_buffer_size 64k;
  server { listen 127.0.0.1:$ngx_port ssl;
    ssl_certificate $work/tls.crt; ssl_certificate_key $work/tls.key;
    # POST to a static file is a 405 in nginx: answer it by serving the file as GET.
    location /inject { error_page 405 =200 /response.json; return 405; }
    location = /response.json { default_type application/json; root $work; } } }
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
sleep 1

run() { # name url [oha args...] -> "rps p50_ms p99_ms ok_fraction"
  local name="$1" url="$2" conns="$3"; shift 3
  taskset -c 1 oha --no-tui --output-format json -z "${DURATION}s" -c "$conns" --insecure -m POST \
    -H 'Content-Type: application/json' -D "$work/review.json" "$@" "$url" >"$work/$name.json"
  python3 - "$work/$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]; p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
ok = codes.get("200", 0); total = sum(codes.values()) or 1
print(f'{s["requestsPerSec"]:.0f} {p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {ok/total:.4f}')
PY
}

# Each round, interleaved: maximum throughput (closed loop), then latency at a
# fixed RATE req/s with coordinated-omission correction.
RATE="${RATE:-5000}"
echo "round webhook_max_rps nginx_max_rps | at ${RATE}/s: webhook_p50_ms webhook_p99_ms nginx_p50_ms nginx_p99_ms"
for round in $(seq 1 "$ROUNDS"); do
  read -r w_rps _ _ w_ok < <(run webhook-max "https://127.0.0.1:$wh_port/inject" "$CONNECTIONS")
  read -r n_rps _ _ _ < <(run nginx-max "https://127.0.0.1:$ngx_port/inject" "$CONNECTIONS")
  read -r _ w_p50 w_p99 w_ok2 < <(run webhook-rate "https://127.0.0.1:$wh_port/inject" "$RATE_CONNECTIONS" -q "$RATE" --latency-correction)
  read -r _ n_p50 n_p99 _ < <(run nginx-rate "https://127.0.0.1:$ngx_port/inject" "$RATE_CONNECTIONS" -q "$RATE" --latency-correction)
  [[ "$w_ok" == "1.0000" && "$w_ok2" == "1.0000" ]] || echo "warning: webhook answered non-200 to some requests" >&2
  echo "$round $w_rps $n_rps $w_p50 $w_p99 $n_p50 $n_p99" | tee -a "$work/rounds.txt"
done
python3 - "$work/rounds.txt" "$RATE" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
med = lambda i: statistics.median(r[i] for r in rows)
print(f"median webhook: {med(1):.0f} admissions/s max; at {sys.argv[2]}/s p50 {med(3):.3f} ms, p99 {med(4):.3f} ms")
print(f"median nginx static baseline: {med(2):.0f} req/s max; at {sys.argv[2]}/s p50 {med(5):.3f} ms, p99 {med(6):.3f} ms")
print(f"webhook/baseline throughput ratio: {med(1)/med(2):.2f}")
PY
