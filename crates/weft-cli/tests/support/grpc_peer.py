"""A real gRPC server and client (grpcio) for weft's end-to-end tests.

  grpc_peer.py server          prints {"event":"ready","address":...}, serves until killed
  grpc_peer.py client ADDR     runs every call kind against ADDR, prints one JSON result
  grpc_peer.py hold ADDR       one long bidirectional stream: prints {"event":"ready"}, then
                               sends every stdin line on the stream and prints {"sent","reply"};
                               ends the stream on EOF or "end"

Messages are raw bytes (no protobuf schema needed): unary, server streaming, client
streaming and bidirectional streaming, trailing metadata and error statuses.
"""
import json
import os
import sys
from concurrent import futures

import grpc

SERVICE = "weft.test.Echo"


def unary(request, context):
    meta = dict(context.invocation_metadata())
    if meta.get("x-fail") == "yes":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    context.set_trailing_metadata((("x-trailer", "t1"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request)):
        yield b"m%d" % i


def client_stream(request_iterator, context):
    return str(sum(len(r) for r in request_iterator)).encode()


def bidi(request_iterator, context):
    for r in request_iterator:
        yield r.upper()


def health_check(request, context):
    # grpc.health.v1 HealthCheckResponse{status}: 1 SERVING, 2 NOT_SERVING (raw protobuf).
    # NOT_SERVING while the file named by $HEALTH_FILE says so.
    path = os.environ.get("HEALTH_FILE")
    if path and os.path.exists(path) and open(path).read().strip() == "NOT_SERVING":
        return b"\x08\x02"
    return b"\x08\x01"


def serve():
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(SERVICE, handlers),
        grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(health_check)}),
    ))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"event": "ready", "address": f"127.0.0.1:{port}"}), flush=True)
    server.wait_for_termination()


def client(addr):
    out = {}
    with grpc.insecure_channel(addr) as ch:
        call = lambda kind, name: getattr(ch, kind)(f"/{SERVICE}/{name}")
        resp, c = call("unary_unary", "Unary").with_call(b"hi", timeout=10)
        out["unary"] = resp.decode()
        out["trailer"] = dict(c.trailing_metadata()).get("x-trailer")
        try:
            call("unary_unary", "Unary")(b"x", metadata=(("x-fail", "yes"),), timeout=10)
            out["error_code"] = "OK"
        except grpc.RpcError as e:
            out["error_code"] = e.code().name
            out["error_details"] = e.details()
        out["server_stream"] = [m.decode() for m in call("unary_stream", "ServerStream")(b"500", timeout=20)]
        out["client_stream"] = call("stream_unary", "ClientStream")(iter([b"x" * 1000] * 200), timeout=20).decode()
        out["bidi"] = [m.decode() for m in call("stream_stream", "Bidi")(iter([b"a", b"bc", b"def"]), timeout=10)]
    print(json.dumps(out), flush=True)


def hold(addr):
    with grpc.insecure_channel(addr) as ch:
        bidi = ch.stream_stream(f"/{SERVICE}/Bidi")
        print(json.dumps({"event": "ready"}), flush=True)
        sent = []

        def requests():
            for line in sys.stdin:
                line = line.strip()
                if not line or line == "end":
                    return
                sent.append(line)
                yield line.encode()

        try:
            for reply in bidi(requests(), timeout=600):
                print(json.dumps({"sent": sent[-1], "reply": reply.decode()}), flush=True)
        except grpc.RpcError as e:
            print(json.dumps({"error": e.code().name, "details": e.details()}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    elif sys.argv[1] == "hold":
        hold(sys.argv[2])
    else:
        client(sys.argv[2])
