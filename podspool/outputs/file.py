"""The `file` output: appends delivered events to NDJSON files, an archive and the demo's sink.

`path` may hold `{device}`, `{type}` and `{date}` (the UTC date of delivery,
YYYY-MM-DD). A batch counts as delivered only after fsync. A crash before
that point makes the shipper send the batch again, after the partial line it
left is truncated.
"""

import logging
import os
import time
from datetime import datetime, timezone

from podspool.fsutil import ensure_dir, fsync_dir, open_fd
from podspool.outputs.base import Destination, SendResult, TransientError
from podspool.spool_recovery import whole_lines_size

log = logging.getLogger(__name__)

PLACEHOLDERS = ("device", "type", "date")


def safe_component(value):
    """Return VALUE with path separators replaced, so a name cannot leave the output directory."""
    return str(value).replace(os.sep, "_").replace("\0", "_") or "_"


class FileDestination(Destination):
    """Append each batch to the files its `path` template selects, then fsync them."""

    def __init__(self, settings, clock=time.time):
        super().__init__(settings)
        self.path_template = settings.options["path"]
        self.clock = clock
        self._checked = set()

    def path_for(self, record, date):
        """Return the file that RECORD goes to on DATE."""
        values = {
            "device": safe_component(record.device),
            "type": safe_component(record.log_type),
            "date": date,
        }
        return self.path_template.format_map(values)

    def send(self, records):
        date = datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y-%m-%d")
        groups = {}
        for record in records:
            groups.setdefault(self.path_for(record, date), []).append(record.line + b"\n")
        try:
            for path, lines in groups.items():
                self._append(path, b"".join(lines))
        except OSError as exc:
            # A full or read-only disk is fixed by an operator; the events wait in the spool.
            raise TransientError(f"appending to {exc.filename or 'the output file'} failed: "
                                 f"{type(exc).__name__} ({exc.strerror})") from exc
        return SendResult()

    def _append(self, path, data):
        directory = os.path.dirname(path) or "."
        ensure_dir(directory)
        created = not os.path.exists(path)
        # Read access is for the torn-line check; O_APPEND makes every write land at the end.
        fd = open_fd(path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
        try:
            if path not in self._checked:
                self._drop_torn_line(fd, path)
                self._checked.add(path)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(directory)

    def _drop_torn_line(self, fd, path):
        """Truncate a partial last line that a crash left; its batch was never confirmed and is re-sent."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        keep = whole_lines_size(fd, size)
        os.ftruncate(fd, keep)
        log.warning("output=%s truncated a partial last line of %s (%d bytes)",
                    self.settings.name, path, size - keep, extra={"output": self.settings.name})
