"""The spool writer: one per device, appending whole NDJSON lines to rotated files.

The writer appends to a hidden active file with os.write on an O_APPEND
descriptor, so every line whose write returned is in the kernel and survives
a crash of the process under any fsync policy. A failed write is truncated
back to the last whole line. Rotation closes the active file under its final
name, which readers and other tools may then consume.

Durability policies: `always` fsyncs after every write call, `interval` at most
every `fsync_seconds` (in `write` or `tick`), and `never` leaves flushing to
the kernel. `durable_position` is the position the policy has made durable;
the device moves its checkpoint only up to there.
"""

import contextlib
import logging
import os
import threading
import time

from podspool import deadletter, fsutil
from podspool.errors import SpoolError
from podspool.spool_capacity import REPEAT_LOG_SECONDS, PauseLog, SpoolCapacity, spool_error
from podspool.spool_files import (
    ClosedFile,
    close_into_place,
    closed_lines_after,
    iter_lines,
    list_closed,
    read_lines,
    spool_file_name,
)
from podspool.spool_reader import OutputProgress, remove_delivered
from podspool.spool_recovery import recover_directory

__all__ = [
    "ClosedFile", "OutputProgress", "SpoolCapacity", "SpoolWriter", "dead_letter_output",
    "list_closed", "read_lines", "remove_delivered", "rotation_due",
]

log = logging.getLogger(__name__)

dead_letter_output = deadletter.dead_letter_output
SEQUENCE_FILE = ".sequence"  # hidden, so readers skip it; keeps numbering when every file was removed


def rotation_due(size, opened_at, now, rotate_bytes, rotate_seconds):
    """Return True when a file of SIZE bytes opened at OPENED_AT must be closed at NOW.

    A clock that moved back past OPENED_AT also closes the file, so that an
    NTP step cannot keep a file open for hours. Names still sort by sequence.
    """
    if size <= 0:
        return False
    age = now - opened_at
    return size >= rotate_bytes or age >= rotate_seconds or age < 0


