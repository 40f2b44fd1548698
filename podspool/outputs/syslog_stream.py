"""The TCP and TLS connection of the `syslog` output, and how it confirms delivery.

Syslog has no application-level acknowledgement, so a batch counts as
delivered once the receiver's TCP stack has acknowledged every byte (the
Linux TIOCOUTQ ioctl reports the bytes still unacknowledged). The connection
is checked before and after each write, and a batch written into a closed
connection is sent again: duplicates are possible, loss is not.
"""

import fcntl
import logging
import select
import socket
import ssl
import struct
import termios
import time

from podspool.outputs.base import TransientError

log = logging.getLogger(__name__)

ACK_POLL_SECONDS = 0.005  # period of the socket checks while waiting for the TCP acknowledgement
CLOSE_NOTIFY_TIMEOUT_SECONDS = 1.0  # max wait for the receiver's reply to a TLS close_notify
OPEN, CLOSED, RESET = "open", "closed", "reset"  # connection states seen before and after a write


class StreamConnection:
    """One TCP or TLS connection to a receiver, opened on first use and again after a failure."""

    def __init__(self, options, settings, name):
        self.options = options
        self.settings = settings
        self.name = name
        self.sock = None
        self.unconfirmed = b""  # the last acknowledged batch, written again after an unclean disconnect

    @property
    def address(self):
        return f"{self.options.host}:{self.options.port}"

    def send_acknowledged(self, payload):
        """Write PAYLOAD and wait until the receiver's TCP stack has acknowledged all of it.

        A receiver that closes with bytes still unread resets the connection
        instead of closing it cleanly, and the last acknowledged batch may be
        among those bytes. So on every new connection, unless the old one
        ended with a clean close, that batch is written again ahead of PAYLOAD.

        Raises TransientError when the connection cannot be opened, the write
        fails, the receiver closes the connection, or the acknowledgement does
        not come within timeout_seconds.
        """
        if self.sock is not None:
            self._check_before_writing()
        data = payload
        if self.sock is None:
            self.sock = self._connect()
            data = self.unconfirmed + payload
        deadline = time.monotonic() + self.settings.timeout_seconds
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as exc:
            raise TransientError(f"writing to syslog receiver {self.address} failed: {exc}") from exc
        self._wait_acknowledged(len(data), deadline)
        # NOTE: only the last batch is kept for a resend. A receiver that falls
        # more than one batch behind and then dies loses the older bytes.
        self.unconfirmed = payload

    def _check_before_writing(self):
        state = _peer_state(self.sock)
        if state == OPEN:
            return
        if state == CLOSED:
            # A clean close means the receiver read everything before closing.
            self.unconfirmed = b""
        log.warning("syslog receiver %s %s the connection; reconnecting, %d bytes to send again",
                    self.address, "reset" if state == RESET else "closed", len(self.unconfirmed),
                    extra={"output": self.name, "event": "disconnected", "reason": f"{state} by receiver"})
        self.close()

    def _wait_acknowledged(self, size, deadline):
        while True:
            if _peer_state(self.sock) != OPEN:
                raise TransientError(
                    f"syslog receiver {self.address} closed the connection during a batch of {size} bytes"
                )
            unacknowledged = _unacknowledged_bytes(self.sock)
            if unacknowledged == 0:
                return
            if time.monotonic() > deadline:
                raise TransientError(
                    f"syslog receiver {self.address} did not acknowledge {unacknowledged} of {size} bytes "
                    f"within {self.settings.timeout_seconds} seconds"
                )
            select.select([self.sock], [], [], ACK_POLL_SECONDS)

    def _connect(self):
        timeout = self.settings.timeout_seconds
        try:
            sock = socket.create_connection((self.options.host, self.options.port), timeout=timeout)
        except OSError as exc:
            raise TransientError(f"connecting to syslog receiver {self.address} failed: {exc}") from exc
        if self.options.protocol == "tls":
            sock = self._start_tls(sock)
        log.info("connected to syslog receiver %s over %s", self.address, self.options.protocol,
                 extra={"output": self.name, "event": "connected"})
        return sock

    def _start_tls(self, sock):
        try:
            context = build_tls_context(self.settings)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise TransientError(
                f"loading the TLS files of output {self.name} failed: {exc}; "
                "check ca_file, client_cert and client_key"
            ) from exc
        try:
            return context.wrap_socket(sock, server_hostname=self.options.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise TransientError(
                f"TLS certificate verification of syslog receiver {self.address} failed: "
                f"{exc.verify_message}; set ca_file to the CA that signed the receiver's certificate"
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise TransientError(f"TLS handshake with syslog receiver {self.address} failed: {exc}") from exc

    def close(self):
        """Close the socket; calling it again does nothing."""
        if self.sock is None:
            return
        sock, self.sock = self.sock, None
        if isinstance(sock, ssl.SSLSocket):
            # A close_notify alert lets the receiver tell a clean close from a cut connection.
            try:
                sock.settimeout(CLOSE_NOTIFY_TIMEOUT_SECONDS)
                sock.unwrap()
            except (OSError, ssl.SSLError, ValueError):
                pass
        sock.close()


def _peer_state(sock):
    """Return OPEN, CLOSED (clean end of stream) or RESET for SOCK, without blocking.

    Syslog receivers never send application data, so whatever a readable
    socket returns (end of stream, a reset, a TLS alert or session ticket) is
    read and dropped here.
    """
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return OPEN
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return CLOSED if sock.recv(4096) == b"" else OPEN
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return OPEN
    except (OSError, ssl.SSLError):
        return RESET
    finally:
        sock.settimeout(timeout)


def _unacknowledged_bytes(sock):
    """Return the bytes the kernel sent or queued that the receiver has not acknowledged yet.

    On Linux, the TIOCOUTQ (SIOCOUTQ) ioctl of a TCP socket returns that count.
    """
    result = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    return struct.unpack("i", result)[0]


def build_tls_context(settings):
    """Build the client TLS context: verification on unless verify_tls is false, optional client certificate."""
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.client_cert:
        context.load_cert_chain(settings.client_cert, settings.client_key)
    return context
