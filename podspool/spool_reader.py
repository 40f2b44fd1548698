"""The reading side of the spool: closed files, per-output progress, and removal of delivered files."""

import logging
import os
import threading

from podspool import fsutil
from podspool.deadletter import check_output_name
from podspool.errors import SpoolError
from podspool.spool_files import ClosedFile, list_closed, read_lines

__all__ = ["ClosedFile", "OutputProgress", "list_closed", "read_lines", "remove_delivered"]

log = logging.getLogger(__name__)

PROGRESS_VERSION = 1


class OutputProgress:
    """The durable progress of one output through the closed files of every device it ships.

    Stored in `<state>/outputs/<output>.json` as
    `{"version": 1, "devices": {device: {file name: {"offset": n, "done": bool}}}}`,
    where the offset counts uncompressed bytes. Every change is written
    atomically and fsynced before the method returns. Thread-safe, so that
    `remove_delivered` may read the progress of other outputs.
    """

    def __init__(self, state_directory, output_name):
        check_output_name(output_name)
        self.output_name = output_name
        self.path = os.path.join(state_directory, "outputs", f"{output_name}.json")
        self._lock = threading.Lock()
        self._devices = None

    def _files(self, device):
        if self._devices is None:
            try:
                stored = fsutil.read_json(self.path, {})
            except ValueError as exc:
                raise SpoolError(f"output progress file {self.path} is not valid JSON: {exc}; remove it to ship every file again") from exc
            self._devices = stored.get("devices", {})
        return self._devices.setdefault(device, {})

    def _save(self):
        fsutil.ensure_dir(os.path.dirname(self.path))
        devices = {device: files for device, files in self._devices.items() if files}
        fsutil.write_json_atomic(self.path, {"version": PROGRESS_VERSION, "devices": devices})

    def offset(self, device, file_name):
        """Return the uncompressed offset up to which FILE_NAME of DEVICE is delivered; 0 when unknown."""
        with self._lock:
            return self._files(device).get(file_name, {}).get("offset", 0)

    def advance(self, device, file_name, offset):
        """Record that FILE_NAME of DEVICE is delivered up to OFFSET, durably."""
        with self._lock:
            entry = self._files(device).setdefault(file_name, {"offset": 0, "done": False})
            entry["offset"] = offset
            self._save()

    def mark_done(self, device, file_name):
        """Record that FILE_NAME of DEVICE is delivered whole, durably."""
        with self._lock:
            entry = self._files(device).setdefault(file_name, {"offset": 0, "done": False})
            entry["done"] = True
            self._save()

    def is_done(self, device, file_name):
        """Return True when FILE_NAME of DEVICE is delivered whole."""
        with self._lock:
            return self._files(device).get(file_name, {}).get("done", False)

    def forget(self, device, file_name):
        """Drop the entry of a file that no longer exists."""
        self.forget_many(device, [file_name])

    def forget_many(self, device, file_names):
        """Drop the entries of several removed files with one write."""
        with self._lock:
            files = self._files(device)
            dropped = [files.pop(name) for name in file_names if name in files]
            if dropped:
                self._save()


def holds_lines_after(closed, position):
    """Tell whether CLOSED may hold lines written after POSITION (sequence, offset)."""
    sequence, offset = position
    if closed.sequence != sequence:
        return closed.sequence > sequence
    # A compressed file's size is not its uncompressed length, so it counts as holding more.
    compressed = closed.name.endswith((".gz", ".zst"))
    return compressed or closed.size > offset


def remove_delivered(spool_root, device, progresses, *, capacity=None, keep_after=None):
    """Remove the closed files of DEVICE that every progress in PROGRESSES marks done; return their paths.

    With no progresses (no output routes the device) nothing is removed: the
    files stay for other tools, which remove them when done. CAPACITY, when
    given, counts the freed bytes at once. KEEP_AFTER, a spool position
    (sequence, offset), keeps the files that contain lines after it even when
    they are delivered. The device has saved the dedup keys of its events only
    up to that position, and after a crash it rebuilds the other keys from
    these files.
    """
    if not progresses:
        return []
    removed = []
    freed = 0
    for closed in list_closed(spool_root, device):
        if keep_after is not None and holds_lines_after(closed, keep_after):
            continue
        if not all(progress.is_done(device, closed.name) for progress in progresses):
            continue
        try:
            os.unlink(closed.path)
        except FileNotFoundError:
            pass  # another tool removed it first
        else:
            freed += closed.size
        removed.append(closed)
    if not removed:
        return []

    # The removal is made durable before the progress entries go, so a power
    # failure cannot bring back a file that no progress still marks done.
    fsutil.fsync_dir(os.path.join(spool_root, device))
    names = [closed.name for closed in removed]
    for progress in progresses:
        progress.forget_many(device, names)
    if capacity is not None:
        capacity.release(freed)
    log.info("removed %d delivered spool files of device %s", len(removed), device, extra={"device": device})
    return [closed.path for closed in removed]
