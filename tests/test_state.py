"""Device state: the key journal, the state file, the sink's checkpoint and crash recovery, resume planning."""

import json
import os
import stat
from datetime import datetime, timezone

import pytest

from podspool.dedup import MICROS, RECEIVE_TIME, DedupWindow, key_digest
from podspool.errors import SpoolFullError
from podspool.intake import Intake
from podspool.resume import ceil_hour, floor_hour, plan_replay, server_can_resume
from podspool.settings import DeviceSettings, SpoolSettings
from podspool.sink import DeviceSink, format_micros
from podspool.spool import SpoolWriter
from podspool.state import KEY_RECORD, DeviceStateStore
from podspool.stats import DeviceStats

HOUR = 3600 * MICROS
NOW = 1736503200.0  # 2025-01-10T10:00:00Z


def utc(text):
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def device_settings(**overrides):
    values = dict(id=1, name="dev", cluster="example_hosted", token="t", type="message")
    values.update(overrides)
    return DeviceSettings(**values)


def spool_settings(tmp_path, fsync="interval"):
    return SpoolSettings(directory=str(tmp_path / "spool"), rotate_bytes=1 << 30, rotate_seconds=3600.0,
                         fsync=fsync, fsync_seconds=0.0, max_bytes=1 << 40)


def event(guid, ts, **fields):
    return json.dumps(dict(guid=guid, ts=ts, **fields), separators=(",", ":")).encode()


# -- the store ----------------------------------------------------------------

def test_store_round_trips_state_and_keys(tmp_path):
    store = DeviceStateStore(str(tmp_path), "dev")
    window = DedupWindow(7200)
    state = store.load(window)
    assert state.exists is False
    state.checkpoint_micros = 10 * HOUR
    state.last_connected = NOW
    state.clean_stop = True
    state.position = (3, 1200)
    store.commit([(key_digest("a"), 10 * HOUR, 0), (key_digest("b"), 9 * HOUR, RECEIVE_TIME)])
    store.close()

    again = DeviceStateStore(str(tmp_path), "dev")
    window = DedupWindow(7200)
    state = again.load(window)
    assert state.exists is True
    assert state.checkpoint_micros == 10 * HOUR
    assert state.last_connected == NOW
    assert state.clean_stop is True
    assert state.position == (3, 1200)
    assert key_digest("a") in window
    assert key_digest("b") in window
    again.close()


def test_store_ignores_uncommitted_journal_tail(tmp_path):
    store = DeviceStateStore(str(tmp_path), "dev")
    store.load(DedupWindow(7200))
    store.commit([(key_digest("committed"), HOUR, 0)])
    store.close()
    # A crash after the journal append and before state.json: the tail is not committed.
    with open(store.journal_path(0), "ab") as handle:
        handle.write(KEY_RECORD.pack(key_digest("torn"), HOUR, 0) + b"\x01\x02")

    window = DedupWindow(7200)
    store = DeviceStateStore(str(tmp_path), "dev")
    store.load(window)
    assert key_digest("committed") in window
    assert key_digest("torn") not in window
    assert os.path.getsize(store.journal_path(0)) == KEY_RECORD.size
    store.close()


def test_store_compaction_keeps_live_keys(tmp_path, monkeypatch):
    monkeypatch.setattr("podspool.state.COMPACT_SLACK_RECORDS", 5)
    store = DeviceStateStore(str(tmp_path), "dev")
    window = DedupWindow(3600)
    store.load(window)
    keys = []
    for index in range(20):
        digest = key_digest(f"k{index}")
        window.add(digest, index * HOUR)
        keys.append((digest, index * HOUR, 0))
    store.commit(keys)
    window.prune(0)
    assert store.needs_compaction(window)
    store.compact(window)
    assert store.state.generation == 1
    assert not os.path.exists(store.journal_path(0))
    store.close()

    reloaded = DedupWindow(3600)
    DeviceStateStore(str(tmp_path), "dev").load(reloaded)
    assert len(reloaded) == len(window)
    assert key_digest("k19") in reloaded
    assert key_digest("k0") not in reloaded


