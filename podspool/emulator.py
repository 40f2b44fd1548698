"""A PoD Log API emulator on websockets' threaded server, for tests, benchmarks and the demo.

It serves `/v1/stream?cid=...&type=...` with a Bearer token, one session per
token and log type (409 for a second), server-side resume within a window,
hour-rounded sinceTime/toTime replays and injectable faults.
"""

import dataclasses
import http
import logging
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time

from websockets.protocol import State
from websockets.sync.server import serve

from podspool.emulator_archive import Archive, TypeState
from podspool.emulator_cli import TOKEN_ENV, add_arguments, build_parser
from podspool.emulator_events import LOG_TYPES, load_templates
from podspool.emulator_faults import DEFAULT_REFUSE_STATUS, EmulatorConnection, Fault
from podspool.emulator_request import (
    SESSIONS_EXCEEDED,
    STREAM_PATH,
    Rejection,
    parse_query,
    token_matches,
    validate_stream,
)
from podspool.emulator_session import Session, SessionRecord, StreamSettings
from podspool.errors import ConfigError, PodspoolError

__all__ = ["Emulator", "Fault", "SessionRecord", "TOKEN_ENV", "add_arguments", "build_parser", "main"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_SECONDS = 2.0
STOP_GRACE_SECONDS = 2.0


class _NoDebugLogger(logging.LoggerAdapter):
    """Logger for websockets that never enables DEBUG.

    websockets (17.4) logs every request header at DEBUG, the Authorization header included.
    """

    def isEnabledFor(self, level):
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


class Emulator:
    """Serve a PoD-compatible log stream on a background thread.

    With `once`, each sample line is sent once, byte for byte. Otherwise the
    samples repeat endlessly (or `count` times) with fresh ids and `ts` taken
    from `clock`. `rate` is in events per second (None: as fast as the client
    reads); `duplicate_ratio` is the share of events sent a second time. The
    emulator accepts one token; resume state is kept per log type.
    """

    def __init__(self, host="127.0.0.1", port=0, token=None, cluster="example_hosted",
                 events_dir=None, once=False, rate=None, count=None, duplicate_ratio=0.0,
                 resume_window_seconds=3600.0, tls_cert=None, tls_key=None, clock=time.time,
                 seed=None):
        if not token:
            raise ValueError("token is missing; pass the Bearer token clients must send")
        if once and count is not None:
            raise ValueError("once and count cannot be combined")
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if count is not None and count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        if not 0.0 <= duplicate_ratio <= 1.0:
            raise ValueError(f"duplicate_ratio must be between 0 and 1, got {duplicate_ratio}")
        self.host, self.port, self.token, self.cluster = host, port, token, cluster
        self.events_dir, self.once, self.rate, self.count = events_dir, once, rate, count
        self.duplicate_ratio = duplicate_ratio
        self.resume_window_seconds = resume_window_seconds
        self.tls_cert, self.tls_key, self.clock = tls_cert, tls_key, clock
        self._settings = StreamSettings(
            stop=threading.Event(),
            clock=clock,
            resume_window_us=round(resume_window_seconds * 1_000_000),
            duplicate_ratio=duplicate_ratio,
            rng=random.Random(seed),
        )
        self._lock = threading.Lock()
        self._types = {}
        self._faults = []
        self._records = []
        self._server = None
        self._thread = None

    @property
    def url(self):
        """Stream endpoint URL, with the port the socket is bound to once started."""
        scheme = "wss" if self.tls_cert else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{STREAM_PATH}"

    @property
    def sessions(self):
        """Return a snapshot of the session records, oldest first."""
        with self._lock:
            return [dataclasses.replace(record, params=dict(record.params)) for record in self._records]

    def sent_lines(self, log_type):
        """Return every event line sent for LOG_TYPE so far, in order, duplicates included."""
        state = self._types.get(log_type)
        return [] if state is None else state.sent_lines()

    def wait_idle(self, timeout=5.0):
        """Wait until no session is open, so its record and the sent lines are final; return True if none is."""
        deadline = time.monotonic() + timeout
        for state in self._types.values():
            session = state.active
            if session is not None and not session.done.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def add_fault(self, fault):
        """Queue FAULT; the first queued fault that matches a session's type applies to it."""
        with self._lock:
            self._faults.append([fault, fault.sessions])

    def start(self):
        """Load the events, bind the socket and serve on a daemon thread; return self."""
        self._load_archives()
        self._server = serve(
            self._handle, self.host, self.port,
            ssl=self._ssl_context(),
            process_request=self._process_request,
            process_response=self._process_response,
            ping_interval=None,
            close_timeout=CLOSE_TIMEOUT_SECONDS,
            # Nothing limits what clients send, and the emulator never reads
            # their messages while it streams, so the read queue is unbounded.
            max_size=None,
            max_queue=None,
            logger=_NoDebugLogger(logging.getLogger("websockets.server"), {}),
            create_connection=EmulatorConnection,
            family=socket.AF_INET6 if ":" in self.host else socket.AF_INET,
        )
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="podspool-emulator",
                                        daemon=True)
        self._thread.start()
        log.info("emulator listening on %s", self.url)
        return self

    def _load_archives(self):
        if self.events_dir is not None and not os.path.isdir(self.events_dir):
            raise ConfigError("events directory not found", file=self.events_dir,
                              fix="pass a directory with message.ndjson, maillog.ndjson or audit.ndjson")
        origin_us = round(self.clock() * 1_000_000)
        run_tag = random.getrandbits(12)
        for log_type in LOG_TYPES:
            templates = load_templates(log_type, self.events_dir)
            limit = len(templates) if self.once else self.count
            archive = Archive(templates, once=self.once, limit=limit, rate=self.rate,
                              origin_us=origin_us, run_tag=run_tag)
            self._types[log_type] = TypeState(archive)
        if not any(state.archive.templates for state in self._types.values()):
            raise ConfigError("no events to serve", file=self.events_dir,
                              fix="add message.ndjson, maillog.ndjson or audit.ndjson")

    def _ssl_context(self):
        if self.tls_key and not self.tls_cert:
            raise ConfigError("a TLS key needs a TLS certificate", key="tls_cert")
        if not self.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the TLS certificate and key: {exc}", file=self.tls_cert) from exc
        return context

    def stop(self):
        """Close every session (1001, or a dropped connection if it does not end in time) and the server."""
        if self._server is None or self._settings.stop.is_set():
            return
        self._settings.stop.set()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for state in self._types.values():
            session = state.active
            if session is not None and not session.done.wait(max(0.0, deadline - time.monotonic())):
                # The session is stuck in a send to a client that stopped reading.
                session.connection.drop()
        self._server.shutdown()
        self._thread.join()
        log.info("emulator stopped")

    def _process_request(self, connection, request):
        """Reject the handshake with an HTTP status, or return None to accept it and prepare its session."""
        now = self.clock()
        record = SessionRecord(path=request.path, params={}, log_type=None, token_ok=False,
                               status=101, started_at=now)
        try:
            path, record.params = parse_query(request.path)
            record.path = path
            record.log_type = record.params.get("type")
            if path != STREAM_PATH:
                raise Rejection(404, "Not Found")
            record.token_ok = token_matches(request.headers.get("Authorization"), self.token)
            if not record.token_ok:
                raise Rejection(401, "Unauthorized")
            stream = validate_stream(record.params, self.cluster, round(now * 1_000_000))
            self._open_session(connection, stream, record)
        except Rejection as rejection:
            record.status, record.ended_at = rejection.status, now
            with self._lock:
                self._records.append(record)
            log.info("emulator session rejected: type=%s status=%d reason=%s",
                     record.log_type, rejection.status, rejection.text)
            return connection.respond(rejection.status, rejection.text)
        return None

    def _open_session(self, connection, stream, record):
        """Take the type's session slot and the next matching fault; raise Rejection for 409 or a refusal."""
        state = self._types[stream.log_type]
        with self._lock, state.lock:
            active = state.active
            if active is not None and active.connection.protocol.state in (State.CONNECTING, State.OPEN):
                raise Rejection(409, SESSIONS_EXCEEDED)
            fault = self._take_fault(stream.log_type)
            record.fault = None if fault is None else fault.kind
            if fault is not None and fault.kind == "refuse":
                status = fault.status or DEFAULT_REFUSE_STATUS
                raise Rejection(status, fault.reason or http.HTTPStatus(status).phrase)
            session = Session(state, self._settings, connection, stream, record, fault)
            state.active = session
            self._records.append(record)
        connection.pod_session = session

    def _take_fault(self, log_type):
        for entry in self._faults:
            fault, remaining = entry
            if fault.log_type in (None, log_type):
                if remaining == 1:
                    self._faults.remove(entry)
                else:
                    entry[1] = remaining - 1
                return fault
        return None

    def _process_response(self, connection, request, response):
        """Record a handshake that websockets failed after the request was accepted."""
        session = getattr(connection, "pod_session", None)
        if session is not None and response.status_code != 101:
            session.record.status = response.status_code
            session.record.ended_at = self.clock()
            with session.state.lock:
                if session.state.active is session:
                    session.state.active = None
            session.done.set()
        return None

    def _handle(self, connection):
        connection.pod_session.run()


def main(argv=None):
    """Run the emulator until SIGINT or SIGTERM; return the exit status (0, 1, or 2 for bad usage)."""
    args = build_parser().parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        print(f"podspool emulate: no token; pass --token or set {TOKEN_ENV}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _serve(args, token, stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _serve(args, token, stop):
    try:
        emulator = Emulator(host=args.host, port=args.port, token=token, cluster=args.cluster,
                            events_dir=args.events, once=args.once, rate=args.rate, count=args.count,
                            duplicate_ratio=args.duplicate_ratio,
                            resume_window_seconds=args.resume_window_seconds,
                            tls_cert=args.tls_cert, tls_key=args.tls_key)
        emulator.start()
    except (ValueError, PodspoolError) as exc:
        print(f"podspool emulate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"podspool emulate: cannot listen on {args.host} port {args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"listening on {emulator.url}", flush=True)
        stop.wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
