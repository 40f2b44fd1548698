"""Validation of a PoD stream handshake: path, query parameters, token and time range."""

import hmac
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from podspool.emulator_events import LOG_TYPES
from podspool.events import parse_ts

STREAM_PATH = "/v1/stream"
REPLAY_MAX_DAYS = 30
SESSIONS_EXCEEDED = "Exceeded maximum number of sessions per token"


class Rejection(Exception):
    """A handshake rejected with an HTTP status instead of a WebSocket session."""

    def __init__(self, status, text):
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text


@dataclass(frozen=True)
class StreamRequest:
    """The validated query of one stream session; instants in microseconds since the epoch."""

    params: dict
    log_type: str
    cid: str
    since_us: int | None
    to_us: int | None


def parse_query(target):
    """Split a request target into its path and {name: value}; a repeated name is a Rejection.

    The query is decoded as a form, as web servers do, so an unencoded `+`
    reads as a space: clients must send `%2B` or a `-0000` offset.
    """
    parts = urlsplit(target)
    params = {}
    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        if len(values) > 1:
            raise Rejection(400, f"Bad Request: parameter {name} given more than once")
        params[name] = values[0]
    return parts.path, params


def token_matches(authorization, token):
    """Return True when the Authorization header value is `Bearer TOKEN` (constant-time compare)."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8"), token.encode("utf-8"))


def parse_time_param(name, value):
    """Parse a sinceTime/toTime value into microseconds since the epoch, or raise a Rejection.

    Accepted: ISO 8601 date-times with `Z`, `+0000`, `-0000`, `-04:00` or no
    offset (UTC), with or without a fraction, and bare dates.
    """
    try:
        moment = parse_ts(value)
    except ValueError:
        raise Rejection(400, f"Bad Request: {name} is not an ISO 8601 time: {value!r}") from None
    return round(moment.timestamp() * 1_000_000)


def validate_stream(params, cluster, now_us):
    """Check the query parameters of a stream request; return a StreamRequest.

    Raises Rejection with 400 for a missing, empty or
    invalid parameter (toTime without sinceTime, toTime before sinceTime, or a
    sinceTime more than 30 days back) and 401 for a cid other than CLUSTER
    (any cid passes when CLUSTER is None).
    """
    for name in ("cid", "type"):
        if not params.get(name):
            raise Rejection(400, f"Bad Request: missing parameter {name}")
    log_type = params["type"]
    if log_type not in LOG_TYPES:
        raise Rejection(400, f"Bad Request: type must be one of {', '.join(LOG_TYPES)}")
    since_us = to_us = None
    if "sinceTime" in params:
        since_us = parse_time_param("sinceTime", params["sinceTime"])
        if since_us < now_us - REPLAY_MAX_DAYS * 86400 * 1_000_000:
            raise Rejection(400, f"Bad Request: sinceTime is more than {REPLAY_MAX_DAYS} days back")
    if "toTime" in params:
        if since_us is None:
            raise Rejection(400, "Bad Request: toTime requires sinceTime")
        to_us = parse_time_param("toTime", params["toTime"])
        if to_us < since_us:
            raise Rejection(400, "Bad Request: toTime is before sinceTime")
    if cluster is not None and params["cid"] != cluster:
        raise Rejection(401, "Unauthorized: unknown cluster id")
    return StreamRequest(dict(params), log_type, params["cid"], since_us, to_us)