def test_store_files_have_documented_modes(tmp_path):
    old_umask = os.umask(0o002)
    try:
        store = DeviceStateStore(str(tmp_path / "state"), "dev")
        store.load(DedupWindow(60))
        store.commit([(key_digest("a"), HOUR, 0)])
        store.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(store.state_path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(store.journal_path(0)).st_mode) == 0o640


# -- the sink -----------------------------------------------------------------

@pytest.fixture
def sink_parts(tmp_path):
    settings = device_settings()
    writer = SpoolWriter(spool_settings(tmp_path), "dev")
    stats = DeviceStats()
    sink = DeviceSink(settings, writer, str(tmp_path / "state"), stats)
    sink.open(NOW)
    yield settings, writer, stats, sink
    sink.close()
    writer.close()


def spool(sink, settings, frames, now=NOW):
    return sink.spool(Intake(settings).process(frames), now)


def test_sink_checkpoint_uses_instants(sink_parts):
    settings, writer, stats, sink = sink_parts
    spool(sink, settings, [
        event("a", "2024-05-22T12:10:03.000000-0700"),
        event("b", "2024-05-22T18:00:00.000000-07:00"),
        event("c", "2024-05-22T20:00:00.000000+0000"),
    ])
    assert writer.tick() is True
    sink.commit(NOW, durable=True)
    assert stats.checkpoint == "2024-05-23T01:00:00.000000Z"


def test_sink_checkpoint_never_moves_back(sink_parts):
    settings, writer, stats, sink = sink_parts
    spool(sink, settings, [event("new", "2024-05-22T20:00:00.000000+0000")])
    writer.sync()
    sink.commit(NOW, durable=True)
    spool(sink, settings, [event("old", "2024-05-22T08:00:00.000000+0000")])
    writer.sync()
    sink.commit(NOW, durable=True)
    assert stats.checkpoint == "2024-05-22T20:00:00.000000Z"
    assert stats.events_spooled == 2


def test_sink_checkpoint_waits_for_durable_point(sink_parts):
    settings, writer, stats, sink = sink_parts
    spool(sink, settings, [event("a", "2024-05-22T20:00:00.000000+0000")])
    sink.commit(NOW, durable=False)
    assert stats.checkpoint is None
    assert sink.store.state.journal_bytes == 0


def test_sink_drops_duplicates_in_and_across_batches(sink_parts):
    settings, writer, stats, sink = sink_parts
    first = event("a", "2024-05-22T20:00:00.000000+0000")
    spool(sink, settings, [first, first, event("b", "2024-05-22T20:00:01.000000+0000")])
    spool(sink, settings, [first])
    # Same guid and instant written with another offset is another key: PoD keys use the text.
    assert stats.events_spooled == 2
    assert stats.duplicates_dropped == 2
    assert list(writer.lines_after((0, 0))) == [first, event("b", "2024-05-22T20:00:01.000000+0000")]


def test_sink_holds_events_when_spool_full(sink_parts, monkeypatch):
    settings, writer, stats, sink = sink_parts
    real_write_many = writer.write_many

    def refuse(lines):
        raise SpoolFullError("spool full for test")

    monkeypatch.setattr(writer, "write_many", refuse)
    frames = [event("a", "2024-05-22T20:00:00.000000+0000"), b"[]", event("b", "2024-05-22T20:00:01.000000+0000")]
    assert spool(sink, settings, frames) is False
    assert stats.paused is True
    assert len(sink.in_hand) == 3
    assert stats.events_spooled == 0

    monkeypatch.setattr(writer, "write_many", real_write_many)
    assert sink.flush(NOW) is True
    assert stats.paused is False
    assert stats.events_spooled == 2
    assert stats.dead_lettered == 1
    assert len(list(writer.lines_after((0, 0)))) == 2


