"""Tests of the spool writer, recovery, capacity, and the file names and modes readers rely on."""

import errno
import glob
import json
import logging
import os
import stat
import threading

import pytest

from podspool import spool_files
from podspool.errors import SpoolError, SpoolFullError
from podspool.settings import SpoolSettings
from podspool.spool import SEQUENCE_FILE, SpoolCapacity, SpoolWriter, list_closed, read_lines, rotation_due
from podspool.spool_files import spool_file_name

DEVICE = "dev1"
T0 = 1735813800.0  # 2025-01-02T10:30:00Z


class FakeClock:
    def __init__(self, now=T0):
        self.now = now

    def __call__(self):
        return self.now


def make_settings(tmp_path, **overrides):
    values = dict(
        directory=str(tmp_path / "spool"), rotate_bytes=1024, rotate_seconds=60.0, fsync="interval",
        fsync_seconds=1.0, max_bytes=10**9, compress="none",
    )
    values.update(overrides)
    return SpoolSettings(**values)


def open_writer(tmp_path, clock=None, device=DEVICE, capacity=None, **overrides):
    writer = SpoolWriter(make_settings(tmp_path, **overrides), device, capacity=capacity, clock=clock or FakeClock())
    writer.open()
    return writer


def event(number, pad=0):
    return json.dumps({"n": number, "pad": "x" * pad}, separators=(",", ":")).encode()


def spooled_numbers(spool_root, device=DEVICE):
    numbers = []
    for closed in list_closed(spool_root, device):
        numbers.extend(json.loads(line)["n"] for line, _ in read_lines(closed))
    return numbers


def test_should_rotate_size_and_age():
    assert not rotation_due(0, T0, T0 + 999, 100, 60)  # no active file yet
    assert not rotation_due(99, T0, T0 + 59.9, 100, 60)
    assert rotation_due(100, T0, T0, 100, 60)
    assert rotation_due(1, T0, T0 + 60, 100, 60)
    assert rotation_due(1, T0, T0 - 1, 100, 60)  # the clock moved back


def test_writer_rotates_at_rotate_bytes(tmp_path):
    writer = open_writer(tmp_path, rotate_bytes=1000)
    line = event(0, pad=83)  # 100 bytes with its newline
    assert len(line) == 99
    for _ in range(25):
        writer.write(line)
    files = list_closed(writer.settings.directory, DEVICE)
    assert [closed.size for closed in files] == [1000, 1000]
    assert writer.position == (2, 500)
    writer.close()
    assert [closed.size for closed in list_closed(writer.settings.directory, DEVICE)] == [1000, 1000, 500]


def test_idle_file_closes_on_tick(tmp_path):
    clock = FakeClock()
    writer = open_writer(tmp_path, clock, rotate_seconds=60.0)
    writer.write(event(1))
    clock.now = T0 + 59.5
    writer.tick()
    assert list_closed(writer.settings.directory, DEVICE) == []
    writer.tick(now=T0 + 60.0)
    files = list_closed(writer.settings.directory, DEVICE)
    assert [closed.name for closed in files] == ["000000000000-20250102T103000Z.ndjson"]
    assert sorted(os.listdir(writer.directory)) == [SEQUENCE_FILE, files[0].name]


def test_no_file_before_first_line(tmp_path):
    clock = FakeClock()
    writer = open_writer(tmp_path, clock)
    clock.now += 3600
    assert writer.tick() is True
    writer.close()
    assert sorted(os.listdir(writer.directory)) == []


def test_names_sort_when_clock_jumps(tmp_path):
    clock = FakeClock()
    writer = open_writer(tmp_path, clock)
    for number, moment in enumerate((T0, T0 + 120, T0 - 7200, T0 - 7100, T0 + 86400)):
        clock.now = moment
        writer.write(event(number))
        writer.rotate()
    names = [closed.name for closed in list_closed(writer.settings.directory, DEVICE)]
    assert names == sorted(names)
    assert spooled_numbers(writer.settings.directory) == [0, 1, 2, 3, 4]
    assert names[2] == "000000000002-20250102T083000Z.ndjson"


def test_clock_moving_back_rotates(tmp_path):
    clock = FakeClock()
    writer = open_writer(tmp_path, clock)
    writer.write(event(0))
    clock.now = T0 - 30
    writer.write(event(1))
    numbers_by_file = [[json.loads(line)["n"] for line, _ in read_lines(closed)] for closed in list_closed(writer.settings.directory, DEVICE)]
    assert numbers_by_file == [[0]]


def test_sequence_continues_across_restarts(tmp_path):
    writer = open_writer(tmp_path)
    writer.write(event(0))
    writer.close()
    writer = open_writer(tmp_path)
    writer.write(event(1))
    writer.close()
    files = list_closed(writer.settings.directory, DEVICE)
    assert [closed.sequence for closed in files] == [0, 1]

    # With every closed file removed, the hidden sequence file still continues the numbering.
    for closed in files:
        os.unlink(closed.path)
    writer = open_writer(tmp_path)
    writer.write(event(2))
    writer.close()
    assert [closed.sequence for closed in list_closed(writer.settings.directory, DEVICE)] == [2]


