"""The two-hop shape of tests/bench/sidecar.sh: a client-side proxy, mutual
TLS between proxies, a server-side proxy, then nginx. Three pairs, all on
loopback, the server side on 127.0.0.2 like a second pod:

* revmesh: two sidecars of one control plane (dir mode, with its CA and
  bootstrap tokens). The client sidecar gets its certificate from the CA,
  routes by Host, and speaks HTTP/2 inside TLS 1.3 to the server sidecar,
  whose SPIFFE identity it checks; the server sidecar terminates mTLS and
  forwards to nginx.
* envoy: two Envoy 1.40 with a static configuration doing the same: HTTP/2
  inside mutual TLS, the server's SPIFFE ID checked by the client.
* haproxy: two haproxy, HTTP/1.1 inside mutual TLS (haproxy checks the chain,
  not the SPIFFE ID).
* haproxy-h2: the same with HTTP/2 inside mutual TLS, as the other two pairs
  (one multiplexed connection between the proxies).

Every certificate comes from one throwaway root made with openssl.
"""

import os
import subprocess
import time

from benchlib import envoy_h2_cluster, free_port, web_service

SERVER_IP = "127.0.0.2"
TRUST = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST}/ns/demo/sa/client"
SERVER_ID = f"spiffe://{TRUST}/ns/demo/sa/web"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki):
    """A P-256 root, and a leaf for each side with its SPIFFE ID as URI SAN."""
    os.makedirs(pki, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/O=Revmesh bench/CN=bench root",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=pki)
    for name, spiffe in (("client", CLIENT_ID), ("server", SERVER_ID)):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", f"/O=Revmesh bench/CN={name}", cwd=pki)
        with open(os.path.join(pki, f"{name}.ext"), "w") as f:
            f.write(f"subjectAltName=URI:{spiffe},DNS:{name}\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
                "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
        with open(os.path.join(pki, f"{name}.pem"), "w") as out:
            for part in (f"{name}.crt", f"{name}.key"):
                with open(os.path.join(pki, part)) as f:
                    out.write(f.read())


def wait_port(host, port, timeout=30.0):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {host}:{port} after {timeout}s")


def start_revmesh(start, work, target, nginx_port, pki):
    mesh = os.path.join(work, "pair-mesh")
    os.makedirs(mesh, exist_ok=True)
    inbound = free_port()
    with open(os.path.join(mesh, "web.yaml"), "w") as f:
        f.write(web_service(SERVER_IP, inbound, revision="pair"))
    tokens = {"client": os.urandom(16).hex(), "web": os.urandom(16).hex()}
    with open(os.path.join(work, "pair-tokens"), "w") as f:
        f.write("".join(f"{t} demo/{sa}\n" for sa, t in tokens.items()))
    for sa, t in tokens.items():
        with open(os.path.join(work, f"pair-{sa}.token"), "w") as f:
            f.write(t)
    xds, tls, debug = free_port(), free_port(), free_port()
    start([f"{target}/control-plane", "--revision", "pair", "--source", f"dir:{mesh}", "--xds-listen", f"127.0.0.1:{xds}",
           "--tls-listen", f"127.0.0.1:{tls}", "--debug-listen", f"127.0.0.1:{debug}", "--ca-cert", f"{pki}/ca.crt",
           "--ca-key", f"{pki}/ca.key", "--ca-bootstrap-tokens", os.path.join(work, "pair-tokens")], "pair-control-plane", 1)
    wait_port("127.0.0.1", tls)

    def sidecar(sa, ip, outbound, extra):
        admin, metrics, ready = free_port(), free_port(), free_port()
        return start([f"{target}/sidecar", "run", "--revision", "pair", "--control-plane", f"127.0.0.1:{tls}",
                      "--control-plane-name", "control-plane-pair.revmesh-system.svc", "--ca-root", f"{pki}/ca.crt",
                      "--token-path", os.path.join(work, f"pair-{sa}.token"), "--capture", "false",
                      "--outbound-listen", f"{ip}:{outbound}", "--admin-listen", f"{ip}:{admin}", "--metrics-listen", f"{ip}:{metrics}",
                      "--ready-listen", f"{ip}:{ready}", "--pod-name", f"{sa}-0", "--pod-namespace", "demo", "--service-account", sa, "--workload", sa,
                      "--log-level", "warn", "--worker-threads", "1", *extra], f"pair-sidecar-{sa}", 0)

    server = sidecar("web", SERVER_IP, free_port(), ["--inbound-listen", f"{SERVER_IP}:{inbound}", "--inbound-target", f"127.0.0.1:{nginx_port}",
                                                    "--inbound-mode", "STRICT"])
    client_port = free_port()
    client = sidecar("client", "127.0.0.1", client_port, [])
    return client_port, [client, server]


def start_envoy(start, work, nginx_port, pki):
    client_port, server_port = free_port(), free_port()
    tls_common = f"""tls_certificates: [{{certificate_chain: {{filename: {pki}/{{name}}.crt}}, private_key: {{filename: {pki}/{{name}}.key}}}}]"""
    client = f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {free_port()}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {client_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: client
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: web}}}}]}}]}}
  clusters:
{envoy_h2_cluster("web", SERVER_IP, server_port)}    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: web
        common_tls_context:
          alpn_protocols: [h2]
          {tls_common.replace("{name}", "client")}
          validation_context:
            trusted_ca: {{filename: {pki}/ca.crt}}
            match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: "{SERVER_ID}"}}}}]
