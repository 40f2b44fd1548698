"""Frame validation on the fast path: the same verdicts as the standard library's json module."""

import json

import pytest

from podspool.intake import DEAD_LETTER, EVENT, Intake, parse_event
from podspool.settings import DeviceSettings

LIMIT = 1 << 20


@pytest.mark.parametrize("raw", [
    b'{"guid": "a", "ts": "2024-05-22T12:10:03.058340-0700", "s": "\\ud800"}',
    b'{"guid": "a", "n": 1e400}',
    b'{"guid": "a", "n": 123456789012345678901234567890}',
    b'{"guid": "a", "nested": ' + b"[" * 50 + b"]" * 50 + b"}",
])
@pytest.mark.parametrize("keys_only", [False, True])
def test_parse_accepts_what_json_accepts(raw, keys_only):
    assert isinstance(json.loads(raw), dict)
    event, topic, reason = parse_event(raw, LIMIT, keys_only=keys_only)
    assert event is not None, reason
    assert topic is None
    assert event.get("guid") == "a"


@pytest.mark.parametrize("raw,topic", [
    (b'{"guid": "a", "skipped": "\xff\xfe"}', "invalid_utf8"),
    (b'{"guid": "a", "skipped": [1, 2}', "invalid_json"),
    (b'[{"guid": "a"}]', "not_object"),
    (b'"text"', "not_object"),
    (b"", "empty"),
])
@pytest.mark.parametrize("keys_only", [False, True])
def test_parse_rejects_what_json_rejects(raw, topic, keys_only):
    event, found_topic, reason = parse_event(raw, LIMIT, keys_only=keys_only)
    assert event is None
    assert found_topic == topic, reason
    assert reason


def test_parse_duplicate_key_last_wins():
    raw = b'{"guid": "first", "guid": "second", "ts": "2024-05-22T12:10:03.058340-0700"}'
    assert json.loads(raw)["guid"] == "second"
    for keys_only in (False, True):
        event, _, _ = parse_event(raw, LIMIT, keys_only=keys_only)
        assert event.get("guid") == "second"


def test_parse_too_large_names_size():
    event, topic, reason = parse_event(b'{"a": 1}', 4)
    assert event is None
    assert topic == "too_large"
    assert "8 bytes" in reason


def test_intake_multiline_event_rewritten_on_one_line():
    intake = Intake(DeviceSettings(id=1, name="d", cluster="c", token="t"))
    item = intake.process_frame(b'{\n  "guid": "a",\n  "ts": "2024-05-22T12:10:03.058340-0700"\n}')
    assert item.kind == EVENT
    assert b"\n" not in item.line
    assert json.loads(item.line) == {"guid": "a", "ts": "2024-05-22T12:10:03.058340-0700"}


def test_intake_unserialisable_multiline_dead_lettered():
    intake = Intake(DeviceSettings(id=1, name="d", cluster="c", token="t"))
    item = intake.process_frame(b'{\n"guid": "a", "s": "\\ud800"\n}')
    assert item.kind == DEAD_LETTER
    assert item.topic == "unserialisable"
