"""A proxyless gRPC client (grpcio's built-in xDS client), driven over stdin.

The environment's GRPC_XDS_BOOTSTRAP names the bootstrap file: the control
plane's address and this client's node (id, metadata). Each line on stdin is a
JSON command:

    {"target": "xds:///echo.demo:50051", "calls": 100, "timeout": 5}

and is answered with one JSON line on stdout:

    {"answers": {"a": 80, "b": 20}, "errors": {"UNAVAILABLE": 0}, "last_error": null}

where "answers" counts the replies by the answering server's name. Channels are
kept per target across commands, so a later command sees how the same live
channel follows configuration changes.
"""

import json
import sys

import grpc

METHOD = "/revmesh.test.Echo/Who"


def run(channels, command):
    target = command["target"]
    if target not in channels:
        channels[target] = grpc.insecure_channel(target)
    who = channels[target].unary_unary(METHOD)
    answers, errors, last_error = {}, {}, None
    for _ in range(int(command.get("calls", 1))):
        try:
            name = who(b"", timeout=float(command.get("timeout", 5))).decode()
            answers[name] = answers.get(name, 0) + 1
        except grpc.RpcError as e:
            code = e.code().name
            errors[code] = errors.get(code, 0) + 1
            last_error = f"{code}: {e.details()}"
    return {"answers": answers, "errors": errors, "last_error": last_error}


def main():
    channels = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            reply = run(channels, json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            reply = {"answers": {}, "errors": {"BAD_COMMAND": 1}, "last_error": f"command {line!r}: {e}"}
        print(json.dumps(reply), flush=True)
    for channel in channels.values():
        channel.close()


if __name__ == "__main__":
    main()
