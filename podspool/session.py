"""Open one PoD log stream session: the URL, the handshake and what its failures mean.

Every failure to open or keep a session becomes a `SessionError`, which the
device's reconnect policy retries. Messages name the endpoint host and the
HTTP status, never the token, the Authorization header or the text of
websocket-client's WebSocketBadStatusException (that text embeds the response
headers and body).
"""

import ipaddress
import socket
import ssl
import struct
import time
import urllib.parse
from datetime import timezone

import websocket

from podspool.errors import PodspoolError

# Each recv syscall waits at most this long, so the device loop checks its stop event often.
READ_SLICE_SECONDS = 0.5
# Handshake time limit: TCP connect, TLS, proxy CONNECT and the HTTP upgrade each get this long.
# NOTE: the stop event is not checked during a handshake, so a stop while a silent
# host is being reached can take up to this long instead of the usual second.
CONNECT_TIMEOUT_SECONDS = 10.0
READ_CHUNK_BYTES = 256 * 1024

# 400, 401 and 404 mean the device configuration is wrong; waiting does not fix them.
CONFIGURATION_STATUSES = {
    400: "the server rejected the request parameters (HTTP 400); check the device's cluster and type",
    401: "the server rejected the token (HTTP 401); check the device's token and cluster id",
    404: "the endpoint was not found (HTTP 404); check the device's endpoint URL (wss://HOST/v1/stream)",
}
CONFLICT_STATUS = 409


class SessionError(PodspoolError):
    """A session could not be opened or ended; the reconnect policy retries it."""

    retry_after_seconds = None


