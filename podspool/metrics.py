"""Prometheus metrics and the /healthz endpoint on `metrics.listen`.

Metrics are read from the same snapshot that the status file is written from,
through a custom collector, so `/metrics` and `podspool status` agree. The
listener is a small threaded HTTP server: `/metrics` in the Prometheus text
format, `/healthz` 200 or 503 with the reasons.
"""

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from podspool import health
from podspool.errors import PodspoolError
from podspool.events import parse_ts

log = logging.getLogger(__name__)

DEVICE_COUNTERS = {
    "events_received": "events received from PoD, duplicates and bad frames included",
    "events_spooled": "events written to the spool",
    "duplicates_dropped": "duplicate events dropped before spooling",
    "dead_lettered": "frames written to dead-letter",
    "events_dropped_by_pipeline": "events a pipeline dropped",
    "reconnects": "sessions opened after the first",
    "gaps": "ranges that could not be replayed",
}
OUTPUT_COUNTERS = {
    "events_delivered": "events the destination confirmed",
    "events_rejected": "events the destination rejected, written to dead-letter",
}


def epoch_of(text):
    """Convert an RFC 3339 time from the status snapshot into epoch seconds; 0 when unknown."""
    if not text:
        return 0
    try:
        return parse_ts(text).timestamp()
    except ValueError:
        return 0


class SnapshotCollector:
    """Expose a status snapshot (see podspool.status.StatusBook) as metrics."""

    def __init__(self, snapshot_function):
        self.snapshot_function = snapshot_function

    def collect(self):
        snapshot = self.snapshot_function()
        devices = snapshot.get("devices", {})
        outputs = snapshot.get("outputs", {})
        yield from self._counters("device", DEVICE_COUNTERS, devices)
        yield self._gauge("podspool_device_connected", "1 while the device has an open session", devices,
                          lambda entry: 1 if entry.get("connected") else 0, "device")
        yield self._gauge("podspool_device_paused", "1 while the spool pauses the device", devices,
                          lambda entry: 1 if entry.get("paused") else 0, "device")
        yield self._gauge("podspool_device_last_event_timestamp_seconds",
                          "time of the newest spooled event, epoch seconds", devices,
                          lambda entry: epoch_of(entry.get("last_event_time")), "device")
        yield from self._counters("output", OUTPUT_COUNTERS, outputs)
        yield self._gauge("podspool_output_backlog_files", "closed spool files not yet delivered", outputs,
                          lambda entry: entry.get("backlog_files", 0) or 0, "output")
        yield self._gauge("podspool_output_backlog_bytes", "bytes of closed spool files not yet delivered",
                          outputs, lambda entry: entry.get("backlog_bytes", 0) or 0, "output")
        yield self._gauge("podspool_output_lag_seconds", "age of the oldest undelivered closed file", outputs,
                          lambda entry: entry.get("lag_seconds") or 0, "output")
        spool = GaugeMetricFamily("podspool_spool_bytes", "bytes in the spool directory")
        spool.add_metric([], snapshot.get("spool_bytes", 0) or 0)
        yield spool

    @staticmethod
    def _counters(label, table, entries):
        for key, text in table.items():
            family = CounterMetricFamily(f"podspool_{label}_{key}", text, labels=[label])
            for name, entry in entries.items():
                family.add_metric([name], entry.get(key, 0) or 0)
            yield family

    @staticmethod
    def _gauge(name, text, entries, value, label):
        family = GaugeMetricFamily(name, text, labels=[label])
        for entry_name, entry in entries.items():
            family.add_metric([entry_name], value(entry))
        return family


class MetricsServer:
    """Serve /metrics and /healthz from a thread; `stop()` shuts the listener down."""

    def __init__(self, host, port, snapshot_function, unhealthy_after_seconds):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot_function))
        self.snapshot_function = snapshot_function
        self.unhealthy_after_seconds = unhealthy_after_seconds
        self.address = (host, port)
        self.server = None
        self.thread = None

    def start(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.handle(self)

            def log_message(self, format, *args):
                log.debug("metrics request: " + format, *args)

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET

        try:
            self.server = Server(self.address, Handler)
        except OSError as exc:
            raise PodspoolError(f"metrics.listen {self.address[0]}:{self.address[1]} cannot be used "
                                f"({exc.strerror}); choose another address or stop what uses it") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="metrics", daemon=True)
        self.thread.start()
        log.info("metrics listening on %s:%d", self.address[0], self.server.server_address[1],
                 extra={"event": "started"})
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    def handle(self, request):
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, kind = generate_latest(self.registry), 200, "text/plain; version=0.0.4"
        elif path == "/healthz":
            found = health.problems(self.snapshot_function(), time.time(), self.unhealthy_after_seconds)
            status = 503 if found else 200
            body = ("\n".join(found) if found else "ok").encode() + b"\n"
            kind = "text/plain; charset=utf-8"
        else:
            body, status, kind = b"not found: use /metrics or /healthz\n", 404, "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