"""
    server = f"""admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {free_port()}}}}}}}
static_resources:
  listeners:
  - address: {{socket_address: {{address: {SERVER_IP}, port_value: {server_port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            {tls_common.replace("{name}", "server")}
            validation_context:
              trusted_ca: {{filename: {pki}/ca.crt}}
              match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: "spiffe://{TRUST}/"}}}}]
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: server
          codec_type: AUTO
          http_filters: [{{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]
          route_config: {{virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: app}}}}]}}]}}
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{cluster_name: app, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {nginx_port}}}}}}}}}]}}]}}
"""
    procs = []
    for name, text in (("client", client), ("server", server)):
        path = os.path.join(work, f"pair-envoy-{name}.yaml")
        with open(path, "w") as f:
            f.write(text)
        procs.append(start(["envoy", "-c", path, "--concurrency", "1", "-l", "warning", "--base-id", str(free_port())], f"pair-envoy-{name}", 0))
    return client_port, procs


def start_haproxy(start, work, nginx_port, pki, inner="http/1.1"):
    """`inner` is the protocol inside mTLS, negotiated by ALPN: "http/1.1" or "h2"."""
    client_port, server_port = free_port(), free_port()
    name = "haproxy" if inner == "http/1.1" else "haproxy-h2"
    defaults = """global
  nbthread 1
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
"""
    client = defaults + f"""frontend bench
  bind 127.0.0.1:{client_port}
  default_backend web
backend web
  http-reuse always
  server web {SERVER_IP}:{server_port} ssl crt {pki}/client.pem ca-file {pki}/ca.crt verify required sni str(server) verifyhost server alpn {inner}
"""
    server = defaults + f"""frontend mtls
  bind {SERVER_IP}:{server_port} ssl crt {pki}/server.pem ca-file {pki}/ca.crt verify required alpn {inner}
  default_backend app
backend app
  http-reuse always
  server nginx 127.0.0.1:{nginx_port}
"""
    procs = []
    for side, text in (("client", client), ("server", server)):
        path = os.path.join(work, f"pair-{name}-{side}.cfg")
        with open(path, "w") as f:
            f.write(text)
        procs.append(start(["haproxy", "-f", path, "-db"], f"pair-{name}-{side}", 0))
    return client_port, procs


def start_pairs(processes, work, target, nginx_port):
    """Starts the three pairs; name -> (client-side port, both processes)."""
    pki = os.path.join(work, "pki")
    make_pki(pki)
    start = processes.start
    return {
        "revmesh": start_revmesh(start, work, target, nginx_port, pki),
        "envoy": start_envoy(start, work, nginx_port, pki),
        "haproxy": start_haproxy(start, work, nginx_port, pki),
        "haproxy-h2": start_haproxy(start, work, nginx_port, pki, inner="h2"),
    }