def test_sink_recovers_keys_after_crash(tmp_path):
    settings = device_settings()
    writer = SpoolWriter(spool_settings(tmp_path), "dev")
    sink = DeviceSink(settings, writer, str(tmp_path / "state"), DeviceStats())
    sink.open(NOW)
    writer.sync()
    sink.commit(NOW, durable=True)
    spool(sink, settings, [event("a", "2024-05-22T20:00:00.000000+0000"), b'{"keyless":1}'])
    # A crash: the lines are in the spool, the keys were never committed.
    sink.close()
    writer._is_open = False

    stats = DeviceStats()
    writer2 = SpoolWriter(spool_settings(tmp_path), "dev")
    sink2 = DeviceSink(settings, writer2, str(tmp_path / "state"), stats)
    sink2.open(NOW)
    spool(sink2, settings, [event("a", "2024-05-22T20:00:00.000000+0000"), b'{"keyless":1}'])
    assert stats.duplicates_dropped == 2
    assert stats.events_spooled == 0
    writer2.sync()
    sink2.commit(NOW, durable=True)
    assert stats.checkpoint == "2024-05-22T20:00:00.000000Z"
    sink2.close()
    writer2.close()


def test_sink_dead_letter_records_reason(sink_parts, tmp_path):
    settings, writer, stats, sink = sink_parts
    spool(sink, settings, [b"\xff\xfe", b""])
    directory = tmp_path / "spool" / "dev" / "dead-letter"
    records = [json.loads(line) for path in directory.iterdir() for line in path.read_bytes().splitlines()]
    assert [record["reason"] for record in records] == ["invalid UTF-8 at byte 0", "empty frame"]
    assert stats.dead_lettered == 2


def test_format_micros_is_rfc3339():
    assert format_micros(1736503200 * MICROS + 58340) == "2025-01-10T10:00:00.058340Z"


# -- resume planning ----------------------------------------------------------

def test_hour_rounding():
    assert floor_hour(utc("2025-01-10T10:59:59.999999+00:00")) == utc("2025-01-10T10:00:00+00:00")
    assert ceil_hour(utc("2025-01-10T10:00:00.000001+00:00")) == utc("2025-01-10T11:00:00+00:00")
    assert ceil_hour(utc("2025-01-10T10:00:00+00:00")) == utc("2025-01-10T10:00:00+00:00")
    assert floor_hour(utc("2025-01-10T03:30:00-07:00")) == utc("2025-01-10T10:00:00+00:00")


@pytest.mark.parametrize("last_connected, clean, expected", [
    (NOW - 60, True, True),
    (NOW - 3300, True, False),
    (NOW - 60, False, False),
    (None, True, False),
])
def test_server_can_resume(last_connected, clean, expected):
    assert server_can_resume(NOW, last_connected, clean, 3300) is expected


def test_plan_replays_from_checkpoint_hour():
    plan = plan_replay(NOW + 1800, utc("2025-01-10T07:42:10.5+00:00"), None)
    assert plan.since == utc("2025-01-10T07:00:00+00:00")
    assert plan.until == utc("2025-01-10T11:00:00+00:00")
    assert plan.gap is None


def test_plan_uses_since_setting_first_start():
    plan = plan_replay(NOW, None, "2025-01-09T23:15:00-0200")
    assert plan.since == utc("2025-01-10T01:00:00+00:00")


def test_plan_without_start_is_none():
    assert plan_replay(NOW, None, None) is None


def test_plan_older_than_thirty_days_has_gap():
    checkpoint = utc("2024-11-01T05:30:00+00:00")
    plan = plan_replay(NOW + 1800, checkpoint, None)
    assert plan.since == utc("2024-12-11T11:00:00+00:00")
    assert plan.gap == (checkpoint, plan.since)
