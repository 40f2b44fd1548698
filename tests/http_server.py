"""A threaded HTTP(S) server on 127.0.0.1 that plays a generic collector, Splunk HEC and the ES bulk API.

It records every request and stores what it accepted. Tests can script it to
fail the next requests with a status and Retry-After, reject chosen events,
hold a request until released, and return false to HEC acknowledgement polls
a given number of times. Elasticsearch `create` actions honour `_id`: a
second create of the same id answers 409, so stored documents never repeat.
"""

import gzip
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOLD_LIMIT_SECONDS = 30.0


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    headers: dict  # lower-case names
    body: bytes  # after gzip decoding


@dataclass
class Failure:
    status: int
    retry_after: str = None
    body: object = None


@dataclass
class ServerState:
    requests: list = field(default_factory=list)
    events: list = field(default_factory=list)  # accepted events (generic and HEC), in arrival order
    hec_objects: list = field(default_factory=list)  # accepted HEC event objects, metadata included
    documents: dict = field(default_factory=dict)  # (index, _id) -> document
    es_creates: int = 0  # create actions seen, conflicts included
    failures: list = field(default_factory=list)
    reject: object = None  # predicate(event) -> True to reject the event
    item_retry: object = None  # predicate(event) -> True to return 429 for the item
    item_retry_budget: int = 0
    ack_false_polls: int = 0  # HEC: polls per ackId that return false before true
    ack_polls: dict = field(default_factory=dict)
    next_ack_id: int = 0


