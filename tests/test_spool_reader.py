"""Tests of reading closed spool files, compression, dead-letter records, output progress and removal."""

import base64
import json
import os
import subprocess

import pytest

from podspool import spool_files
from podspool.settings import SpoolSettings
from podspool.spool import (
    OutputProgress,
    SpoolCapacity,
    SpoolWriter,
    dead_letter_output,
    list_closed,
    read_lines,
    remove_delivered,
)

DEVICE = "dev1"
T0 = 1735813800.0  # 2025-01-02T10:30:00Z


def open_writer(tmp_path, **overrides):
    values = dict(
        directory=str(tmp_path / "spool"), rotate_bytes=10**6, rotate_seconds=60.0, fsync="interval",
        fsync_seconds=1.0, max_bytes=10**9, compress="none",
    )
    values.update(overrides)
    writer = SpoolWriter(SpoolSettings(**values), DEVICE, clock=lambda: T0)
    writer.open()
    return writer


def event(number):
    return json.dumps({"n": number, "text": "é" * (number % 7)}, ensure_ascii=False, separators=(",", ":")).encode()


def write_file(tmp_path, numbers, **overrides):
    writer = open_writer(tmp_path, **overrides)
    for number in numbers:
        writer.write(event(number))
    writer.close()
    return writer


def read_dead_letters(path):
    with open(path, "rb") as handle:
        return [json.loads(line) for line in handle.read().splitlines()]


@pytest.mark.parametrize("compress, suffix", [("gzip", ".gz"), ("zstd", ".zst")])
def test_compressed_file_reads_with_offsets(tmp_path, compress, suffix):
    write_file(tmp_path, range(100), compress=compress)
    (closed,) = list_closed(str(tmp_path / "spool"), DEVICE)
    assert closed.name == "000000000000-20250102T103000Z.ndjson" + suffix
    lines = read_lines(closed)
    assert [json.loads(line)["n"] for line, _ in lines] == list(range(100))

    # Offsets count uncompressed bytes, so a reader resumes in the middle.
    middle = lines[39][1]
    rest = read_lines(closed, offset=middle, max_lines=5)
    assert [json.loads(line)["n"] for line, _ in rest] == [40, 41, 42, 43, 44]
    assert rest[-1][1] == lines[44][1]


@pytest.mark.integration
@pytest.mark.parametrize("compress, tool", [("gzip", "gzip"), ("zstd", "zstd")])
def test_compressed_file_reads_with_tools(tmp_path, compress, tool):
    write_file(tmp_path, range(100), compress=compress)
    (closed,) = list_closed(str(tmp_path / "spool"), DEVICE)
    output = subprocess.run([tool, "-dc", closed.path], check=True, capture_output=True).stdout
    assert output == b"".join(event(number) + b"\n" for number in range(100))


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compression_hidden_until_complete(tmp_path, compress, monkeypatch):
    seen_during = []
    real_compress = spool_files.compress_file

    def observing_compress(source, target, kind, *, sync):
        real_compress(source, target, kind, sync=sync)
        seen_during.append([closed.name for closed in list_closed(str(tmp_path / "spool"), DEVICE)])
        assert os.path.basename(target).startswith(".")

    monkeypatch.setattr(spool_files, "compress_file", observing_compress)
    write_file(tmp_path, range(10), compress=compress)
    assert seen_during == [[]]
    assert len(list_closed(str(tmp_path / "spool"), DEVICE)) == 1


def test_failed_compression_closes_plain(tmp_path, monkeypatch):
    def failing_compress(source, target, kind, *, sync):
        with open(target, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool_files, "compress_file", failing_compress)
    write_file(tmp_path, range(3), compress="gzip")
    directory = tmp_path / "spool" / DEVICE
    assert sorted(os.listdir(directory)) == [".sequence", "000000000000-20250102T103000Z.ndjson"]