class HandshakeError(SessionError):
    """The server responded to the WebSocket upgrade with an HTTP status other than 101."""

    def __init__(self, message, status_code, retry_after_seconds=None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_seconds = retry_after_seconds

    @property
    def configuration_problem(self):
        return self.status_code in CONFIGURATION_STATUSES


class ConnectError(SessionError):
    """The connection failed before any HTTP answer: DNS, TCP, TLS, proxy or a time-out."""

    def __init__(self, message, kind):
        super().__init__(message)
        self.kind = kind


class SessionClosed(SessionError):
    """The server closed the session with a close frame."""

    def __init__(self, close_code, reason):
        super().__init__(f"the server closed the session with code {close_code} ({reason or 'no reason'})")
        self.close_code = close_code
        self.reason = reason


class ConnectionDropped(SessionError):
    """The connection ended without a close frame."""


class SessionStalled(SessionError):
    """Nothing, not even a pong, arrived for longer than ping interval plus ping timeout."""


class ReadPause(websocket.WebSocketTimeoutException):
    """Raised between two recv syscalls to hand control back to the device loop.

    websocket-client keeps a partly received frame (header, length and the
    payload bytes read so far) in its frame_buffer across a
    WebSocketTimeoutException, so the next recv_data() call continues it.
    """


class StreamSocket(websocket.WebSocket):
    """A WebSocket whose reads are buffered, timed and interruptible between syscalls.

    websocket-client reads a frame header with recv(2) and a payload in 16 KiB
    pieces. Reading READ_CHUNK_BYTES per syscall and serving those requests from
    a buffer saves most syscalls. `last_received` (time.monotonic) moves on every
    byte that arrives, so a large frame that trickles in counts as life.
    """

    def __init__(self, **options):
        super().__init__(**options)
        self._buffer = b""
        self._offset = 0
        self.read_deadline = None  # time.monotonic() after which no new recv syscall starts
        self.buffered_only = False  # serve only what is buffered; raise ReadPause instead of reading
        self.last_received = time.monotonic()

    def has_buffered(self):
        return self._offset < len(self._buffer)

    def _recv(self, bufsize):
        if self._offset < len(self._buffer):
            end = self._offset + bufsize
            chunk = self._buffer[self._offset:end]
            self._offset = end
            return chunk
        if self.buffered_only or (self.read_deadline is not None and time.monotonic() >= self.read_deadline):
            raise ReadPause("read slice over")
        data = super()._recv(max(bufsize, READ_CHUNK_BYTES))
        self.last_received = time.monotonic()
        if len(data) <= bufsize:
            return data
        self._buffer = data
        self._offset = bufsize
        return data[:bufsize]


def format_api_time(moment):
    """Format an aware datetime as the API's UTC form, `YYYY-MM-DDTHH:MM:SS-0000`."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S-0000")


def build_url(endpoint, cluster, log_type, since=None, until=None):
    """Return ENDPOINT with `cid`, `type` and, for a replay, `sinceTime` and `toTime` added.

    A query string already in ENDPOINT is kept as written.
    """
    parts = urllib.parse.urlsplit(endpoint)
    params = [("cid", cluster), ("type", log_type)]
    if since is not None:
        params.append(("sinceTime", format_api_time(since)))
    if until is not None:
        params.append(("toTime", format_api_time(until)))
    added = urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe=":")
    query = f"{parts.query}&{added}" if parts.query else added
    return urllib.parse.urlunsplit(parts._replace(query=query))


def endpoint_host(url):
    """Return `host:port` of URL for messages (never user information or the query)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    return f"{parts.hostname}:{port}"


def is_cleartext_remote(url):
    """Return True when URL is ws:// (no TLS) to a host other than loopback or localhost."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "ws" or parts.hostname == "localhost":
        return False
    try:
        return not ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return True


def connect_options(settings):
    """Return the keyword arguments of WebSocket.connect for SETTINGS (TLS, proxy, header)."""
    options = {
        "header": [f"Authorization: Bearer {settings.token}"],
        "timeout": CONNECT_TIMEOUT_SECONDS,
        "suppress_origin": True,
        # A redirect would carry the Authorization header to another location.
        "redirect_limit": 0,
    }
    if settings.proxy:
        proxy = urllib.parse.urlsplit(settings.proxy)
        options["http_proxy_host"] = proxy.hostname
        options["http_proxy_port"] = proxy.port or 80
        options["proxy_type"] = "http"
        if proxy.username:
            options["http_proxy_auth"] = (urllib.parse.unquote(proxy.username),
                                          urllib.parse.unquote(proxy.password or ""))
    return options


def ssl_options(settings):
    """Return websocket-client's sslopt for SETTINGS: verification on unless verify_tls is false."""
    if not settings.verify_tls:
        return {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}
    options = {"cert_reqs": ssl.CERT_REQUIRED, "check_hostname": True}
    if settings.ca_file:
        options["ca_certs"] = settings.ca_file
    return options


def open_session(settings, url):
    """Open a StreamSocket to URL for the device SETTINGS, or raise a SessionError.

    The returned socket reads with READ_SLICE_SECONDS time-outs.
    """
    ws = StreamSocket(sslopt=ssl_options(settings), skip_utf8_validation=True)
    try:
        ws.connect(url, **connect_options(settings))
    except BaseException as exc:
        ws.shutdown()
        error = classify_connect_error(exc, endpoint_host(url), settings.reconnect_max_seconds)
        if error is None:
            raise
        # `from None`: the original exception text may hold response headers.
        raise error from None
    ws.settimeout(READ_SLICE_SECONDS)
    ws.last_received = time.monotonic()
    return ws


def classify_connect_error(exc, host, max_delay_seconds):
    """Return the SessionError that describes EXC in plain words, or None for a bug to re-raise."""
    if isinstance(exc, websocket.WebSocketBadStatusException):
        return handshake_error(exc.status_code, max_delay_seconds)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or "certificate not trusted"
        return ConnectError(f"TLS certificate verification of {host} failed: {detail}", "tls")
    if isinstance(exc, ssl.SSLError):
        return ConnectError(f"TLS handshake with {host} failed: {exc.reason or type(exc).__name__}", "tls")
    if isinstance(exc, websocket.WebSocketAddressException):
        return ConnectError(f"DNS lookup of {host} failed", "dns")
    if isinstance(exc, websocket.WebSocketProxyException):
        return ConnectError(f"the HTTP proxy rejected the CONNECT request to {host}", "proxy")
    if isinstance(exc, (websocket.WebSocketTimeoutException, TimeoutError, socket.timeout)):
        return ConnectError(f"connection to {host} timed out", "timeout")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"connection to {host} refused", "refused")
    if isinstance(exc, websocket.WebSocketException) and str(exc).startswith("SSL "):
        # websocket-client's own TLS set-up errors, such as an unreadable CA file.
        return ConnectError(f"TLS set-up for {host} failed: {exc}", "tls")
    if isinstance(exc, websocket.WebSocketException) and "Redirect" in str(exc):
        return ConnectError(f"{host} responded with a redirect, which is not followed; "
                            "set endpoint to the final URL", "redirect")
    if isinstance(exc, (OSError, websocket.WebSocketException)):
        return ConnectError(f"connection to {host} failed: {type(exc).__name__}", "network")
    return None


def handshake_error(status_code, max_delay_seconds):
    """Return the HandshakeError for STATUS_CODE; configuration problems retry at the maximum delay."""
    if status_code in CONFIGURATION_STATUSES:
        return HandshakeError(CONFIGURATION_STATUSES[status_code], status_code,
                              retry_after_seconds=max_delay_seconds)
    if status_code == CONFLICT_STATUS:
        return HandshakeError("another session already uses this token (HTTP 409); "
                              "retrying with backoff", status_code)
    return HandshakeError(f"the server responded to the WebSocket upgrade with HTTP {status_code}", status_code)


def parse_close_frame(data):
    """Return (code, reason) of a close frame payload; code 1005 when the frame has none."""
    if len(data) < 2:
        return 1005, ""
    code = struct.unpack("!H", data[:2])[0]
    return code, data[2:].decode("utf-8", "replace")
