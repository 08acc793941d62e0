#!/usr/bin/env python3
"""A minimal OTLP/gRPC trace receiver for loadtests/observability-bench.sh.

It implements opentelemetry.proto.collector.trace.v1.TraceService/Export, counts what it
receives and throws the spans away: a stand-in for a collector that costs the exporting
service what a real one would (the gRPC calls, the serialisation), not what a real one's
processing costs its own host.

    otlp_sink.py --port 14317 --stats-port 14318 [--workers 16]

- gRPC on 127.0.0.1:PORT (plaintext, as OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT);
- the counts as JSON on http://127.0.0.1:STATS_PORT/stats: exports (calls), spans,
  root_spans (spans without a parent: one per trace, since the load sends no traceparent),
  spans per span name and per service.name, and the seconds spent handling Export calls
  (busy_seconds, and the longest one, busy_max_seconds). Counts only grow; take differences.
- SIGTERM or SIGINT: stops (letting calls in flight finish), prints the final counts as one
  JSON line on stdout, exits 0.

Both listeners bind to loopback only. Needs grpcio and opentelemetry-proto
(loadtests/requirements.txt); Python 3.9 or later.
"""

import argparse
import json
import signal
import sys
import threading
import time
from collections import Counter
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

HOST = "127.0.0.1"


class Stats:
    def __init__(self):
        self._lock = threading.Lock()
        self.exports = 0
        self.spans = 0
        self.root_spans = 0
        self.names = Counter()
        self.services = Counter()
        self.busy = 0.0  # seconds spent in Export calls
        self.busy_max = 0.0  # the longest one

    def add(self, request, started):
        spans = roots = 0
        names = Counter()
        services = Counter()
        for resource_spans in request.resource_spans:
            service = "(none)"
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    service = attr.value.string_value
                    break
            for scope_spans in resource_spans.scope_spans:
                batch = scope_spans.spans
                spans += len(batch)
                services[service] += len(batch)
                for span in batch:
                    names[span.name] += 1
                    if not span.parent_span_id:
                        roots += 1
        busy = time.perf_counter() - started
        with self._lock:
            self.busy += busy
            self.busy_max = max(self.busy_max, busy)
            self.exports += 1
            self.spans += spans
            self.root_spans += roots
            self.names.update(names)
            self.services.update(services)

    def snapshot(self):
        with self._lock:
            return {
                "exports": self.exports,
                "spans": self.spans,
                "root_spans": self.root_spans,
                "span_names": dict(sorted(self.names.items())),
                "services": dict(sorted(self.services.items())),
                "busy_seconds": round(self.busy, 6),
                "busy_max_seconds": round(self.busy_max, 6),
            }


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, stats):
        self.stats = stats

    def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
        # The request is already parsed here; count from now to the response.
        self.stats.add(request, time.perf_counter())
        # An empty response (no partial_success) means: all accepted.
        return trace_service_pb2.ExportTraceServiceResponse()


def stats_server(port, stats):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.split("?")[0] != "/stats":
                self.send_error(404)
                return
            body = (json.dumps(stats.snapshot()) + "\n").encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # quiet
            pass

    return ThreadingHTTPServer((HOST, port), Handler)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="OTLP/gRPC port on 127.0.0.1")
    parser.add_argument("--stats-port", type=int, required=True, help="HTTP port of /stats")
    parser.add_argument("--workers", type=int, default=16,
                        help="gRPC handler threads (default 16)")
    args = parser.parse_args()

    stats = Stats()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="export"),
        options=[
            # A batch of 512 spans is some 100-300 KB; leave room for larger batches.
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # Without it, grpcio binds with SO_REUSEPORT: a second listener on the port would
            # succeed silently and split the spans between the two.
            ("grpc.so_reuseport", 0),
        ],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(stats), server)
    try:
        bound = server.add_insecure_port(f"{HOST}:{args.port}")
    except RuntimeError as e:  # grpcio >= 1.50 raises instead of returning 0
        sys.exit(f"otlp_sink: cannot listen on {HOST}:{args.port}: {e}")
    if bound != args.port:
        sys.exit(f"otlp_sink: cannot listen on {HOST}:{args.port}")
    try:
        http = stats_server(args.stats_port, stats)
    except OSError as e:
        sys.exit(f"otlp_sink: cannot listen on {HOST}:{args.stats_port}: {e}")

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    server.start()
    # /stats answers only once gRPC is listening: a caller may poll it to know the sink is up.
    threading.Thread(target=http.serve_forever, name="stats", daemon=True).start()
    print(f"otlp_sink: OTLP/gRPC on {HOST}:{args.port}, stats on "
          f"http://{HOST}:{args.stats_port}/stats, {args.workers} workers", file=sys.stderr,
          flush=True)

    while not stop.wait(1):
        pass
    server.stop(grace=5).wait()
    http.shutdown()
    print(json.dumps(stats.snapshot()), flush=True)


if __name__ == "__main__":
    main()
