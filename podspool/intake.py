"""Turn received frames into spool lines: validate, parse, key, run pipelines.

A frame is an event when it is a JSON object in valid UTF-8, text or binary
alike. Everything else becomes a dead-letter item whose reason names what
was wrong. Processing is a pure function of the frame, so several worker
threads may run it; `Intake.process` returns results in arrival order.
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import msgspec

from podspool.dedup import EVENT_TIME, RECEIVE_TIME, TimestampParser, key_digest
from podspool.events import dedup_key

EVENT = "event"
DEAD_LETTER = "dead_letter"
DROPPED = "dropped"
# A batch shorter than this is processed inline: a thread hand-off costs more than it saves.
PARALLEL_MIN_FRAMES = 4


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


# NaN and Infinity are Python extensions that other JSON readers reject.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class Item:
    """One processed frame: an event line to spool, a frame to dead-letter, or a dropped event."""

    __slots__ = ("kind", "line", "digest", "micros", "time_kind", "reason", "raw", "topic")

    def __init__(self, kind, line=None, digest=None, micros=None, time_kind=EVENT_TIME, reason=None, raw=None,
                 topic=None):
        self.kind = kind
        self.topic = topic
        self.line = line
        self.digest = digest
        self.micros = micros
        self.time_kind = time_kind
        self.reason = reason
        self.raw = raw


class EventKeys(msgspec.Struct):
    """The top-level fields of an event that its dedup key and time come from; read them with `get`."""

    guid: object = None
    id: object = None
    ts: object = None

    def get(self, name, default=None):
        return getattr(self, name, default)


# msgspec decoders validate the whole JSON text. The EventKeys decoder builds
# only the three fields and skips the rest without checking that skipped
# strings are valid UTF-8, so a UTF-8 decode of the frame goes with it.
# msgspec (0.23, _core.c) keeps each call's state on the C stack, so worker
# threads can share these objects.
_KEYS_DECODER = msgspec.json.Decoder(EventKeys)
_EVENT_DECODER = msgspec.json.Decoder()
_ENCODER = msgspec.json.Encoder()


def compact_json(event):
    """Serialise EVENT as compact UTF-8 JSON on one line.

    msgspec writes a float infinity or NaN (an input number such as 1e400
    parses to one) as null, because JSON has no form for them.
    """
    return _ENCODER.encode(event)


def _parse_standard(raw):
    """Parse RAW with the standard library; return (event, None, None) or (None, topic, reason)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}"
    try:
        event = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        return None, "invalid_json", f"invalid JSON: {str(exc)[:200]}"
    if not isinstance(event, dict):
        return None, "not_object", f"JSON {type(event).__name__} instead of an object"
    return event, None, None


def parse_event(raw, max_event_bytes, *, keys_only=False):
    """Return (event, None, None) when RAW is a JSON object in valid UTF-8, else (None, topic, reason).

    The topic is a short fixed name of the problem, for counting and rate-limited logs.
    With KEYS_ONLY, the event is an EventKeys with `guid`, `id` and `ts`, which
    takes about a third of the time of a dict of every field on PoD message
    events. msgspec parses first. A frame it rejects goes to the standard
    library, which decides and names the problem, so every frame the standard
    library accepts stays an event, such as one with a lone surrogate escape
    or the number 1e400.
    """
    size = len(raw)
    # NOTE: websocket-client has already read the whole frame into memory by now.
    if size > max_event_bytes:
        return None, "too_large", f"frame of {size} bytes is larger than max_event_bytes ({max_event_bytes})"
    if not size:
        return None, "empty", "empty frame"
    try:
        if keys_only:
            raw.decode("utf-8")
            return _KEYS_DECODER.decode(raw), None, None
        event = _EVENT_DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _parse_standard(raw)
    if not isinstance(event, dict):
        return None, "not_object", f"JSON {type(event).__name__} instead of an object"
    return event, None, None


