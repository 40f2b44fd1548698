"""The emulator's archive: every event generated for one log type, in order, with its instant.

Instants are integer microseconds since the epoch, taken from the emulator's
clock when the event was generated. Lines are not stored. They are rendered
again from the template, the serial number and the instant, so the archive
costs 8 bytes per event.
"""

import bisect
import threading
from array import array
from dataclasses import dataclass, field

from podspool.emulator_events import pad_event

HOUR_US = 3600 * 1_000_000
# Serial numbers of oversized and trickled events start here, far above the
# archive's, so their ids never collide with archive events.
EXTRA_SERIAL_BASE = 0xF00000000


def floor_hour(instant_us):
    """Round INSTANT_US down to the start of its UTC hour."""
    return instant_us - instant_us % HOUR_US


def ceil_hour(instant_us):
    """Round INSTANT_US up to the next UTC hour, unless it is on the hour already."""
    return -(-instant_us // HOUR_US) * HOUR_US


@dataclass
class Cursor:
    """Position of the last live session of a log type, for server-side resume.

    `position` is the archive index of the next event to send. `updated_us` is
    the instant of the session's last send or of its end, and None before any
    session read this type.
    """

    position: int = 0
    updated_us: int | None = None


class Archive:
    """Generate, keep and render the events of one log type.

    With `rate` None, events are generated on demand, as fast as sessions
    send them, each stamped with the clock (made strictly increasing). With a
    rate, event k is due at `origin_us + k / rate` seconds and exists once the
    clock has passed that instant, whether or not a session is connected.
    `limit` caps the number of events (the sample count with `once`, `count`
    otherwise, None for endless).
    """

    def __init__(self, templates, *, once, limit, rate, origin_us, run_tag):
        self.templates = templates
        self.once = once
        self.limit = 0 if not templates else limit
        self.rate = rate
        self.origin_us = origin_us
        self.run_tag = run_tag
        self.instants = array("q")
        self.lock = threading.Lock()

    def __len__(self):
        return len(self.instants)

    def exhausted(self):
        """Return True when the archive contains every event it will ever contain."""
        return self.limit is not None and len(self.instants) >= self.limit

    def due_us(self, serial):
        """Return the instant at which event SERIAL is due with a rate."""
        return self.origin_us + int(serial * 1_000_000 / self.rate)

    def _append(self, instant_us):
        if self.instants and instant_us <= self.instants[-1]:
            instant_us = self.instants[-1] + 1
        self.instants.append(instant_us)

    def materialize(self, now_us, requested=0):
        """Generate events due by NOW_US; return how many events exist.

        With a rate, every event due by NOW_US is generated. Without one, events
        are generated until REQUESTED exist (or the limit), all stamped NOW_US
        or just after it.
        """
        with self.lock:
            if self.rate is None:
                goal = requested if self.limit is None else min(requested, self.limit)
                while len(self.instants) < goal:
                    self._append(now_us)
            else:
                while not self.exhausted() and self.due_us(len(self.instants)) <= now_us:
                    self._append(self.due_us(len(self.instants)))
            return len(self.instants)

    def next_due_us(self):
        """Return when the next event is due, or None without a rate or when exhausted."""
        if self.rate is None or self.exhausted():
            return None
        return self.due_us(len(self.instants))

    def index_at(self, instant_us):
        """Return the index of the first event at or after INSTANT_US."""
        return bisect.bisect_left(self.instants, instant_us)

    def line(self, serial):
        """Return the text of event SERIAL, which must exist."""
        template = self.templates[serial % len(self.templates)]
        if self.once:
            return template.raw
        return template.render(serial, self.instants[serial], self.run_tag)

    def live_start(self, cursor, now_us, window_us):
        """Return where a live session starts: the cursor inside the window, else the window's start."""
        self.materialize(now_us)
        if cursor.updated_us is not None and now_us - cursor.updated_us <= window_us:
            return cursor.position
        return max(cursor.position, self.index_at(now_us - window_us))

    def replay_range(self, since_us, to_us, now_us):
        """Return (start, end) indexes of a replay; end is None without a toTime.

        The start is rounded down and the end up to the UTC hour, so replays
        overlap what earlier sessions sent.
        """
        self.materialize(now_us)
        start = self.index_at(floor_hour(since_us))
        if to_us is None:
            return start, None
        return start, max(start, self.index_at(ceil_hour(to_us)))


@dataclass
class TypeState:
    """What the emulator keeps per log type: archive, resume cursor, sent log and session slot.

    `sent` contains one entry per event line sent: an archive index, or -(i + 1)
    for `extras[i]`, an oversized or trickled event that is not in the archive.
    """

    archive: Archive
    cursor: Cursor = field(default_factory=Cursor)
    sent: array = field(default_factory=lambda: array("q"))
    extras: list = field(default_factory=list)
    active: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_extra(self, line):
        """Record LINE as sent outside the archive."""
        with self.lock:
            self.extras.append(line)
            self.sent.append(-len(self.extras))

    def sent_lines(self):
        """Return every event line sent for this type, in order."""
        with self.lock:
            entries, extras = list(self.sent), list(self.extras)
        return [self.archive.line(entry) if entry >= 0 else extras[-entry - 1] for entry in entries]

    def extra_line(self, now_us, size_bytes):
        """Return a fresh event of SIZE_BYTES that is not part of the archive."""
        archive = self.archive
        serial = EXTRA_SERIAL_BASE + len(self.extras)
        if archive.templates:
            line = archive.templates[0].render(serial, now_us, archive.run_tag)
        else:
            line = f'{{"guid":"emulator-{archive.run_tag:03x}{serial:09x}"}}'
        return pad_event(line, size_bytes)
