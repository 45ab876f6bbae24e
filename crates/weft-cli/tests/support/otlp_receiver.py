"""A real OTLP/gRPC trace receiver for weft's tests (grpcio + opentelemetry-proto).

Listens on 127.0.0.1 (``--port``, 0 picks one), prints a JSON ready line with its address,
then one JSON line per span received. Reads commands on stdin, one per line:
``delay SECONDS`` makes every export wait that long before answering (a slow collector),
``fail`` makes exports answer UNAVAILABLE, ``ok`` back to normal.
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

state = {"delay": 0.0, "fail": False}
out = threading.Lock()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        if state["delay"]:
            time.sleep(state["delay"])
        if state["fail"]:
            context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
        for rs in request.resource_spans:
            resource = {kv.key: value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "service": resource.get("service.name"),
                        "scope": ss.scope.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "trace_state": s.trace_state,
                        "name": s.name,
                        "kind": s.kind,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": {kv.key: value(kv.value) for kv in s.attributes},
                        "status": {"code": s.status.code, "message": s.status.message},
                    }
                    with out:
                        print(json.dumps(line), flush=True)
        return trace_service_pb2.ExportTraceServiceResponse()


def commands():
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["delay"]:
            state["delay"] = float(words[1])
        elif words[:1] == ["fail"]:
            state["fail"] = True
        elif words[:1] == ["ok"]:
            state["delay"], state["fail"] = 0.0, False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    with out:
        print(json.dumps({"event": "ready", "address": f"127.0.0.1:{port}"}), flush=True)
    threading.Thread(target=commands, daemon=True).start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
