"""Fault injection for the PoD emulator, and the connection class that makes the faults possible."""

import http
import socket
import struct
from dataclasses import dataclass

from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.sync.server import ServerConnection

from podspool.emulator_events import LOG_TYPES

FAULT_KINDS = ("close", "drop", "reset", "stall", "oversized", "invalid_frames", "refuse", "trickle")
DEFAULT_OVERSIZED_BYTES = 5 * 1024 * 1024
DEFAULT_TRICKLE_BYTES = 3 * 1024 * 1024
DEFAULT_TRICKLE_SECONDS = 3.0
DEFAULT_TRICKLE_FRAMES = 30
DEFAULT_REFUSE_STATUS = 503
# Text frames are str, binary frames bytes: non-JSON text, invalid UTF-8 in a
# binary frame, a JSON array and an empty message.
DEFAULT_INVALID_FRAMES = ("this is not JSON", b'{"guid":"\xff\xfe"}', "[1, 2, 3]", "")


@dataclass(frozen=True)
class Fault:
    """A misbehaviour applied to the next `sessions` sessions (of `log_type`, if set).

    `after` counts the archive events a session sends before the fault, not
    counting duplicates. Kinds and the fields they read:

    - close: close with `code` (default 1000) and `reason`.
    - drop: close the TCP connection without a close frame; reset: the same with a TCP RST.
    - stall: stop sending and stop reading, so pings get no pong, for `seconds`
      (default: until the client or the emulator closes), then drop.
    - oversized: send one valid JSON event of `size_bytes` (default 5 MiB), then go on.
    - invalid_frames: send `frames` (str payloads as text frames, bytes as binary
      frames; default DEFAULT_INVALID_FRAMES), then go on.
    - refuse: reject the handshake with HTTP `status` (default 503) and body `reason`.
    - trickle: send one valid JSON event of `size_bytes` (default 3 MiB) as
      `frames` fragments (default 30) spread over `seconds` (default 3), then go on.
    """

    kind: str
    after: int = 0
    code: int | None = None
    reason: str = ""
    status: int | None = None
    size_bytes: int | None = None
    seconds: float | None = None
    frames: object = None
    sessions: int = 1
    log_type: str | None = None

    def __post_init__(self):
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if self.after < 0 or self.sessions < 1:
            raise ValueError(f"fault needs after >= 0 and sessions >= 1, got {self.after} and {self.sessions}")
        if self.log_type is not None and self.log_type not in LOG_TYPES:
            raise ValueError(f"fault log_type must be one of {', '.join(LOG_TYPES)}, got {self.log_type!r}")
        if self.code is not None and not (self.code in EXTERNAL_CLOSE_CODES or 3000 <= self.code < 5000):
            raise ValueError(
                f"close code {self.code} cannot be sent in a close frame; "
                "use kind='drop' for 1006 or a code in 1000-1003, 1007-1014, 3000-4999"
            )
        if self.status is not None and (self.status not in _HTTP_STATUSES or self.status < 400):
            raise ValueError(f"refuse status must be an HTTP error status, got {self.status}")
        if self.size_bytes is not None and self.size_bytes < 2:
            raise ValueError(f"size_bytes must be at least 2, got {self.size_bytes}")
        if self.seconds is not None and self.seconds < 0:
            raise ValueError(f"seconds must not be negative, got {self.seconds}")
        if self.kind == "trickle" and self.frames is not None and (not isinstance(self.frames, int) or self.frames < 1):
            raise ValueError(f"trickle frames must be a positive number of fragments, got {self.frames!r}")


_HTTP_STATUSES = {status.value for status in http.HTTPStatus}


def split_fragments(text, count):
    """Split TEXT into COUNT fragments of nearly equal length (fewer when TEXT is short)."""
    count = max(1, min(count, len(text)))
    size = -(-len(text) // count)
    return [text[start : start + size] for start in range(0, len(text), size)]


class TrickleStopped(Exception):
    """The emulator stopped while a trickled message was half sent."""


def trickle(fragments, interval_seconds, stop):
    """Yield FRAGMENTS with INTERVAL_SECONDS between them; raise TrickleStopped when STOP is set.

    websockets (17.4) sends each item of an iterable as one frame and takes
    its connection lock only per frame, so pongs go out between fragments.
    """
    yield fragments[0]
    for fragment in fragments[1:]:
        if stop.wait(interval_seconds):
            raise TrickleStopped()
        yield fragment


class EmulatorConnection(ServerConnection):
    """A websockets server connection that sends batches in one write, can stop reading and can drop.

    NOTE: this subclass uses websockets' sync Connection internals
    (send_context, send_data, protocol, protocol_mutex, close_socket), read in
    websockets 17.4; the emulator tests cover each use.
    """

    def send_batch(self, lines):
        """Send each str of LINES as one text message, written to the socket in one call."""
        with self.send_context():
            for line in lines:
                self.protocol.send_text(line.encode("utf-8"))

    def send_data(self):
        """Write the protocol's pending output, joining frames so a batch costs one sendall."""
        pending = []
        for data in self.protocol.data_to_send():
            if data:
                pending.append(data)
                continue
            # An empty item means end of stream: flush, then half-close as websockets does.
            self._write(pending)
            pending = []
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._write(pending)

    def _write(self, chunks):
        if not chunks:
            return
        if self.close_deadline is not None:
            self.socket.settimeout(self.close_deadline.timeout())
        self.socket.sendall(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def stop_reading(self):
        """Discard every byte received from now on, so pings and close frames get no reply."""
        with self.protocol_mutex:
            self.protocol.receive_data = _discard

    def drop(self, reset=False):
        """Close the TCP connection without a close frame: FIN, or RST when RESET is true."""
        try:
            if reset:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_socket()


def _discard(data):
    """Drop received bytes, in place of the protocol's receive_data while a session stalls."""
