"""The spool size cap shared by all devices, the mapping of disk errors, and pause logging."""

import errno
import logging
import os
import threading
import time

from podspool.errors import SpoolError, SpoolFullError

log = logging.getLogger(__name__)

# Errors that a full, read-only or failing disk gives. The device pauses and
# tries again later instead of treating them as bugs.
SPOOL_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES, errno.EFBIG})
DEFAULT_RESCAN_SECONDS = 5.0
REPEAT_LOG_SECONDS = 60.0


def spool_error(exc, action, device):
    """Return the SpoolError to raise for the OSError EXC: SpoolFullError for a full or unwritable disk."""
    code_name = errno.errorcode.get(exc.errno, "unknown error")
    text = f"spool {action} failed for device {device}: {exc.strerror or exc} ({code_name})"
    error_class = SpoolFullError if exc.errno in SPOOL_FULL_ERRNOS else SpoolError
    error = error_class(text)
    error.errno = exc.errno
    return error


def disk_usage(root):
    """Return the sum of the sizes of the regular files under ROOT, in bytes."""
    total = 0
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                continue  # removed while we walked
    return total


class SpoolCapacity:
    """The `max_bytes` cap over the whole spool root, shared by every device's writer.

    Writers reserve bytes before each write. The object rescans the disk at
    most every RESCAN_SECONDS and counts reservations in between, so files
    that a shipper or another tool removes count as free after the next
    rescan (or at once when the remover calls `release`). Thread-safe.
    """

    def __init__(self, spool_root, max_bytes, *, rescan_seconds=DEFAULT_RESCAN_SECONDS, clock=time.monotonic):
        self.spool_root = spool_root
        self.max_bytes = max_bytes
        self.rescan_seconds = rescan_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._used = None
        self._scanned_at = None

    def used_bytes(self):
        """Return the bytes in use as of the last rescan plus the reservations since."""
        with self._lock:
            self._rescan_if_due()
            return self._used

    def reserve(self, size):
        """Count SIZE bytes about to be written, or raise SpoolFullError when they would pass the cap."""
        with self._lock:
            self._rescan_if_due()
            if self._used + size > self.max_bytes:
                raise SpoolFullError(
                    f"spool cap reached: {self._used} bytes used under {self.spool_root} and "
                    f"{size} more to write would pass it, "
                    f"max_bytes is {self.max_bytes}; outputs must deliver (or other tools remove) "
                    "closed files before writing resumes"
                )
            self._used += size

    def release(self, size):
        """Count SIZE bytes as freed: a failed write or removed files."""
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used - size)

    def refresh(self):
        """Rescan the disk now."""
        with self._lock:
            self._scanned_at = None
            self._rescan_if_due()

    def _rescan_if_due(self):
        now = self._clock()
        if self._scanned_at is not None and now - self._scanned_at < self.rescan_seconds:
            return
        self._used = disk_usage(self.spool_root)
        self._scanned_at = now


class PauseLog:
    """Log the start of a spool pause once, repeats at most every REPEAT_SECONDS with a count, and the end.

    Records carry `event` spool_paused or spool_resumed and the device name.
    """

    def __init__(self, device, clock, repeat_seconds=REPEAT_LOG_SECONDS):
        self.device = device
        self.repeat_seconds = repeat_seconds
        self._clock = clock
        self.paused_since = None
        self.rejected = 0
        self._unlogged = 0
        self._logged_at = None

    @property
    def paused(self):
        return self.paused_since is not None

    def failed(self, error):
        """Record one rejected write, with the SpoolError that rejected it."""
        now = self._clock()
        self.rejected += 1
        if self.paused_since is None:
            self.paused_since = now
            self._logged_at = now
            log.warning(
                "spool paused for device %s: %s", self.device, error,
                extra={"device": self.device, "event": "spool_paused", "error": str(error)},
            )
            return
        self._unlogged += 1
        if now - self._logged_at >= self.repeat_seconds:
            log.warning(
                "spool still paused for device %s: %d more writes rejected, last error: %s",
                self.device, self._unlogged, error,
                extra={"device": self.device, "event": "spool_paused", "error": str(error), "count": self._unlogged},
            )
            self._logged_at = now
            self._unlogged = 0

    def succeeded(self):
        """Record a successful write, which ends a pause."""
        if self.paused_since is None:
            return
        paused_seconds = max(0.0, self._clock() - self.paused_since)
        log.info(
            "spool resumed for device %s after %.1f s and %d rejected writes",
            self.device, paused_seconds, self.rejected,
            extra={"device": self.device, "event": "spool_resumed", "count": self.rejected},
        )
        self.paused_since = None
        self.rejected = 0
        self._unlogged = 0
