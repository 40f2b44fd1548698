"""Dedup window, time stamp parsing and frame intake: pure functions, no server."""

import json
from types import SimpleNamespace

import pytest

from podspool.dedup import (
    BUCKET_MICROS,
    EVENT_TIME,
    MICROS,
    RECEIVE_TIME,
    DedupWindow,
    TimestampParser,
    key_digest,
    to_micros,
)
from podspool.events import parse_ts
from podspool.intake import DEAD_LETTER, DROPPED, EVENT, Intake, compact_json, parse_event
from podspool.settings import DeviceSettings

HOUR = 3600 * MICROS


def settings(**overrides):
    values = dict(id=1, name="dev", cluster="example_hosted", token="t", type="message")
    values.update(overrides)
    return DeviceSettings(**values)


@pytest.mark.parametrize("ts", [
    "2024-05-22T12:10:03.058340-0700",
    "2024-05-22T12:10:03.058340-07:00",
    "2024-05-22T19:10:03.058340+0000",
    "2024-05-22T21:10:03.058340+02:00",
    "2024-05-22T19:10:03.058340Z",
    "2024-05-22T19:10:03+00:00",
    "2024-05-22T19:10:03.058340",
])
def test_parser_matches_parse_ts(ts):
    assert TimestampParser().micros(ts) == to_micros(parse_ts(ts))


@pytest.mark.parametrize("ts", [None, 17, "", "yesterday", "2024-05-22T12:10:03.05834x-0700",
                                "2024-05-22T12:75:03.058340-0700"])
def test_parser_rejects_unreadable_values(ts):
    assert TimestampParser().micros(ts) is None


def test_parser_orders_offsets_as_instants():
    parser = TimestampParser()
    # As strings the +0000 value is the largest; as instants the -07:00 one is.
    values = ["2024-05-22T12:10:03.000000-0700", "2024-05-22T18:00:00.000000-07:00",
              "2024-05-22T20:00:00.000000+0000"]
    newest = max(values, key=parser.micros)
    assert newest == "2024-05-22T18:00:00.000000-07:00"
    assert max(values) == "2024-05-22T20:00:00.000000+0000"


def test_parser_cache_stays_bounded():
    parser = TimestampParser()
    for day in range(1, 29):
        for hour in range(24):
            parser.micros(f"2024-02-{day:02d}T{hour:02d}:00:00.000000-0700")
    assert len(parser._hours) <= 4096


def test_key_digest_is_sixteen_bytes():
    first = key_digest("guid-1|2024-05-22T12:10:03.058340-0700")
    assert len(first) == 16
    assert first == key_digest("guid-1|2024-05-22T12:10:03.058340-0700")
    assert first != key_digest("guid-1|2024-05-22T12:10:03.058341-0700")


def test_window_drops_repeated_digest():
    window = DedupWindow(7200)
    digest = key_digest("a|t")
    assert window.add(digest, 10 * HOUR) is True
    assert window.add(digest, 10 * HOUR) is False
    assert digest in window
    assert len(window) == 1


def test_window_prunes_by_newest_event_time():
    window = DedupWindow(2 * 3600)
    old, kept = key_digest("old"), key_digest("kept")
    window.add(old, 10 * HOUR)
    window.add(kept, 11 * HOUR)
    # Wall clock far ahead does not age event-time keys: only newer events do.
    assert window.prune(now_micros=100 * HOUR) == 0
    window.add(key_digest("new"), 12 * HOUR + 2 * BUCKET_MICROS)
    assert window.prune(now_micros=0) == 1
    assert old not in window
    assert kept in window


def test_window_prunes_keyless_by_receive_time():
    window = DedupWindow(3600)
    keyless = key_digest("sha256:abc")
    window.add(keyless, 5 * HOUR, RECEIVE_TIME)
    assert window.prune(now_micros=5 * HOUR + 30 * 60 * MICROS) == 0
    assert window.prune(now_micros=6 * HOUR + 2 * BUCKET_MICROS) == 1
    assert keyless not in window


def test_window_entries_keep_bucket_and_kind():
    window = DedupWindow(3600)
    window.add(key_digest("a"), 7 * HOUR + 123, EVENT_TIME)
    window.add(key_digest("b"), 8 * HOUR + 456, RECEIVE_TIME)
    entries = sorted(window.entries(), key=lambda entry: entry[1])
    assert entries == [(key_digest("a"), 7 * HOUR, EVENT_TIME), (key_digest("b"), 8 * HOUR, RECEIVE_TIME)]


