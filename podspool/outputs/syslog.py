"""The `syslog` output: RFC 5424 messages over TCP (RFC 6587), TLS (RFC 5425) or UDP (RFC 5426).

Each event becomes `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`: MSGID
is the log type, TIMESTAMP the event's `ts` with its own offset, and MSG the
spool line as it is (compact JSON, which contains no raw newline).

Syslog has no application-level acknowledgement, so a TCP or TLS batch counts
as delivered once the receiver's TCP stack has acknowledged every byte. The
connection is checked before and after each write, and a batch written into a
closed connection is sent again: duplicates are possible, loss is not. UDP
gives no delivery guarantee.
"""

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

from podspool import convert
from podspool.errors import ConfigError
from podspool.outputs.base import Destination, Rejection, SendResult, TransientError
from podspool.outputs.registry import to_port
from podspool.outputs.syslog_stream import StreamConnection

log = logging.getLogger(__name__)

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13,
    "console": 14, "solaris-cron": 15, "local0": 16, "local1": 17, "local2": 18,
    "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
SEVERITIES = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7,
}
PROTOCOLS = ("tcp", "tls", "udp")
FRAMINGS = ("octet-counting", "newline")
DEFAULT_PORTS = {"tcp": 514, "tls": 6514, "udp": 514}

# 64 KiB is syslog-ng's default log-msg-size; rsyslog accepts 8 KiB unless its
# global maxMessageSize is raised, and truncates longer messages, which would
# cut the JSON. PoD message events with many parts exceed 8 KiB.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
# The largest UDP payload over IPv4: 65535 minus the 8-byte UDP and 20-byte IP headers.
MAX_UDP_PAYLOAD_BYTES = 65507
# RFC 5426: every receiver must accept UDP messages of 480 bytes.
MIN_MESSAGE_BYTES = 480

# RFC 5424 header field limits, in printable US-ASCII characters.
MAX_HOSTNAME_CHARS = 255
MAX_APP_NAME_CHARS = 48
MAX_MSGID_CHARS = 32

KNOWN_OPTIONS = {"host", "port", "protocol", "framing", "app_name", "hostname",
                 "facility", "severity", "max_message_bytes"}


@dataclass(frozen=True)
class SyslogOptions:
    host: str
    port: int
    protocol: str
    framing: str
    app_name: str
    hostname: str
    facility: str
    severity: str
    max_message_bytes: int

    @property
    def priority(self):
        return FACILITIES[self.facility] * 8 + SEVERITIES[self.severity]


def _header_token(value, limit):
    """Check VALUE is a syslog header field: 1 to LIMIT printable ASCII characters, no space."""
    value = convert.to_str(value)
    if len(value) > limit or not all(33 <= ord(char) <= 126 for char in value):
        raise ValueError(f"expected 1 to {limit} printable ASCII characters without spaces")
    return value


def _default_hostname():
    try:
        return _header_token(socket.gethostname(), MAX_HOSTNAME_CHARS)
    except ValueError:
        return "-"  # RFC 5424's NILVALUE


