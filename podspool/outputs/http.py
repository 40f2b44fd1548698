"""The `http` output, plus the session, TLS and status helpers that every HTTP output shares.

Error texts built here name the URL without user info or query string, the
exception class and the status code. The shipper logs them, so they never
contain a header, a request body or a credential.
"""

import gzip
import json
import logging
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from podspool.outputs.base import Destination, PermanentError, SendResult, TransientError

log = logging.getLogger(__name__)

# Status codes that waiting or an operator can fix: the data stays in the spool.
# 401, 403, 404 and 407 (and any 3xx, since redirects are not followed) mean a wrong
# credential, URL or proxy, and dead-lettering every event for them would lose the stream.
TRANSIENT_STATUS = frozenset({401, 403, 404, 407, 408, 425, 429})
CONFIG_STATUS = frozenset({401, 403, 404, 407})
# Request errors that only a configuration change fixes (a header value with a newline, a bad URL).
CONFIG_EXCEPTIONS = (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL,
                     requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema)


class HttpStatusError(TransientError):
    """A transient HTTP status; `log_level` is ERROR when an operator must act (credential, URL)."""

    def __init__(self, message, status_code, retry_after_seconds=None, log_level=logging.WARNING):
        super().__init__(message, retry_after_seconds=retry_after_seconds)
        self.status_code = status_code
        self.log_level = log_level


def safe_url(url):
    """Return URL without user info, query string and fragment, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def describe_exception(exc):
    """Name EXC's class and the innermost operating-system error, without URLs or headers."""
    text = type(exc).__name__
    seen = set()
    cause = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.strerror:
            return f"{text} ({cause.strerror})"
        nested = [arg for arg in getattr(cause, "args", ()) if isinstance(arg, BaseException)]
        cause = nested[0] if nested else (cause.__cause__ or cause.__context__)
    return text


def parse_retry_after(value, now=None):
    """Return the delay in seconds that a Retry-After header requests (delta or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now if now is not None else datetime.now(timezone.utc).timestamp()
    return max(moment.timestamp() - now, 0.0)


def build_session(settings):
    """Build a pooled requests.Session with the output's TLS settings and no automatic retries."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=4, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.verify = settings.ca_file if (settings.verify_tls and settings.ca_file) else settings.verify_tls
    if settings.client_cert and settings.client_key:
        session.cert = (settings.client_cert, settings.client_key)
    elif settings.client_cert:
        session.cert = settings.client_cert
    # Proxies and .netrc from the environment must not redirect or re-authenticate output traffic.
    session.trust_env = False
    return session


def post(session, url, *, data, headers, timeout):
    """POST DATA to URL and return the response; raise TransientError for network failures."""
    try:
        return session.post(url, data=data, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as exc:
        # A requests exception's text may contain the URL or a header value (InvalidHeader quotes it),
        # and the shipper must not log those. `from None` drops it, and the class and OS error remain.
        error = TransientError(f"POST {safe_url(url)} failed: {describe_exception(exc)}")
        error.log_level = logging.ERROR if isinstance(exc, CONFIG_EXCEPTIONS) else logging.WARNING
        raise error from None


def raise_for_status(response, url):
    """Raise TransientError or PermanentError for a non-2xx RESPONSE; return it otherwise."""
    status = response.status_code
    if 200 <= status < 300:
        return response
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    message = f"POST {safe_url(url)} returned HTTP {status}"
    if status in TRANSIENT_STATUS or status >= 500 or status < 400:
        level = logging.ERROR if status in CONFIG_STATUS or status < 400 else logging.WARNING
        raise HttpStatusError(message, status, retry_after_seconds=retry_after, log_level=level)
    raise PermanentError(message, response=response_summary(response))


def response_summary(response, limit=2000):
    """Return the response body as JSON when it parses, else its first LIMIT characters."""
    try:
        return response.json()
    except ValueError:
        return {"status": response.status_code, "body": response.text[:limit]}


class HttpDestination(Destination):
    """POST batches as NDJSON or as one JSON array to any HTTP collector.

    Options: `url`, `format` (`ndjson` or `json_array`), `gzip` and `headers`.
    A 2xx status delivers the batch. A 4xx status other than 401, 403, 404,
    407, 408, 425 and 429 rejects it, so the shipper splits it to find the
    events at fault. Everything else is retried.
    """

    def __init__(self, settings):
        super().__init__(settings)
        options = settings.options
        self.url = options["url"]
        self.format = options.get("format", "ndjson")
        self.gzip = bool(options.get("gzip", False))
        self.headers = dict(options.get("headers") or {})
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = build_session(self.settings)
        return self._session

    def encode(self, records):
        """Return the request body and content type for RECORDS."""
        if self.format == "json_array":
            body = b"[" + b",".join(record.line for record in records) + b"]"
            return body, "application/json"
        return b"".join(record.line + b"\n" for record in records), "application/x-ndjson"

    def send(self, records):
        body, content_type = self.encode(records)
        headers = dict(self.headers)
        headers["Content-Type"] = content_type
        if self.gzip:
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        response = post(self.session, self.url, data=body, headers=headers,
                        timeout=self.settings.timeout_seconds)
        raise_for_status(response, self.url)
        return SendResult()

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None


def json_body(response):
    """Return RESPONSE's JSON body, or None when it is not JSON."""
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None