@pytest.mark.parametrize("raw, topic", [
    (b"", "empty"),
    (b"not json", "invalid_json"),
    (b'{"guid":"\xff\xfe"}', "invalid_utf8"),
    (b"[1, 2, 3]", "not_object"),
    (b'"text"', "not_object"),
    (b'{"a": NaN}', "invalid_json"),
    (b'{"a":"' + b"x" * 100 + b'"}', "too_large"),
])
def test_parse_event_names_problem(raw, topic):
    event, found_topic, reason = parse_event(raw, max_event_bytes=64)
    assert event is None
    assert found_topic == topic
    assert reason


def test_parse_event_reports_size():
    _, _, reason = parse_event(b"x" * 100, max_event_bytes=64)
    assert "100 bytes" in reason


def test_intake_keeps_single_line_frame_raw():
    raw = b'{ "guid" : "g1", "ts" : "2024-05-22T12:10:03.058340-0700", "s": "\\u00e9" }'
    item = Intake(settings()).process_frame(raw)
    assert item.kind == EVENT
    assert item.line is raw
    assert item.digest == key_digest("g1|2024-05-22T12:10:03.058340-0700")
    assert item.micros == to_micros(parse_ts("2024-05-22T12:10:03.058340-0700"))
    assert item.time_kind == EVENT_TIME


def test_intake_reserialises_multiline_frame():
    raw = b'{"id": "m1",\r\n "ts": "2024-05-22T12:10:03.058340-07:00",\n "s": "\xc3\xa9"}'
    item = Intake(settings()).process_frame(raw)
    assert item.kind == EVENT
    assert item.line == '{"id":"m1","ts":"2024-05-22T12:10:03.058340-07:00","s":"é"}'.encode()
    assert b"\n" not in item.line


def test_intake_keys_keyless_object_by_bytes():
    raw = b'{"other": 1}'
    item = Intake(settings()).process_frame(raw)
    assert item.time_kind == RECEIVE_TIME
    assert item.digest == key_digest("sha256:" + __import__("hashlib").sha256(raw).hexdigest())


def test_intake_accepts_binary_json_object():
    item = Intake(settings()).process_frame(bytearray(b'{"guid":"b","ts":"2024-05-22T19:10:03.000000+0000"}'))
    assert item.kind == EVENT


def test_intake_dead_letters_with_topic():
    item = Intake(settings(max_event_bytes=10)).process_frame(b'{"guid":"long-enough"}')
    assert item.kind == DEAD_LETTER
    assert item.topic == "too_large"
    assert item.raw == b'{"guid":"long-enough"}'


class FakePipeline:
    active = True

    def __init__(self, kind="keep", changed=True):
        self.kind = kind
        self.changed = changed

    def apply(self, event):
        event["added"] = True
        return SimpleNamespace(kind=self.kind, event=event, reason=f"test {self.kind}", changed=self.changed)


def test_intake_pipeline_change_reserialises():
    raw = b'{"guid":"g","ts":"2024-05-22T19:10:03.000000+0000"}'
    item = Intake(settings(), FakePipeline()).process_frame(raw)
    assert json.loads(item.line) == {"guid": "g", "ts": "2024-05-22T19:10:03.000000+0000", "added": True}
    # The key is the one of the event as received.
    assert item.digest == key_digest("g|2024-05-22T19:10:03.000000+0000")


def test_intake_unchanged_pipeline_keeps_raw():
    raw = b'{"guid":"g", "ts":"2024-05-22T19:10:03.000000+0000"}'
    item = Intake(settings(), FakePipeline(changed=False)).process_frame(raw)
    assert item.line is raw


@pytest.mark.parametrize("kind, expected", [("drop", DROPPED), ("dead_letter", DEAD_LETTER)])
def test_intake_pipeline_outcomes(kind, expected):
    item = Intake(settings(), FakePipeline(kind)).process_frame(b'{"guid":"g"}')
    assert item.kind == expected
    assert item.reason == f"test {kind}"


def test_intake_workers_keep_arrival_order():
    intake = Intake(settings(workers=4, reuse=True))
    try:
        frames = [compact_json({"guid": f"g{index}", "ts": "2024-05-22T19:10:03.000000+0000"})
                  for index in range(500)]
        items = intake.process(frames)
    finally:
        intake.close()
    assert [item.line for item in items] == frames
    intake.close()


def test_intake_without_reuse_uses_one_worker():
    intake = Intake(settings(workers=4, reuse=False))
    assert intake.workers == 1
    assert intake._executor is None