def validate_options(settings, *, file=None, path=None):
    """Return the SyslogOptions of SETTINGS; raise ConfigError naming the bad key."""
    raw = dict(settings.options or {})
    prefix = f"{path}." if path else ""
    unknown = sorted(set(raw) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError("unknown syslog option", file=file, key=prefix + unknown[0],
                          fix="use one of " + ", ".join(sorted(KNOWN_OPTIONS)))

    def get(key, converter, default):
        if raw.get(key) is None:
            return default
        try:
            return converter(raw[key])
        except ValueError as exc:
            raise ConfigError(f"invalid value: {exc}", file=file, key=prefix + key, value=raw[key]) from None

    if raw.get("host") is None:
        raise ConfigError("missing required key", file=file, key=prefix + "host", fix="add host:")
    protocol = get("protocol", convert.to_choice(PROTOCOLS), "tcp")
    maximum = MAX_UDP_PAYLOAD_BYTES if protocol == "udp" else None
    return SyslogOptions(
        host=get("host", convert.to_str, None),
        port=get("port", to_port, DEFAULT_PORTS[protocol]),
        protocol=protocol,
        framing=get("framing", convert.to_choice(FRAMINGS), "octet-counting"),
        app_name=get("app_name", lambda v: _header_token(v, MAX_APP_NAME_CHARS), "podspool"),
        hostname=get("hostname", lambda v: _header_token(v, MAX_HOSTNAME_CHARS), None) or _default_hostname(),
        facility=get("facility", convert.to_choice(tuple(FACILITIES)), "local0"),
        severity=get("severity", convert.to_choice(tuple(SEVERITIES)), "info"),
        max_message_bytes=get("max_message_bytes", lambda v: _to_message_size(v, maximum),
                              min(DEFAULT_MAX_MESSAGE_BYTES, maximum or DEFAULT_MAX_MESSAGE_BYTES)),
    )


def _to_message_size(value, maximum):
    size = convert.to_bytes(value)
    if size < MIN_MESSAGE_BYTES:
        raise ValueError(f"expected at least {MIN_MESSAGE_BYTES} bytes")
    if maximum is not None and size > maximum:
        raise ValueError(f"expected at most {maximum} bytes, the largest UDP payload over IPv4")
    return size


def syslog_timestamp(event, now=None):
    """Return the event's `ts` as an RFC 5424 TIMESTAMP, keeping its offset; NOW when it is unusable.

    RFC 5424 allows at most 6 fractional digits and an offset in whole minutes,
    so the time keeps microseconds and an offset with seconds is moved to UTC.
    """
    moment = None
    ts = event.get("ts") if isinstance(event, dict) else None
    if isinstance(ts, str):
        try:
            moment = datetime.fromisoformat(ts)
        except ValueError:
            moment = None
    if moment is None:
        moment = now or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment.utcoffset().total_seconds() % 60:
        moment = moment.astimezone(timezone.utc)
    text = moment.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def format_message(options, record, procid, now=None):
    """Return the RFC 5424 message of RECORD as bytes, without framing.

    MSG carries no byte-order mark: SIEM parsers read it as JSON, and a BOM in
    front of the object would break them.
    """
    try:
        event = record.event
    except ValueError:
        event = None
    msgid = record.log_type if record.log_type else "-"
    header = "<%d>1 %s %s %s %s %s - " % (
        options.priority, syslog_timestamp(event, now), options.hostname,
        options.app_name, procid, msgid[:MAX_MSGID_CHARS],
    )
    return header.encode("ascii") + record.line


def frame(message, framing):
    """Frame one message for a stream transport (RFC 6587): `LEN SP MSG` or `MSG LF`."""
    if framing == "newline":
        return message + b"\n"
    return b"%d %s" % (len(message), message)


class SyslogDestination(Destination):
    """Send batches of records to one syslog receiver over TCP, TLS or UDP."""

    def __init__(self, settings):
        super().__init__(settings)
        self.name = settings.name
        self.options = validate_options(settings)
        self.procid = str(os.getpid())
        self.connection = None
        self.udp_socket = None

    def send(self, records, now=None):
        """Send RECORDS; return a SendResult listing over-size records as rejected.

        Raises TransientError when the receiver cannot be reached or closed the
        connection before acknowledging the whole batch.
        """
        messages, rejected = self._build_messages(records, now)
        if messages:
            if self.options.protocol == "udp":
                self._send_datagrams(messages)
            else:
                self._send_stream(messages)
        return SendResult(rejected=rejected)

    def _build_messages(self, records, now):
        messages, rejected = [], []
        limit = self.options.max_message_bytes
        for index, record in enumerate(records):
            message = format_message(self.options, record, self.procid, now)
            if len(message) > limit:
                reason = f"syslog message of {len(message)} bytes exceeds max_message_bytes {limit}"
                rejected.append(Rejection(index=index, reason=reason, response=None))
                continue
            if self.options.framing == "newline" and b"\n" in record.line:
                rejected.append(Rejection(index=index, reason="event line contains a raw newline"))
                continue
            messages.append(message)
        return messages, rejected

    def _send_stream(self, messages):
        if self.connection is None:
            self.connection = StreamConnection(self.options, self.settings, self.name)
        payload = b"".join(frame(message, self.options.framing) for message in messages)
        try:
            self.connection.send_acknowledged(payload)
        except TransientError:
            self.connection.close()
            raise

    def _send_datagrams(self, messages):
        host, port = self.options.host, self.options.port
        try:
            if self.udp_socket is None:
                # A connected socket reports an ICMP port-unreachable reply as an error on a later send.
                family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
                self.udp_socket = socket.socket(family, kind, proto)
                self.udp_socket.settimeout(self.settings.timeout_seconds)
                self.udp_socket.connect(address)
            for message in messages:
                self.udp_socket.send(message)
        except OSError as exc:
            self.close()
            raise TransientError(f"sending UDP syslog to {host}:{port} failed: {exc}") from exc

    def close(self):
        """Close the connection; calling it again does nothing."""
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.udp_socket is not None:
            self.udp_socket.close()
            self.udp_socket = None
