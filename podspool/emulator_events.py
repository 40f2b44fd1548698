"""Event templates for the PoD emulator: load NDJSON samples and render fresh copies fast.

Each sample line is split once, at load time, around its top-level `guid`/`id`
and `ts` string values. A fresh event is then a string join of the unchanged
parts with a new id and a new time stamp, so generating one costs no JSON
parsing or serialisation.
"""

import importlib.resources
import json
import os
import re
import time
from dataclasses import dataclass

from podspool.errors import ConfigError

LOG_TYPES = ("message", "maillog", "audit")
ID_KEYS = ("guid", "id")
# Fresh ids keep the sample's value and replace its last 12 characters with
# 3 hex digits of a per-run tag and 9 hex digits of the event's serial number.
# A UUID keeps its shape, because its last group is 12 hex digits.
ID_SUFFIX_CHARS = 12

_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_OFFSET = re.compile(r"(Z|[+-](\d\d):?(\d\d))$")


def top_level_spans(raw):
    """Return {key: (start, end)} of each top-level value's text in the JSON object RAW."""
    spans = {}
    index = _WHITESPACE.match(raw, 0).end()
    if raw[index : index + 1] != "{":
        raise ValueError("not a JSON object")
    index = _WHITESPACE.match(raw, index + 1).end()
    if raw[index : index + 1] == "}":
        return spans
    while True:
        key, index = _DECODER.raw_decode(raw, index)
        index = _WHITESPACE.match(raw, index).end()
        if raw[index : index + 1] != ":":
            raise ValueError(f"expected ':' at character {index}")
        start = _WHITESPACE.match(raw, index + 1).end()
        _, end = _DECODER.raw_decode(raw, start)
        spans[key] = (start, end)
        index = _WHITESPACE.match(raw, end).end()
        separator = raw[index : index + 1]
        if separator == "}":
            return spans
        if separator != ",":
            raise ValueError(f"expected ',' or '}}' at character {index}")
        index = _WHITESPACE.match(raw, index + 1).end()


class TimestampFormatter:
    """Format instants (integer microseconds since the epoch) like one sample's `ts`.

    The output keeps the sample's UTC offset and its spelling (`-0700`, `-07:00`,
    `+0000`, `Z` or none) and always has 6 fraction digits. The text up to the
    seconds is cached per second, which makes the common case one f-string.
    """

    def __init__(self, sample_ts):
        match = _OFFSET.search(sample_ts)
        self.suffix = match.group(1) if match else ""
        self.offset_seconds = 0
        if match and match.group(2):
            sign = -1 if self.suffix.startswith("-") else 1
            self.offset_seconds = sign * (int(match.group(2)) * 3600 + int(match.group(3)) * 60)
        # One tuple, replaced whole, so threads sharing a formatter never see a torn cache.
        self._cache = (None, "")

    def format(self, instant_us):
        """Return the time stamp text for INSTANT_US."""
        seconds, micros = divmod(instant_us, 1_000_000)
        cached_seconds, prefix = self._cache
        if cached_seconds != seconds:
            local = time.gmtime(seconds + self.offset_seconds)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            self._cache = (seconds, prefix)
        return f"{prefix}.{micros:06d}{self.suffix}"


@dataclass(frozen=True)
class EventTemplate:
    """One sample event, split around the values that each fresh copy replaces.

    `pieces` is the line cut into text pieces, with None where a value goes:
    `id_slots` lists (index, stem) for the top-level `guid` and `id` strings,
    and `ts_slot` is the index of the top-level `ts` string. `raw` is the line
    exactly as in the file.
    """

    raw: str
    pieces: tuple
    id_slots: tuple
    ts_slot: int | None
    formatter: TimestampFormatter | None

    def render(self, serial, instant_us, run_tag):
        """Return a fresh line: a new id from SERIAL and RUN_TAG, `ts` set to INSTANT_US."""
        pieces = list(self.pieces)
        for index, stem in self.id_slots:
            pieces[index] = f'"{stem}{run_tag:03x}{serial:09x}"'
        if self.ts_slot is not None:
            pieces[self.ts_slot] = '"' + self.formatter.format(instant_us) + '"'
        return "".join(pieces)


def build_template(raw):
    """Split the JSON object line RAW into an EventTemplate; raise ValueError if it is no object."""
    event = json.loads(raw)
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    spans = top_level_spans(raw)
    cuts = []
    for key in ID_KEYS:
        value = event.get(key)
        if key in spans and isinstance(value, str):
            cuts.append((spans[key], value[:-ID_SUFFIX_CHARS]))
    formatter = None
    if "ts" in spans and isinstance(event.get("ts"), str):
        formatter = TimestampFormatter(event["ts"])
        cuts.append((spans["ts"], None))
    cuts.sort()
    pieces, id_slots, ts_slot, position = [], [], None, 0
    for (start, end), stem in cuts:
        pieces.append(raw[position:start])
        if stem is None:
            ts_slot = len(pieces)
        else:
            id_slots.append((len(pieces), stem))
        pieces.append(None)
        position = end
    pieces.append(raw[position:])
    return EventTemplate(raw, tuple(pieces), tuple(id_slots), ts_slot, formatter)


def _read_lines(log_type, events_dir):
    """Return (name, text) of the NDJSON file for LOG_TYPE, or None when it does not exist."""
    filename = f"{log_type}.ndjson"
    if events_dir is None:
        resource = importlib.resources.files("podspool") / "samples" / filename
        return f"podspool/samples/{filename}", resource.read_text(encoding="utf-8")
    path = os.path.join(os.fspath(events_dir), filename)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as stream:
            return path, stream.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read events file: {exc}", file=path) from exc


def load_templates(log_type, events_dir=None):
    """Load the templates of LOG_TYPE from EVENTS_DIR (default: the bundled samples).

    Returns an empty list when EVENTS_DIR has no file for that type. Blank
    lines are skipped; a line that is not a JSON object raises ConfigError.
    """
    found = _read_lines(log_type, events_dir)
    if found is None:
        return []
    name, text = found
    templates = []
    for number, line in enumerate(text.split("\n"), start=1):
        raw = line[:-1] if line.endswith("\r") else line
        if not raw.strip():
            continue
        try:
            templates.append(build_template(raw))
        except ValueError as exc:
            raise ConfigError(
                f"line {number} is not a JSON object: {exc}",
                file=name,
                fix="write one JSON object per line",
            ) from exc
    return templates


def pad_event(line, size_bytes):
    """Return LINE with an `emulatorPadding` field that makes it SIZE_BYTES long in UTF-8.

    The result stays a valid JSON object; a LINE already that long only gains
    an empty padding field.
    """
    head, body = line[:1], line[1:]
    separator = "" if body.lstrip().startswith("}") else ","
    field_start = '"emulatorPadding":"'
    field_end = '"' + separator
    used = len(line.encode("utf-8")) + len(field_start) + len(field_end)
    return head + field_start + "x" * max(0, size_bytes - used) + field_end + body
