"""A minimal HTTP collector for the shipping benchmark: it accepts NDJSON POSTs and counts their lines.

Run as `python bench/collector.py`. It prints `listening on http://127.0.0.1:PORT/`,
responds to every POST with 200 after reading the body, and responds to
`GET /count` with the number of lines received so far. Connections are kept
alive (HTTP/1.1) and each is served by its own thread. It exits when its
parent process ends.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from feed import exit_with_parent


class Counter:
    """The number of NDJSON lines received, shared by the handler threads."""

    def __init__(self):
        self.lines = 0
        self.lock = threading.Lock()

    def add(self, count):
        with self.lock:
            self.lines += count


COUNTER = Counter()


class CollectorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        COUNTER.add(body.count(b"\n"))
        self._respond(b"")

    def do_GET(self):
        self._respond(str(COUNTER.lines).encode("ascii"))

    def _respond(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass  # one line per request would cost more than the request


def main():
    exit_with_parent()
    server = ThreadingHTTPServer(("127.0.0.1", 0), CollectorHandler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