def test_read_lines_limits(tmp_path):
    write_file(tmp_path, range(10))
    (closed,) = list_closed(str(tmp_path / "spool"), DEVICE)
    assert len(read_lines(closed, max_lines=3)) == 3
    sizes = [len(event(number)) for number in range(10)]
    assert len(read_lines(closed, max_bytes=sizes[0] + sizes[1])) == 2
    assert len(read_lines(closed, max_bytes=1)) == 1  # a reader always gets past one long line
    assert read_lines(closed, offset=closed.size) == []


def test_list_closed_skips_hidden_files(tmp_path):
    writer = open_writer(tmp_path)
    writer.write(event(0))
    writer.rotate()
    writer.write(event(1))  # the active file
    directory = tmp_path / "spool" / DEVICE
    (directory / ".000000000009-20250102T103000Z.ndjson.zst.tmp").write_bytes(b"half")
    (directory / "notes.txt").write_bytes(b"")
    assert [closed.name for closed in list_closed(str(tmp_path / "spool"), DEVICE)] == ["000000000000-20250102T103000Z.ndjson"]
    assert list_closed(str(tmp_path / "spool"), "missing") == []


def test_lines_after_covers_every_kind(tmp_path):
    writer = write_file(tmp_path, range(0, 3), compress="gzip")
    position = (0, len(event(0)) + 1)
    write_file(tmp_path, range(3, 5), compress="zstd")
    write_file(tmp_path, range(5, 7))
    writer = open_writer(tmp_path)
    writer.write(event(7))
    after = [json.loads(line)["n"] for line in writer.lines_after(position)]
    assert after == [1, 2, 3, 4, 5, 6, 7]
    assert list(writer.lines_after(writer.position)) == []


BAD_FRAMES = [
    ("invalid UTF-8", b'{"a":"\xff\xfe"}', "raw_base64"),
    ("invalid JSON: Expecting value at line 1 column 1", b"not json", "raw"),
    ("not a JSON object: array", b'[{"guid":"x"}]', "raw"),
    ("empty frame", b"", "raw"),
    ("frame of 70 bytes exceeds max_event_bytes 64", b'{"x":"' + b"y" * 62 + b'"}', "raw"),
]


@pytest.mark.parametrize("reason, raw, field", BAD_FRAMES, ids=[frame[0].split(":")[0] for frame in BAD_FRAMES])
def test_dead_letter_frame_record(tmp_path, reason, raw, field):
    writer = open_writer(tmp_path)
    path = writer.dead_letter_frame(reason, raw, now=T0 + 0.25)
    assert path == str(tmp_path / "spool" / DEVICE / "dead-letter" / "frames-20250102.ndjson")
    (record,) = read_dead_letters(path)
    assert set(record) == {"time", "device", "reason", field}
    assert record["time"] == "2025-01-02T10:30:00.250000Z"
    assert record["device"] == DEVICE
    assert record["reason"] == reason
    decoded = base64.b64decode(record[field]) if field == "raw_base64" else record[field].encode()
    assert decoded == raw


def test_dead_letter_frames_append_lines(tmp_path):
    writer = open_writer(tmp_path)
    for number in range(3):
        writer.dead_letter_frame("invalid JSON", b"line\nbreak %d" % number, now=T0)
    records = read_dead_letters(writer.dead_letter_frame("empty frame", b"", now=T0))
    assert [record["raw"] for record in records] == ["line\nbreak 0", "line\nbreak 1", "line\nbreak 2", ""]
    assert list_closed(str(tmp_path / "spool"), DEVICE) == []


