"""Full and read-only file systems under the spool writer, made with small tmpfs mounts (needs root)."""

import contextlib
import json
import logging
import os
import subprocess

import pytest

from podspool.errors import SpoolFullError
from podspool.settings import SpoolSettings
from podspool.spool import SpoolWriter, list_closed, read_lines

DEVICE = "dev1"


@contextlib.contextmanager
def tmpfs(path, size):
    """Mount a tmpfs of SIZE at PATH for the duration of the block, and always unmount it."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", path], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False, capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", path], check=True, capture_output=True)


def remount(path, mode):
    subprocess.run(["mount", "-o", f"remount,{mode}", path], check=True, capture_output=True)


def make_writer(root, **overrides):
    values = dict(
        directory=root, rotate_bytes=200_000, rotate_seconds=3600.0, fsync="always",
        fsync_seconds=1.0, max_bytes=10**12, compress="none",
    )
    values.update(overrides)
    writer = SpoolWriter(SpoolSettings(**values), DEVICE)
    writer.open()
    return writer


def event(number):
    # Odd, varying sizes make the last write before a full disk land part-way through a page.
    return json.dumps({"n": number, "pad": "x" * (1499 + number % 613)}, separators=(",", ":")).encode()


def all_lines(root):
    """Return the lines of the closed and active files, checking that each file ends with a whole line."""
    directory = os.path.join(root, DEVICE)
    numbers = []
    names = sorted(name for name in os.listdir(directory) if ".ndjson" in name)
    for name in sorted(names, key=lambda name: name.lstrip(".")):
        with open(os.path.join(directory, name), "rb") as handle:
            content = handle.read()
        assert content.endswith(b"\n"), name
        numbers.extend(json.loads(line)["n"] for line in content.splitlines())
    return numbers


@pytest.mark.integration
def test_full_disk_pauses_and_resumes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="podspool")
    with tmpfs(str(tmp_path / "mnt"), "1m") as mount:
        root = os.path.join(mount, "spool")
        writer = make_writer(root)
        number = 0
        with pytest.raises(SpoolFullError) as raised:
            while number < 10_000:
                writer.write(event(number))
                number += 1
        assert "ENOSPC" in str(raised.value)
        assert writer.paused
        for _ in range(3):
            with pytest.raises(SpoolFullError):
                writer.write(event(number))
        assert all_lines(root) == list(range(number))

        # A shipper delivers and removes the closed files, and writing resumes by itself.
        removed = list_closed(root, DEVICE)
        assert len(removed) >= 2
        for closed in removed:
            os.unlink(closed.path)
        writer.write(event(number))
        assert not writer.paused
        writer.close()

        remaining = [json.loads(line)["n"] for closed in list_closed(root, DEVICE) for line, _ in read_lines(closed)]
        assert remaining[-1] == number
        assert remaining == list(range(remaining[0], number + 1))

    events = [record.event for record in caplog.records if getattr(record, "event", None)]
    assert events == ["spool_paused", "spool_resumed"]


@pytest.mark.integration
def test_read_only_disk_pauses_and_resumes(tmp_path):
    with tmpfs(str(tmp_path / "mnt"), "4m") as mount:
        root = os.path.join(mount, "spool")
        writer = make_writer(root)
        for number in range(10):
            writer.write(event(number))
        writer.rotate()  # a file open for writing would make the remount fail as busy

        remount(mount, "ro")
        try:
            with pytest.raises(SpoolFullError) as raised:
                writer.write(event(10))
            assert "EROFS" in str(raised.value)
            with pytest.raises(SpoolFullError):
                writer.dead_letter_frame("invalid JSON", b"{", now=None)
            assert writer.paused
        finally:
            remount(mount, "rw")

        writer.write(event(10))
        assert not writer.paused
        writer.close()
        assert all_lines(root) == list(range(11))
