"""One emulated PoD stream session: what it sends, the fault it applies, and its record."""

import collections
import logging
import threading
import time
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from podspool.emulator_faults import (
    DEFAULT_INVALID_FRAMES,
    DEFAULT_OVERSIZED_BYTES,
    DEFAULT_TRICKLE_BYTES,
    DEFAULT_TRICKLE_FRAMES,
    DEFAULT_TRICKLE_SECONDS,
    TrickleStopped,
    split_fragments,
    trickle,
)

log = logging.getLogger(__name__)

BATCH_EVENTS = 64
IDLE_POLL_SECONDS = 0.05
RECENT_EVENTS = 32


@dataclass
class SessionRecord:
    """What tests can read about one handshake: the request, the response status and what was sent.

    Times come from the emulator's clock; `close_code` is the code the emulator
    sent, else the one it received, else 1006 when the TCP connection ended
    without a close frame.
    """

    path: str
    params: dict
    log_type: str | None
    token_ok: bool
    status: int
    started_at: float
    ended_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    events_sent: int = 0
    fault: str | None = None


@dataclass(frozen=True)
class StreamSettings:
    """Emulator-wide settings every session reads."""

    stop: threading.Event
    clock: object
    resume_window_us: int
    duplicate_ratio: float
    rng: object


class Session:
    """Stream one accepted session's events, apply its fault, then fill in its record.

    A live session starts at the type's resume cursor (or the start of the
    resume window) and advances the cursor as it sends. A replay starts at
    sinceTime rounded down to the hour. With a toTime, it sends the events
    before toTime rounded up to the hour, then closes with 1000.
    """

    def __init__(self, state, settings, connection, request, record, fault):
        self.state = state
        self.settings = settings
        self.connection = connection
        self.request = request
        self.record = record
        self.fault = fault
        self.done = threading.Event()
        self.position = 0
        self.end = None
        self.events_from_archive = 0
        self.close_code = None
        self.close_reason = ""
        self.reading_stopped = False
        self._recent = collections.deque(maxlen=RECENT_EVENTS)

    def now_us(self):
        return round(self.settings.clock() * 1_000_000)

    def is_open(self):
        return self.connection.protocol.state is State.OPEN

    def run(self):
        """Serve the session until it ends; log an unexpected error instead of raising it."""
        try:
            self._start_position()
            self._stream()
        except (ConnectionClosed, TrickleStopped, OSError):
            # The client closed, the connection dropped or the emulator stopped:
            # the session's end line below carries the close code.
            pass
        except Exception:
            log.exception("emulator session failed: type=%s", self.request.log_type)
        finally:
            self._finish()

    def _start_position(self):
        archive, request = self.state.archive, self.request
        now_us = self.now_us()
        if request.since_us is None:
            with self.state.lock:
                self.position = archive.live_start(self.state.cursor, now_us, self.settings.resume_window_us)
        else:
            self.position, self.end = archive.replay_range(request.since_us, request.to_us, now_us)

    def _stream(self):
        while not self.settings.stop.is_set():
            if self.fault is not None and self.events_from_archive >= self.fault.after:
                if not self._apply_fault():
                    return
                self.fault = None
                continue
            serials = self._ready_serials()
            if serials:
                self._send(serials)
            elif self.end is not None:
                self._close(1000, "")
                return
            else:
                self._idle_wait()

    def _ready_serials(self):
        """Return the archive indexes to send next, at most one batch and never past a fault or toTime."""
        batch = BATCH_EVENTS
        if self.fault is not None:
            batch = min(batch, self.fault.after - self.events_from_archive)
        goal = self.position + batch
        if self.end is not None:
            goal = min(goal, self.end)
        available = self.state.archive.materialize(self.now_us(), goal)
        return range(self.position, min(goal, available))

    def _send(self, serials):
        entries = self._with_duplicates(serials)
        archive = self.state.archive
        lines = [archive.line(serial) for serial in entries]
        fault = self.fault
        if fault is not None and fault.kind == "stall":
            if self.events_from_archive + len(serials) >= fault.after:
                # Stop reading before the last event goes out, so a ping the
                # client sends after receiving it gets no pong.
                self.connection.stop_reading()
                self.reading_stopped = True
        self.connection.send_batch(lines)
        self.position = serials.stop
        self.events_from_archive += len(serials)
        self.record.events_sent += len(lines)
        with self.state.lock:
            self.state.sent.extend(entries)
            if self.end is None:
                cursor = self.state.cursor
                cursor.position = max(cursor.position, self.position)
                cursor.updated_us = self.now_us()

    def _with_duplicates(self, serials):
        ratio = self.settings.duplicate_ratio
        if not ratio:
            return list(serials)
        rng, recent, entries = self.settings.rng, self._recent, []
        for serial in serials:
            entries.append(serial)
            recent.append(serial)
            if rng.random() < ratio:
                entries.append(rng.choice(recent))
        return entries

    def _idle_wait(self):
        """Wait for the next event to be due, draining any message the client sends."""
        timeout = IDLE_POLL_SECONDS
        due_us = self.state.archive.next_due_us()
        if due_us is not None:
            timeout = min(timeout, max(0.001, (due_us - self.now_us()) / 1_000_000))
        try:
            self.connection.recv(timeout=timeout)
        except TimeoutError:
            pass

    def _close(self, code, reason):
        self.close_code, self.close_reason = code, reason
        self.connection.close(code, reason)

    def _drop(self, reset=False):
        self.close_code, self.close_reason = 1006, ""
        self.connection.drop(reset=reset)

    def _apply_fault(self):
        """Apply the session's fault; return True when the stream goes on afterwards."""
        fault = self.fault
        if fault.kind == "close":
            self._close(fault.code or 1000, fault.reason)
            return False
        if fault.kind in ("drop", "reset"):
            self._drop(reset=fault.kind == "reset")
            return False
        if fault.kind == "stall":
            self._stall(fault.seconds)
            return False
        if fault.kind == "oversized":
            self._send_extra(fault.size_bytes or DEFAULT_OVERSIZED_BYTES)
        elif fault.kind == "invalid_frames":
            for payload in fault.frames if fault.frames is not None else DEFAULT_INVALID_FRAMES:
                self.connection.send(payload)
        elif fault.kind == "trickle":
            self._send_extra(
                fault.size_bytes or DEFAULT_TRICKLE_BYTES,
                fragments=fault.frames or DEFAULT_TRICKLE_FRAMES,
                seconds=DEFAULT_TRICKLE_SECONDS if fault.seconds is None else fault.seconds,
            )
        return True

    def _send_extra(self, size_bytes, fragments=1, seconds=0.0):
        line = self.state.extra_line(self.now_us(), size_bytes)
        if fragments == 1:
            self.connection.send_batch([line])
        else:
            pieces = split_fragments(line, fragments)
            interval = seconds / max(1, len(pieces) - 1)
            self.connection.send(trickle(pieces, interval, self.settings.stop))
        self.state.add_extra(line)
        self.record.events_sent += 1

    def _stall(self, seconds):
        """Send nothing and read nothing until the client leaves, SECONDS pass or the emulator stops."""
        if not self.reading_stopped:
            self.connection.stop_reading()
        deadline = None if seconds is None else time.monotonic() + seconds
        while self.connection.protocol.state is not State.CLOSED:
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.settings.stop.wait(IDLE_POLL_SECONDS):
                break
        self._drop()

    def _finish(self):
        """Close what is still open, release the type's session slot and log the session."""
        try:
            if self.is_open():
                stopping = self.settings.stop.is_set()
                self._close(1001 if stopping else 1000, "server stopping" if stopping else "")
        except (ConnectionClosed, OSError):
            pass
        record = self.record
        record.ended_at = self.settings.clock()
        if self.close_code is not None:
            record.close_code, record.close_reason = self.close_code, self.close_reason
        else:
            record.close_code = self.connection.close_code or 1006
            record.close_reason = self.connection.close_reason or ""
        with self.state.lock:
            if self.end is None:
                self.state.cursor.updated_us = self.now_us()
            if self.state.active is self:
                self.state.active = None
        self.done.set()
        log.info(
            "emulator session ended: type=%s cid=%s events_sent=%d close_code=%s fault=%s",
            self.request.log_type,
            self.request.cid,
            record.events_sent,
            record.close_code,
            record.fault,
        )
