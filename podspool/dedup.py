"""The window of recently spooled event keys that makes a replayed duplicate recognisable.

A key is stored as a 16-byte BLAKE2b digest of the dedup key text, together
with the time that ages it out. That is the event time for keys built from
`guid` or `id` and `ts`, and the receive time for events keyed by a hash of
their bytes.
Keys live in one-minute buckets, so pruning drops whole buckets and never
scans the window.
"""

import hashlib
from datetime import datetime, timezone

from podspool.events import parse_ts

DIGEST_BYTES = 16
MICROS = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BUCKET_MICROS = 60 * MICROS
EVENT_TIME = 0  # the key ages by its event time
RECEIVE_TIME = 1  # the key ages by the time it was received
# Bound the memory of the caches. PoD time stamps repeat a few hours and offsets,
# and a burst or a replay sends many events per second.
HOUR_CACHE_MAX = 4096
SECOND_CACHE_MAX = 4096


def key_digest(key):
    """Return the 16-byte digest that stands for the dedup key text KEY."""
    return hashlib.blake2b(key.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


class TimestampParser:
    """Convert PoD `ts` strings to integer microseconds since the epoch, as instants.

    The common forms `2024-05-22T12:10:03.058340-0700` and `...-07:00` share a
    cached UTC start of their second, computed from a cached start of the
    hour, so most calls only read the microseconds. Other forms go through
    podspool.events.parse_ts.
    Integers keep microsecond instants exact, where floats would round them.
    """

    def __init__(self):
        self._hours = {}
        self._seconds = {}

    def micros(self, ts):
        """Return TS as microseconds since the epoch, or None when it is missing or unreadable."""
        if not isinstance(ts, str):
            return None
        if len(ts) in (31, 32) and ts[19] == ".":
            fraction = ts[20:26]
            if fraction.isascii() and fraction.isdigit():
                # Events of one second share the part of TS without the fraction.
                key = ts[:19] + ts[26:]
                second = self._seconds.get(key)
                if second is None:
                    second = self._second_micros(ts)
                    if second is not None:
                        if len(self._seconds) >= SECOND_CACHE_MAX:
                            self._seconds.clear()
                        self._seconds[key] = second
                if second is not None:
                    return second + int(fraction)
        return self._slow_micros(ts)

    def _second_micros(self, ts):
        """Return the start of the second of the common form TS in microseconds, or None."""
        if ts[13] != ":" or ts[16] != ":":
            return None
        hour = self._hour_micros(ts[:13], ts[26:])
        minutes, seconds = ts[14:16], ts[17:19]
        if hour is None or not (minutes + seconds).isascii() or not (minutes + seconds).isdigit():
            return None
        minutes, seconds = int(minutes), int(seconds)
        if minutes >= 60 or seconds >= 60:
            return None
        return hour + minutes * 60 * MICROS + seconds * MICROS

    def _hour_micros(self, prefix, offset):
        cache_key = prefix + offset
        hour = self._hours.get(cache_key)
        if hour is None:
            hour = self._slow_micros(prefix + ":00:00" + offset)
            if hour is None:
                return None
            if len(self._hours) >= HOUR_CACHE_MAX:
                self._hours.clear()
            self._hours[cache_key] = hour
        return hour

    @staticmethod
    def _slow_micros(ts):
        try:
            moment = parse_ts(ts)
        except ValueError:
            return None
        return to_micros(moment)


def to_micros(moment):
    """Return the aware datetime MOMENT as integer microseconds since the epoch."""
    delta = moment - EPOCH
    return (delta.days * 86400 + delta.seconds) * MICROS + delta.microseconds


class DedupWindow:
    """Digests of spooled events within `window_seconds` of the newest event time seen.

    `in` and `add` are O(1). `prune` removes buckets older than the window,
    measured from the newest event time for EVENT_TIME keys and from the given
    receive time for RECEIVE_TIME keys.
    """

    def __init__(self, window_seconds):
        self.window_micros = int(window_seconds * MICROS)
        self.newest_event_micros = None
        self._members = set()
        self._buckets = ({}, {})  # per time kind: bucket index -> list of digests

    def __len__(self):
        return len(self._members)

    def __contains__(self, digest):
        return digest in self._members

    @property
    def members(self):
        """The set of digests in the window, for fast membership tests. Callers must not change it."""
        return self._members

    def add(self, digest, micros, kind=EVENT_TIME):
        """Record DIGEST aged by MICROS of KIND; return False when it was already there."""
        if digest in self._members:
            return False
        self.add_many(((digest, micros, kind),))
        return True

    def add_many(self, entries):
        """Record each (digest, micros, kind) of ENTRIES. A digest already in the window keeps its entry."""
        members, buckets = self._members, self._buckets
        newest = self.newest_event_micros
        for digest, micros, kind in entries:
            if digest in members:
                continue
            members.add(digest)
            bucket = micros // BUCKET_MICROS
            digests = buckets[kind].get(bucket)
            if digests is None:
                buckets[kind][bucket] = [digest]
            else:
                digests.append(digest)
            if kind == EVENT_TIME and (newest is None or micros > newest):
                newest = micros
        self.newest_event_micros = newest

    def prune(self, now_micros):
        """Drop the keys that fell out of the window; return how many were dropped."""
        dropped = 0
        if self.newest_event_micros is not None:
            dropped += self._drop_before(EVENT_TIME, self.newest_event_micros - self.window_micros)
        dropped += self._drop_before(RECEIVE_TIME, now_micros - self.window_micros)
        return dropped

    def _drop_before(self, kind, cutoff_micros):
        buckets = self._buckets[kind]
        # A bucket goes only when its newest possible time is older than the cutoff.
        stale = [index for index in buckets if (index + 1) * BUCKET_MICROS <= cutoff_micros]
        dropped = 0
        for index in stale:
            for digest in buckets.pop(index):
                self._members.discard(digest)
                dropped += 1
        return dropped

    def entries(self):
        """Yield (digest, micros, kind) for every key, with micros at the start of its bucket."""
        for kind, buckets in enumerate(self._buckets):
            for index, digests in buckets.items():
                start = index * BUCKET_MICROS
                for digest in digests:
                    yield digest, start, kind