class SpoolWriter:
    """Append one device's events to its spool directory; safe to share between threads."""

    def __init__(self, settings, device, *, capacity=None, clock=time.time):
        if not device or os.sep in device or device.startswith(".") or device == deadletter.DEAD_LETTER_DIRECTORY:
            raise ValueError(f"device name cannot be a spool directory name: {device!r}")
        self.settings = settings
        self.device = device
        self.directory = os.path.join(settings.directory, device)
        self._capacity = capacity
        self._clock = clock
        self._sync_policy = settings.fsync != "never"
        self._lock = threading.RLock()
        self._pause = PauseLog(device, clock)
        self._extra = {"device": device}
        self._fd = None
        self._sequence = None  # of the active file
        self._opened_at = None
        self._offset = 0
        self._synced_at = 0.0
        self._needs_truncate = False
        self._rotate_warned_at = None
        self._next_sequence = None
        self._is_open = False
        self.position = (0, 0)
        self.durable_position = (0, 0)

    @property
    def paused(self):
        """True while writes are refused (the cap or a disk error), until one succeeds."""
        return self._pause.paused

    def should_rotate(self, size, opened_at, now):
        """Return True when the active file of SIZE bytes opened at OPENED_AT must be closed at NOW."""
        return rotation_due(size, opened_at, now, self.settings.rotate_bytes, self.settings.rotate_seconds)

    def open(self):
        """Recover the directory after a crash, create missing directories and find the next sequence."""
        with self._lock:
            if self._is_open:
                return
            try:
                fsutil.ensure_dir(self.settings.directory)
                fsutil.ensure_dir(self.directory)
                highest = recover_directory(self.directory, self.device, compress=self.settings.compress)
                stored = fsutil.read_json(os.path.join(self.directory, SEQUENCE_FILE), {}).get("last_sequence", -1)
            except OSError as exc:
                raise spool_error(exc, "open", self.device) from exc
            if self._capacity is None:
                self._capacity = SpoolCapacity(self.settings.directory, self.settings.max_bytes)
            self._next_sequence = max(highest, stored) + 1
            self.position = self.durable_position = (self._next_sequence, 0)
            self._is_open = True
            log.info(
                "spool of device %s opened in %s, next file sequence %d",
                self.device, self.directory, self._next_sequence, extra=self._extra,
            )

    def write(self, line):
        """Append one event line (bytes, no newline); raise SpoolFullError having written nothing."""
        self._check_line(line)
        self._append(bytes(line) + b"\n")

    def write_many(self, lines):
        """Append several event lines with one os.write; all of them are written, or none."""
        lines = list(lines)
        if not lines:
            return
        data = b"\n".join([*lines, b""])
        # One newline per line and no empty line: checked in C over the joined data.
        if data.count(b"\n") != len(lines) or not all(lines):
            for line in lines:
                self._check_line(bytes(line))
        self._append(data)

    @staticmethod
    def _check_line(line):
        if not line:
            raise ValueError("an event line cannot be empty")
        if b"\n" in line:
            raise ValueError("an event line cannot contain a newline; serialise the event compactly")

    def _append(self, data):
        with self._lock:
            self._require_open()
            now = self._clock()
            with self._guard(len(data), "write"):
                self._prepare(now)
                self._write_all(data)
            self._after_write(now)

    def _require_open(self):
        if not self._is_open:
            raise SpoolError(f"spool writer of device {self.device} is not open")

    @contextlib.contextmanager
    def _guard(self, size, action):
        """Reserve SIZE bytes of the cap for the block, turn disk errors into SpoolError, and log pauses."""
        try:
            self._capacity.reserve(size)
            try:
                yield
            except OSError:
                self._capacity.release(size)
                raise
        except OSError as exc:
            error = spool_error(exc, action, self.device)
            self._pause.failed(error)
            raise error from exc
        except SpoolError as exc:
            self._pause.failed(exc)
            raise
        self._pause.succeeded()

    def _prepare(self, now):
        """Clean up after an earlier failed write, close an overdue file, and open the active file."""
        if self._needs_truncate:
            os.ftruncate(self._fd, self._offset)
            self._needs_truncate = False
        if self._fd is not None and self.should_rotate(self._offset, self._opened_at, now):
            self._try_rotate(now)
        if self._fd is None:
            self._create_active(now)

    def _write_all(self, data):
        start = self._offset
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            if self.settings.fsync == "always":
                os.fsync(self._fd)
        except OSError:
            self._truncate_to(start)
            raise
        self._offset = start + len(data)

    def _truncate_to(self, offset):
        """Remove the part of a failed write, so the file ends with a whole line."""
        try:
            size = os.fstat(self._fd).st_size
            if size != offset:
                os.ftruncate(self._fd, offset)
                log.debug("removed %d bytes of a failed write to the spool of device %s", size - offset, self.device, extra=self._extra)
        except OSError as exc:
            self._needs_truncate = True
            log.warning("cannot remove a partial line from the spool of device %s yet: %s", self.device, exc, extra=self._extra)

    def _after_write(self, now):
        self.position = (self._sequence, self._offset)
        if self.settings.fsync != "interval":
            self.durable_position = self.position
        elif now - self._synced_at >= self.settings.fsync_seconds:
            self._fsync(now)
        if self._offset >= self.settings.rotate_bytes:
            self._try_rotate(now)

    def _create_active(self, now):
        sequence = self._next_sequence
        fsutil.write_json_atomic(os.path.join(self.directory, SEQUENCE_FILE), {"last_sequence": sequence}, fsync=self._sync_policy)
        path = os.path.join(self.directory, spool_file_name(sequence, now, kind="active"))
        fd = fsutil.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            if self._sync_policy:
                fsutil.fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        self._fd, self._sequence, self._opened_at = fd, sequence, now
        self._offset = 0
        self._synced_at = now
        self._next_sequence = sequence + 1

    def _fsync(self, now):
        """Fsync the active file. On failure, log it and leave durable_position where it was."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # NOTE: Linux may drop the unwritten pages after a failed fsync, so a later
            # fsync that succeeds can report lines durable that never reached the disk.
            log.error("fsync of the spool of device %s failed: %s", self.device, exc, extra=self._extra)
            return False
        self._synced_at = now
        self.durable_position = self.position
        return True

    def _try_rotate(self, now):
        """Rotate, or log the failure (at most once a minute) and keep writing to the active file."""
        try:
            self._rotate(now, sync=self._sync_policy)
        except OSError as exc:
            if self._rotate_warned_at is None or abs(now - self._rotate_warned_at) >= REPEAT_LOG_SECONDS:
                log.warning("closing the spool file of device %s failed, will try again: %s", self.device, exc, extra=self._extra)
                self._rotate_warned_at = now
        else:
            self._rotate_warned_at = None

    def _rotate(self, now, *, sync):
        """Fsync when SYNC, then close the active file under its final name; raises OSError, keeping it open."""
        if self._needs_truncate:
            os.ftruncate(self._fd, self._offset)
            self._needs_truncate = False
        if self._offset == 0:
            self._discard_empty()
            return
        if sync:
            os.fsync(self._fd)
        final = close_into_place(
            self.directory, self._sequence, self._opened_at,
            compress=self.settings.compress, sync=sync, device=self.device,
        )
        os.close(self._fd)
        self._fd = None
        self.durable_position = self.position
        log.debug("closed spool file %s of device %s", final, self.device, extra=self._extra)

    def _discard_empty(self):
        """Remove an active file that no line reached, so no empty closed file appears."""
        os.close(self._fd)
        self._fd = None
        try:
            os.unlink(os.path.join(self.directory, spool_file_name(self._sequence, self._opened_at, kind="active")))
        except OSError as exc:
            log.warning("removing an empty active file of device %s failed; the next start removes it: %s", self.device, exc, extra=self._extra)

    def rotate(self, now=None):
        """Close the active file under its final name now, if there is one."""
        with self._lock:
            if self._fd is not None:
                self._rotate(self._clock() if now is None else now, sync=self._sync_policy)

    def tick(self, now=None):
        """Close the active file when due and fsync when due; return True when all written is durable."""
        with self._lock:
            if self._fd is not None:
                now = self._clock() if now is None else now
                if self.should_rotate(self._offset, self._opened_at, now):
                    self._try_rotate(now)
                elif self.settings.fsync == "interval" and now - self._synced_at >= self.settings.fsync_seconds:
                    self._sync_if_behind(now)
            return self.durable_position == self.position

    def sync(self):
        """Make everything written durable now (unless the policy is never); return True when it is."""
        with self._lock:
            if self._fd is not None and self._sync_policy:
                self._sync_if_behind(self._clock())
            return self.durable_position == self.position

    def _sync_if_behind(self, now):
        if self.durable_position != self.position:
            self._fsync(now)

    def dead_letter_frame(self, reason, raw, now=None):
        """Append the record of a frame that could not be stored as an event; return the file path."""
        with self._lock:
            self._require_open()
            now = self._clock() if now is None else now
            line = deadletter.encode_record(deadletter.frame_record(self.device, reason, raw, now))
            directory = os.path.join(self.directory, deadletter.DEAD_LETTER_DIRECTORY)
            with self._guard(len(line), "dead-letter write"):
                return deadletter.append_line(directory, deadletter.frames_file_name(now), line, sync=self._sync_policy)

    def lines_after(self, position):
        """Yield every line (bytes, no newline) written after POSITION, a (sequence, offset) pair.

        Covers the closed files that still exist, compressed or not, and the
        active file up to the last whole line written.
        """
        yield from closed_lines_after(self.settings.directory, self.device, position)
        sequence, offset = position
        with self._lock:
            if self._fd is None or self._sequence < sequence:
                return
            active = os.path.join(self.directory, spool_file_name(self._sequence, self._opened_at, kind="active"))
            start = offset if self._sequence == sequence else 0
            lines = [line for line, _ in iter_lines(active, start, end=self._offset)]
        yield from lines

    def close(self):
        """Fsync and close the active file under its final name; safe to call twice."""
        with self._lock:
            if not self._is_open:
                return
            self._is_open = False
            try:
                if self._fd is not None:
                    self._rotate(self._clock(), sync=True)
            except OSError as exc:
                log.error(
                    "closing the spool file of device %s failed; the next start closes it: %s",
                    self.device, exc, extra=self._extra,
                )
                os.close(self._fd)
                self._fd = None
        log.info("spool of device %s closed", self.device, extra=self._extra)
