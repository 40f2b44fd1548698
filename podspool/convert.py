"""Small converters for configuration values.

Each raises ValueError with a short description of what was expected; the
loader adds the file and key path and turns it into a ConfigError.
"""

import math
import re
from datetime import date, datetime, timezone
from urllib.parse import urlsplit

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def to_bytes(value):
    """Convert an integer or a string such as `64MiB`, `1GiB` or `500kB` into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size: an integer number of bytes or a string like 64MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size of zero or more bytes")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return int(float(match.group(1)) * _SIZE_FACTORS[unit])
    raise ValueError("expected a size: an integer number of bytes or a string like 64MiB or 1GiB")


def to_seconds(value):
    """Convert a number of seconds, integer or fraction, into a float of zero or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("expected a number of seconds, such as 60 or 0.5")
    if value < 0:
        raise ValueError("expected zero or more seconds")
    return float(value)


def to_positive_seconds(value):
    """Convert a number of seconds that must be above zero."""
    seconds = to_seconds(value)
    if seconds <= 0:
        raise ValueError("expected a number of seconds above zero")
    return seconds


def to_bool(value):
    """Accept only YAML booleans, so `"false"` in quotes is not silently true."""
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def to_int(value, minimum=None):
    """Accept an integer (not a boolean), optionally with a lower bound."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("expected an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"expected an integer of at least {minimum}")
    return value


def to_str(value):
    """Accept a non-empty string."""
    if not isinstance(value, str):
        raise ValueError("expected a string")
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def to_str_list(value):
    """Accept a list of strings (a single string is not a list here)."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def to_choice(choices):
    """Return a converter that accepts one of CHOICES."""

    def convert(value):
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return convert


def to_instant(value):
    """Convert an ISO 8601 time (a YAML timestamp or a string) into an aware UTC datetime."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        # YAML reads an unquoted 2025-01-02 as a date: midnight UTC of that day.
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError("expected an ISO 8601 time such as 2025-01-02T10:00:00Z") from None
    else:
        raise ValueError("expected an ISO 8601 time such as 2025-01-02T10:00:00Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def to_listen_address(value):
    """Convert `HOST:PORT` (IPv6 as `[::1]:9713`) into (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected HOST:PORT, such as 127.0.0.1:9713")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, such as 127.0.0.1:9713")
    return host, int(port)


def to_url(schemes, example):
    """Return a converter for a URL with one of SCHEMES and a host."""

    def convert(value):
        text = to_str(value)
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"expected a URL such as {example}") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL such as {example}")
        return text

    return convert


def to_existing_file(value):
    """Accept the path of a readable file."""
    text = to_str(value)
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"file cannot be read ({exc.strerror})") from None
    return text


def to_name(value):
    """Accept a name usable as a directory name: no `/`, not `.` or `..`, no leading dot."""
    text = to_str(value)
    if "/" in text or "\0" in text or text.startswith(".") or text == "dead-letter":
        raise ValueError("expected a name without '/', not starting with '.', and not 'dead-letter', "
                         "because it names the device's spool directory")
    return text