def test_dead_letter_output_record(tmp_path):
    root = str(tmp_path / "spool")
    response = {"status": 400, "text": "invalid field"}
    path = dead_letter_output(root, DEVICE, "elastic", {"guid": "g1", "ts": "x"}, "mapper_parsing_exception", response, now=T0)
    assert path.endswith(os.path.join(DEVICE, "dead-letter", "output-elastic-20250102.ndjson"))
    (record,) = read_dead_letters(path)
    assert record == {
        "time": "2025-01-02T10:30:00.000000Z", "device": DEVICE, "output": "elastic",
        "reason": "mapper_parsing_exception", "event": {"guid": "g1", "ts": "x"}, "response": response,
    }
    with pytest.raises(ValueError):
        dead_letter_output(root, DEVICE, "../escape", {}, "x", None, now=T0)


def test_output_progress_survives_reload(tmp_path):
    state = str(tmp_path / "state")
    progress = OutputProgress(state, "splunk")
    assert progress.offset(DEVICE, "a.ndjson") == 0
    progress.advance(DEVICE, "a.ndjson", 120)
    progress.advance(DEVICE, "b.ndjson", 40)
    progress.mark_done(DEVICE, "b.ndjson")
    progress.forget(DEVICE, "missing.ndjson")

    reloaded = OutputProgress(state, "splunk")
    assert reloaded.offset(DEVICE, "a.ndjson") == 120
    assert not reloaded.is_done(DEVICE, "a.ndjson")
    assert reloaded.is_done(DEVICE, "b.ndjson")
    reloaded.forget(DEVICE, "b.ndjson")
    assert not OutputProgress(state, "splunk").is_done(DEVICE, "b.ndjson")
    assert os.listdir(os.path.join(state, "outputs")) == ["splunk.json"]


def test_remove_delivered_needs_every_output(tmp_path):
    root = str(tmp_path / "spool")
    for numbers in (range(0, 2), range(2, 4), range(4, 6)):
        write_file(tmp_path, numbers)
    names = [closed.name for closed in list_closed(root, DEVICE)]
    first = OutputProgress(str(tmp_path / "state"), "first")
    second = OutputProgress(str(tmp_path / "state"), "second")
    for name in names:
        first.mark_done(DEVICE, name)
    second.mark_done(DEVICE, names[1])

    capacity = SpoolCapacity(root, 10**6)
    used = capacity.used_bytes()
    removed = remove_delivered(root, DEVICE, [first, second], capacity=capacity)
    assert removed == [os.path.join(root, DEVICE, names[1])]
    assert [closed.name for closed in list_closed(root, DEVICE)] == [names[0], names[2]]
    assert not first.is_done(DEVICE, names[1])
    assert first.is_done(DEVICE, names[0])
    assert capacity.used_bytes() == used - (len(event(2)) + len(event(3)) + 2)


def test_remove_delivered_without_outputs(tmp_path):
    root = str(tmp_path / "spool")
    write_file(tmp_path, range(3))
    assert remove_delivered(root, DEVICE, []) == []
    assert len(list_closed(root, DEVICE)) == 1


def test_remove_delivered_keeps_files_after_saved_position(tmp_path):
    from podspool.spool_reader import OutputProgress, remove_delivered
    from podspool.spool_files import list_closed
    root = tmp_path / "spool"
    device_dir = root / "dev"
    device_dir.mkdir(parents=True)
    names = ["000000000001-20250102T103000Z.ndjson", "000000000002-20250102T103100Z.ndjson",
             "000000000003-20250102T103200Z.ndjson"]
    for name in names:
        (device_dir / name).write_bytes(b'{"a":1}\n{"a":2}\n')
    progress = OutputProgress(str(tmp_path / "state"), "out")
    for name in names:
        progress.mark_done("dev", name)

    removed = remove_delivered(str(root), "dev", [progress], keep_after=(2, 8))
    left = [closed.name for closed in list_closed(str(root), "dev")]
    assert [os.path.basename(path) for path in removed] == names[:1]
    assert left == names[1:]

    removed = remove_delivered(str(root), "dev", [progress], keep_after=(2, 16))
    assert [os.path.basename(path) for path in removed] == names[1:2]
    assert [closed.name for closed in list_closed(str(root), "dev")] == names[2:]