def test_close_is_idempotent_and_final(tmp_path):
    writer = open_writer(tmp_path)
    writer.write(event(0))
    writer.close()
    writer.close()
    assert [name for name in os.listdir(writer.directory) if name.endswith(".open")] == []
    with pytest.raises(SpoolError):
        writer.write(event(1))


def write_leftover(directory, sequence, content):
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, spool_file_name(sequence, T0, kind="active"))
    with open(path, "wb") as handle:
        handle.write(content)
    return path


def test_recovery_truncates_torn_line(tmp_path, caplog):
    settings = make_settings(tmp_path)
    directory = os.path.join(settings.directory, DEVICE)
    leftover = write_leftover(directory, 7, event(0) + b"\n" + event(1) + b"\n" + b'{"n":2,"pa')
    temp = os.path.join(directory, ".000000000006-20250102T103000Z.ndjson.gz.tmp")
    open(temp, "wb").close()

    caplog.set_level(logging.INFO, logger="podspool")
    writer = open_writer(tmp_path)
    assert not os.path.exists(leftover)
    assert not os.path.exists(temp)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "10 bytes" in warnings[0].getMessage()
    assert warnings[0].device == DEVICE
    assert spooled_numbers(settings.directory) == [0, 1]
    assert writer.position == (8, 0)


def test_recovery_removes_empty_leftover(tmp_path):
    settings = make_settings(tmp_path)
    directory = os.path.join(settings.directory, DEVICE)
    write_leftover(directory, 3, b"")
    write_leftover(directory, 4, b'{"torn":')
    writer = open_writer(tmp_path)
    assert list_closed(settings.directory, DEVICE) == []
    assert [name for name in os.listdir(directory) if name != SEQUENCE_FILE] == []
    assert writer.position == (5, 0)


def test_recovery_keeps_finished_compressed_copy(tmp_path):
    settings = make_settings(tmp_path, compress="gzip")
    directory = os.path.join(settings.directory, DEVICE)
    write_leftover(directory, 2, event(0) + b"\n")
    spool_files.close_into_place(directory, 2, T0, compress="gzip", sync=False, device=DEVICE)
    leftover = write_leftover(directory, 2, event(0) + b"\n")  # a crash before the active file was removed
    open_writer(tmp_path, compress="gzip")
    assert not os.path.exists(leftover)
    assert spooled_numbers(settings.directory) == [0]


def test_durable_position_per_policy(tmp_path):
    clock = FakeClock()
    always = open_writer(tmp_path, clock, device="always", fsync="always")
    never = open_writer(tmp_path, clock, device="never", fsync="never")
    interval = open_writer(tmp_path, clock, device="interval", fsync="interval", fsync_seconds=1.0)
    for writer in (always, never, interval):
        writer.write(event(0))
    assert always.durable_position == always.position == (0, len(event(0)) + 1)
    assert never.durable_position == never.position
    assert interval.durable_position == (0, 0)
    assert interval.tick(now=T0 + 0.5) is False
    assert interval.tick(now=T0 + 1.0) is True
    assert interval.durable_position == interval.position

    interval.write(event(1))
    assert interval.durable_position != interval.position
    assert interval.sync() is True
    assert interval.durable_position == interval.position

    # A write that finds the interval passed fsyncs by itself.
    clock.now = T0 + 5
    interval.write(event(2))
    assert interval.durable_position == interval.position


def test_write_rejects_malformed_lines(tmp_path):
    writer = open_writer(tmp_path)
    with pytest.raises(ValueError):
        writer.write(b'{"a":1}\n{"b":2}')
    with pytest.raises(ValueError):
        writer.write(b"")
    with pytest.raises(ValueError):
        writer.write_many([event(0), b"x\ny"])
    writer.close()
    assert list_closed(writer.settings.directory, DEVICE) == []


def test_write_many_uses_one_write(tmp_path, monkeypatch):
    writer = open_writer(tmp_path, rotate_bytes=10**6)
    writer.write(event(-1))  # creates the active file, which takes writes of its own
    calls = []
    real_write = os.write

    def counting_write(fd, data):
        calls.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", counting_write)
    writer.write_many([event(number) for number in range(50)])
    monkeypatch.undo()
    assert len(calls) == 1
    writer.close()
    assert spooled_numbers(writer.settings.directory) == list(range(-1, 50))


