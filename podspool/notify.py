"""The systemd notify protocol: one datagram per message to $NOTIFY_SOCKET.

A few lines of socket code, so the service needs no extra dependency. Outside
systemd (no NOTIFY_SOCKET) every call does nothing.
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Send READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 to systemd."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        self.address = environ.get("NOTIFY_SOCKET") or None
        if self.address and self.address.startswith("@"):
            # A leading @ names an abstract socket, written with a NUL byte.
            self.address = "\0" + self.address[1:]
        watchdog_usec = environ.get("WATCHDOG_USEC")
        watchdog_pid = environ.get("WATCHDOG_PID")
        self.watchdog_seconds = None
        if watchdog_usec and watchdog_usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_seconds = int(watchdog_usec) / 1e6
        self._failed = False

    @property
    def enabled(self):
        return self.address is not None

    def send(self, *lines):
        """Send LINES as one datagram; a failure is logged once and never raised."""
        if not self.address:
            return False
        message = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc.strerror or exc)
                self._failed = True
            return False

    def ready(self, status):
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status):
        return self.send(f"STATUS={status}")

    def watchdog(self):
        return self.send("WATCHDOG=1")

    def stopping(self):
        return self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self):
        return self.send("RELOADING=1")