class TestHttpServer:
    """Start with `start()` (or `with`), stop with `stop()`; `url` is the base URL."""

    __test__ = False  # not a pytest class

    def __init__(self, *, port=0, certfile=None, keyfile=None, client_ca=None,
                 hec_token=None, es_authorization=None):
        self.port = port
        self.certfile = certfile
        self.keyfile = keyfile
        self.client_ca = client_ca
        self.hec_token = hec_token
        self.es_authorization = es_authorization  # the exact Authorization header expected
        self.state = ServerState()
        self.lock = threading.Lock()
        self.hold_path = None
        self.hold_skip = 0
        self.held = threading.Event()
        self.release = threading.Event()
        self._server = None
        self._thread = None

    @property
    def url(self):
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self):
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        if self.certfile:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certfile, self.keyfile)
            if self.client_ca:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self.client_ca)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # Scripting

    def fail_next(self, count, status, retry_after=None, body=None):
        """Fail the next COUNT requests with STATUS (and Retry-After) without storing anything."""
        with self.lock:
            self.state.failures.extend(Failure(status, retry_after, body) for _ in range(count))

    def hold_next(self, path_suffix="", skip=0):
        """Let SKIP requests to paths ending in PATH_SUFFIX pass, then process the next one and hold its answer.

        `held` is set when the held request arrives; `release` ends the hold.
        """
        self.held.clear()
        self.release.clear()
        self.hold_skip = skip
        self.hold_path = path_suffix

    def paths(self):
        with self.lock:
            return [request.path for request in self.state.requests]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner = None

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        parts = urlsplit(self.path)
        request = RecordedRequest("POST", parts.path, parse_qs(parts.query),
                                  {name.lower(): value for name, value in self.headers.items()}, body)
        with owner.lock:
            owner.state.requests.append(request)
            failure = owner.state.failures.pop(0) if owner.state.failures else None
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            self._answer(failure.status, failure.body if failure.body is not None else {"error": "scripted"}, headers)
            return
        if parts.path.endswith("/services/collector/event"):
            status, answer = self._hec_event(request)
        elif parts.path.endswith("/services/collector/ack"):
            status, answer = self._hec_ack(request)
        elif parts.path.endswith("/_bulk"):
            status, answer = self._bulk(request)
        else:
            status, answer = self._generic(request)
        if owner.hold_path is not None and parts.path.endswith(owner.hold_path):
            if owner.hold_skip > 0:
                owner.hold_skip -= 1
            else:
                owner.hold_path = None
                owner.held.set()
                owner.release.wait(HOLD_LIMIT_SECONDS)
        self._answer(status, answer)

    def _answer(self, status, answer, headers=None):
        data = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client went away (killed or timed out)

    # Generic collector: NDJSON or a JSON array

    def _generic(self, request):
        text = request.body.decode("utf-8")
        if text.lstrip().startswith("["):
            events = json.loads(text)
        else:
            events = [json.loads(line) for line in text.splitlines() if line]
        state = self.owner.state
        if state.reject and any(state.reject(event) for event in events):
            return 400, {"error": "invalid event in batch"}
        with self.owner.lock:
            state.events.extend(events)
        return 200, {"accepted": len(events)}

    # Splunk HEC

    def _hec_authorized(self, request):
        expected = f"Splunk {self.owner.hec_token}"
        return self.owner.hec_token is None or request.headers.get("authorization") == expected

    def _hec_event(self, request):
        if not self._hec_authorized(request):
            return 403, {"text": "Invalid token", "code": 4}
        decoder = json.JSONDecoder()
        text = request.body.decode("utf-8")
        objects, position = [], 0
        while position < len(text):
            obj, position = decoder.raw_decode(text, position)
            objects.append(obj)
            while position < len(text) and text[position].isspace():
                position += 1
        state = self.owner.state
        for number, obj in enumerate(objects):
            if "event" not in obj:
                return 400, {"text": "Event field is required", "code": 12, "invalid-event-number": number}
            if state.reject and state.reject(obj["event"]):
                return 400, {"text": "Invalid data format", "code": 6, "invalid-event-number": number}
        with self.owner.lock:
            state.hec_objects.extend(objects)
            state.events.extend(obj["event"] for obj in objects)
            answer = {"text": "Success", "code": 0}
            if request.headers.get("x-splunk-request-channel"):
                answer["ackId"] = state.next_ack_id
                state.ack_polls[state.next_ack_id] = 0
                state.next_ack_id += 1
        return 200, answer

    def _hec_ack(self, request):
        if not self._hec_authorized(request):
            return 403, {"text": "Invalid token", "code": 4}
        state = self.owner.state
        acks = {}
        with self.owner.lock:
            for ack_id in json.loads(request.body)["acks"]:
                polls = state.ack_polls.get(ack_id)
                if polls is None:
                    acks[str(ack_id)] = False
                    continue
                state.ack_polls[ack_id] = polls + 1
                acks[str(ack_id)] = polls >= state.ack_false_polls
        return 200, {"acks": acks}

    # Elasticsearch bulk API

    def _bulk(self, request):
        expected = self.owner.es_authorization
        if expected is not None and request.headers.get("authorization") != expected:
            return 401, {"error": {"type": "security_exception", "reason": "missing authentication credentials"}}
        lines = request.body.decode("utf-8").splitlines()
        items = [self._bulk_item(json.loads(action), json.loads(document))
                 for action, document in zip(lines[0::2], lines[1::2])]
        errors = any(item["create"]["status"] >= 300 for item in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    def _bulk_item(self, action, document):
        meta = action["create"]
        key = (meta["_index"], meta["_id"])
        state = self.owner.state
        with self.owner.lock:
            state.es_creates += 1
            result = {"_index": meta["_index"], "_id": meta["_id"]}
            if state.reject and state.reject(document):
                result.update(status=400, error={"type": "mapper_parsing_exception",
                                                 "reason": "failed to parse field [bad]"})
            elif state.item_retry and state.item_retry(document) and state.item_retry_budget > 0:
                state.item_retry_budget -= 1
                result.update(status=429, error={"type": "es_rejected_execution_exception",
                                                 "reason": "rejected execution"})
            elif key in state.documents:
                result.update(status=409, error={"type": "version_conflict_engine_exception",
                                                 "reason": f"[{meta['_id']}]: version conflict, document already exists"})
            else:
                state.documents[key] = document
                result.update(status=201, result="created")
        return {"create": result}
