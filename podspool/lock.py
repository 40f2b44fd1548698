"""An exclusive lock on a directory, so two podspool processes never share a spool or state.

A second process on the same directories would run start-up recovery on the
first one's active files and rename them away while it writes to them, which
loses events. The lock is an flock on a hidden file in the directory; the
kernel drops it when the process exits, even on SIGKILL.
"""

import fcntl
import os

from podspool.errors import PodspoolError
from podspool.fsutil import ensure_dir, open_fd

LOCK_FILE = ".podspool.lock"


class DirectoryLock:
    """Hold an exclusive flock on DIRECTORY/.podspool.lock until `release()`."""

    def __init__(self, directory, key):
        self.directory = directory
        self.key = key
        self.fd = None

    def acquire(self):
        ensure_dir(self.directory)
        path = os.path.join(self.directory, LOCK_FILE)
        fd = open_fd(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise PodspoolError(
                f"{self.key} {self.directory} is in use by another podspool process (pid {holder}); "
                "stop that process, or give this configuration its own directories"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
