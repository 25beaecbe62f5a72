"""Real grpcio servers for the control plane's proxyless gRPC test.

Usage: echo_server.py NAME [NAME...]

Starts one plaintext gRPC server per NAME on a free loopback port. Each answers
the unary method /revmesh.test.Echo/Who with its own NAME, so a client can tell
which backend served a call. Prints one JSON line, {"NAME": port, ...}, once all
are listening, then serves until stdin closes or the process is killed.
"""

import json
import sys
from concurrent import futures

import grpc

SERVICE = "revmesh.test.Echo"


def echo_server(name):
    def who(request, context):
        return name.encode()

    # Bytes in, bytes out: no generated code, so the test needs no protoc step.
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.exit(f"echo server {name}: could not listen on a loopback port")
    server.start()
    return server, port


def main():
    names = sys.argv[1:]
    if not names:
        sys.exit("usage: echo_server.py NAME [NAME...]")
    servers = {}
    for name in names:
        servers[name] = echo_server(name)
    print(json.dumps({name: port for name, (_, port) in servers.items()}), flush=True)
    sys.stdin.read()
    for server, _ in servers.values():
        server.stop(grace=None)


if __name__ == "__main__":
    main()