def test_partial_write_leaves_whole_lines(tmp_path, monkeypatch):
    writer = open_writer(tmp_path, rotate_bytes=10**6)
    writer.write(event(0))
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 8:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(SpoolFullError) as raised:
        writer.write_many([event(1), event(2)])
    monkeypatch.undo()
    assert "ENOSPC" in str(raised.value)
    assert writer.paused

    writer.write(event(3))
    assert not writer.paused
    writer.close()
    assert spooled_numbers(writer.settings.directory) == [0, 3]


def pause_records(caplog, name):
    return [record for record in caplog.records if getattr(record, "event", None) == name]


def test_spool_cap_pauses_and_resumes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="podspool")
    settings = make_settings(tmp_path, max_bytes=2000, rotate_bytes=500)
    capacity_clock = FakeClock(0.0)
    capacity = SpoolCapacity(settings.directory, settings.max_bytes, rescan_seconds=5.0, clock=capacity_clock)
    writer = open_writer(tmp_path, capacity=capacity, max_bytes=2000, rotate_bytes=500)
    line = event(0, pad=83)  # 100 bytes with its newline
    written = 0
    with pytest.raises(SpoolFullError) as raised:
        while True:
            writer.write(line)
            written += 1
    assert written == 20
    assert "max_bytes is 2000" in str(raised.value)
    for _ in range(5):
        with pytest.raises(SpoolFullError):
            writer.write(line)
    paused = pause_records(caplog, "spool_paused")
    assert len(paused) == 1
    assert paused[0].levelno == logging.WARNING
    assert paused[0].device == DEVICE

    # A shipper removes delivered files, and the next rescan counts the space as free.
    for closed in list_closed(settings.directory, DEVICE)[:2]:
        os.unlink(closed.path)
    with pytest.raises(SpoolFullError):
        writer.write(line)
    capacity_clock.now = 5.0
    writer.write(line)
    resumed = pause_records(caplog, "spool_resumed")
    assert len(resumed) == 1
    assert resumed[0].count == 7


def test_pause_repeats_are_rate_limited(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="podspool")
    clock = FakeClock()
    capacity = SpoolCapacity(str(tmp_path / "spool"), 0)
    writer = open_writer(tmp_path, clock, capacity=capacity)
    for second in range(125):
        clock.now = T0 + second
        with pytest.raises(SpoolFullError):
            writer.write(event(second))
    paused = pause_records(caplog, "spool_paused")
    assert len(paused) == 3
    assert [getattr(record, "count", None) for record in paused] == [None, 60, 60]


def test_capacity_shared_by_devices(tmp_path):
    settings = make_settings(tmp_path)
    capacity = SpoolCapacity(settings.directory, 1000)
    first = open_writer(tmp_path, device="first", capacity=capacity)
    second = open_writer(tmp_path, device="second", capacity=capacity)
    first.write(event(0, pad=600))
    with pytest.raises(SpoolFullError):
        second.write(event(1, pad=600))
    second.write(event(2, pad=100))
    assert capacity.used_bytes() == len(event(0, pad=600)) + len(event(2, pad=100)) + 2


def test_other_tool_reads_each_event_once(tmp_path):
    """Read the spool like an outside tool (glob, json.loads per line) while the writer runs."""
    settings = make_settings(tmp_path, rotate_bytes=4096, fsync="never")
    writer = SpoolWriter(settings, DEVICE)
    writer.open()
    total = 20000
    done = threading.Event()
    seen = []
    read_names = set()

    def write_all():
        for number in range(total):
            writer.write(event(number, pad=number % 50))
        writer.close()
        done.set()

    def read_new_files():
        for path in sorted(glob.glob(os.path.join(settings.directory, DEVICE, "*.ndjson"))):
            if path in read_names:
                continue
            read_names.add(path)
            with open(path, "rb") as handle:
                content = handle.read()
            assert content.endswith(b"\n")
            seen.extend(json.loads(line)["n"] for line in content.splitlines())

    thread = threading.Thread(target=write_all)
    thread.start()
    while not done.is_set():
        read_new_files()
    thread.join()
    read_new_files()
    assert len(read_names) > 10
    assert seen == list(range(total))


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_ignore_umask(tmp_path, umask):
    from podspool.spool import OutputProgress, dead_letter_output

    previous = os.umask(umask)
    try:
        writer = open_writer(tmp_path, compress="gzip")
        writer.write(event(0))
        writer.rotate()
        writer.write(event(1))
        writer.dead_letter_frame("invalid JSON", b"{nope")
        dead_letter_output(writer.settings.directory, DEVICE, "splunk", {"n": 1}, "rejected", {"code": 6})
        progress = OutputProgress(str(tmp_path / "state"), "splunk")
        progress.advance(DEVICE, "000000000000-20250102T103000Z.ndjson.gz", 10)
        writer.close()
    finally:
        os.umask(previous)
    for root in (writer.settings.directory, str(tmp_path / "state")):
        for directory, names, files in os.walk(root):
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o750, directory
            for name in files:
                path = os.path.join(directory, name)
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path