class Intake:
    """Process frames for one device with its pipelines, inline or on WORKERS threads."""

    def __init__(self, settings, pipeline=None):
        self.max_event_bytes = settings.max_event_bytes
        self.pipeline = pipeline if pipeline is not None and pipeline.active else None
        self.workers = settings.workers if settings.reuse else 1
        self._timestamps = TimestampParser()
        self._executor = None
        if self.workers > 1:
            self._executor = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix=f"device-{settings.name}-worker")

    def process(self, frames):
        """Return one Item per frame of FRAMES (bytes), in the same order.

        With workers, each worker takes one contiguous slice of the batch, so
        the hand-off costs one task per worker instead of one per frame.
        """
        if self._executor is None or len(frames) < PARALLEL_MIN_FRAMES:
            return [self.process_frame(raw) for raw in frames]
        step = -(-len(frames) // self.workers)
        slices = [frames[start:start + step] for start in range(0, len(frames), step)]
        items = []
        for processed in self._executor.map(self._process_slice, slices):
            items.extend(processed)
        return items

    def _process_slice(self, frames):
        return [self.process_frame(raw) for raw in frames]

    def process_frame(self, raw):
        """Return the Item for one frame."""
        multiline = b"\n" in raw or b"\r" in raw
        keys_only = self.pipeline is None and not multiline
        event, topic, reason = parse_event(raw, self.max_event_bytes, keys_only=keys_only)
        if event is None:
            return Item(DEAD_LETTER, reason=reason, raw=raw, topic=topic)
        key = dedup_key(event, raw)
        micros = self._timestamps.micros(event.get("ts"))
        time_kind = EVENT_TIME
        if micros is None or key.startswith("sha256:"):
            time_kind = RECEIVE_TIME
        digest = key_digest(key)
        if self.pipeline is not None:
            outcome = self.pipeline.apply(event)
            if outcome.kind == "drop":
                return Item(DROPPED, reason=outcome.reason)
            if outcome.kind == "dead_letter":
                return Item(DEAD_LETTER, reason=outcome.reason, raw=raw, topic="pipeline")
            if outcome.changed:
                return self._reserialised(outcome.event, raw, digest, micros, time_kind)
        if multiline:
            return self._reserialised(event, raw, digest, micros, time_kind)
        return Item(EVENT, raw, digest, micros, time_kind)

    @staticmethod
    def _reserialised(event, raw, digest, micros, time_kind):
        """Return the Item of EVENT as a compact line, or a dead-letter Item when it cannot be serialised.

        The standard library accepts a lone surrogate escape, which has no
        UTF-8 form, and msgspec accepts nesting deeper than json.dumps can write.
        """
        try:
            line = compact_json(event)
        except (UnicodeEncodeError, RecursionError) as exc:
            return Item(DEAD_LETTER, reason=f"event cannot be written as one UTF-8 JSON line: {type(exc).__name__}",
                        raw=raw, topic="unserialisable")
        return Item(EVENT, line, digest, micros, time_kind)

    def close(self):
        """Stop the worker threads; safe to call twice."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class RateLimitedLog:
    """Log a repeated warning once per interval per topic, with the count of those left out."""

    def __init__(self, logger, interval_seconds=60.0, clock=time.monotonic):
        self.logger = logger
        self.interval_seconds = interval_seconds
        self.clock = clock
        self._topics = {}  # topic -> [time of the last line, lines left out since]

    def warning(self, topic, message, *args, extra):
        now = self.clock()
        entry = self._topics.get(topic)
        if entry is not None and now - entry[0] < self.interval_seconds:
            entry[1] += 1
            return
        suppressed = entry[1] if entry is not None else 0
        self._topics[topic] = [now, 0]
        extra = dict(extra, suppressed=suppressed)
        if suppressed:
            message += " (%d similar lines left out)"
            args += (suppressed,)
        self.logger.warning(message, *args, extra=extra)
