"""The `splunk_hec` output: batches of JSON events to Splunk's HTTP Event Collector.

Each record becomes one HEC event object whose `event` is the spool line as
is and whose `time` is the event's `ts` as epoch seconds with microseconds.
With `ack: true` a batch counts as delivered only when the indexer
acknowledgement endpoint reports it indexed.
"""

import json
import logging
import socket
import threading
import time
import uuid
from datetime import datetime, timezone

from podspool.events import event_time
from podspool.outputs.base import Destination, PermanentError, SendResult, TransientError
from podspool.outputs.http import (
    HttpStatusError, build_session, json_body, parse_retry_after, post, safe_url,
)

log = logging.getLogger(__name__)

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# HEC error codes from Splunk's "Troubleshoot HTTP Event Collector" table.
# These reject the data itself, so the shipper splits the batch to find the bad events:
# 5 no data, 6 invalid data format, 12 event field is required, 13 event field
# cannot be blank, 15 error in handling indexed fields.
# NOTE: Splunk may already have indexed the events before the invalid one (the response's
# `invalid-event-number` names it); splitting re-sends them, so they can be indexed twice.
DATA_ERROR_CODES = frozenset({5, 6, 12, 13, 15})
# The others on a 400 are configuration (7 incorrect index, 10 and 11 data channel,
# 14 ACK is disabled, 16 query string authorization): keep the data and retry.


def hec_time(event):
    """Return the event's `ts` as epoch seconds with six decimals (`1716404403.058340`), or None."""
    moment = event_time(event)
    if moment is None:
        return None
    delta = moment - EPOCH
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    sign = "-" if micros < 0 else ""
    seconds, fraction = divmod(abs(micros), 1_000_000)
    return f"{sign}{seconds}.{fraction:06d}"


class SplunkHecDestination(Destination):
    """Send batches to `<url>/services/collector/event` with `Authorization: Splunk <token>`."""

    def __init__(self, settings):
        super().__init__(settings)
        options = settings.options
        base = options["url"].rstrip("/")
        self.event_url = base + EVENT_PATH
        self.ack_url = base + ACK_PATH
        self._token = options["token"]
        self.index = options.get("index")
        self.source = options.get("source")
        self.sourcetype = options.get("sourcetype")
        self.host = options.get("host")
        self.ack = bool(options.get("ack", False))
        self.ack_poll_seconds = float(options.get("ack_poll_seconds", 1.0))
        self.ack_timeout_seconds = float(options.get("ack_timeout_seconds", 300.0))
        self.channel = str(uuid.uuid4())
        # The shipper replaces this with its stop event, so a stop ends an ack wait.
        self.stop_event = threading.Event()
        self._session = None
        self._warned_no_ack_id = False

    def __repr__(self):
        return f"SplunkHecDestination(output={self.settings.name!r}, url={safe_url(self.event_url)!r})"

    @property
    def session(self):
        if self._session is None:
            self._session = build_session(self.settings)
        return self._session

    def _headers(self):
        return {
            "Authorization": f"Splunk {self._token}",
            "Content-Type": "application/json",
            "X-Splunk-Request-Channel": self.channel,
        }

    def encode_record(self, record):
        """Return the HEC event object for RECORD as bytes, with the spool line as `event`."""
        metadata = {
            "host": self.host or socket.gethostname(),
            "source": self.source or f"podspool:{record.device}",
            "sourcetype": self.sourcetype or f"proofpoint:pod:{record.log_type}",
        }
        if self.index:
            metadata["index"] = self.index
        fields = json.dumps(metadata, separators=(",", ":"))[1:-1].encode()
        # `time` is written as a JSON number literal so no float rounding touches the microseconds.
        seconds = hec_time(record.event)
        prefix = b'{"time":' + seconds.encode() + b"," if seconds is not None else b"{"
        return prefix + fields + b',"event":' + record.line + b"}"

    def send(self, records):
        body = b"".join(self.encode_record(record) for record in records)
        response = post(self.session, self.event_url, data=body, headers=self._headers(),
                        timeout=self.settings.timeout_seconds)
        answer = json_body(response) or {}
        self._raise_for_status(response, answer)
        if self.ack:
            ack_id = answer.get("ackId")
            if ack_id is None:
                self._warn_no_ack_id()
            else:
                self.wait_for_ack(ack_id)
        return SendResult()

    def _raise_for_status(self, response, answer):
        status = response.status_code
        if 200 <= status < 300:
            return
        code = answer.get("code")
        text = answer.get("text") or ""
        message = f"Splunk HEC at {safe_url(self.event_url)} returned HTTP {status} code {code} {text!r}"
        if (status == 400 and code in DATA_ERROR_CODES) or status == 413:
            raise PermanentError(message, response=answer)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        # 429, 503 (server busy) and other 5xx need only time. The rest (401 and 403 for the
        # token, configuration 400s, a wrong URL) need an operator, so they log at ERROR,
        # but the data stays in the spool until they are fixed.
        busy = status == 429 or status >= 500
        level = logging.WARNING if busy else logging.ERROR
        raise HttpStatusError(message, status, retry_after_seconds=retry_after, log_level=level)

    def wait_for_ack(self, ack_id):
        """Poll the ack endpoint until ACK_ID is indexed; raise TransientError on stop or timeout.

        A poll that fails on the network is tried again until the timeout,
        because the events were already accepted.
        """
        deadline = time.monotonic() + self.ack_timeout_seconds
        delay = min(0.05, self.ack_poll_seconds)
        body = json.dumps({"acks": [ack_id]}).encode()
        while True:
            if self._poll_ack(body, ack_id):
                return
            if time.monotonic() + delay > deadline:
                raise TransientError(
                    f"Splunk HEC did not acknowledge ackId {ack_id} within "
                    f"{self.ack_timeout_seconds:g} s; the batch is sent again")
            if self.stop_event.wait(delay):
                raise TransientError(f"stopped while waiting for Splunk HEC ackId {ack_id}")
            delay = min(delay * 2, self.ack_poll_seconds)

    def _poll_ack(self, body, ack_id):
        try:
            response = post(self.session, self.ack_url, data=body, headers=self._headers(),
                            timeout=self.settings.timeout_seconds)
        except TransientError as exc:
            log.debug("output=%s ack poll failed: %s", self.settings.name, exc,
                      extra={"output": self.settings.name})
            return False
        if response.status_code != 200:
            log.debug("output=%s ack poll returned HTTP %d", self.settings.name,
                      response.status_code, extra={"output": self.settings.name})
            return False
        acks = (json_body(response) or {}).get("acks") or {}
        return acks.get(str(ack_id)) is True

    def _warn_no_ack_id(self):
        if self._warned_no_ack_id:
            return
        self._warned_no_ack_id = True
        log.warning("output=%s has ack enabled but Splunk HEC returned no ackId; "
                    "enable indexer acknowledgement on the token, or set ack: false. "
                    "Until then an HTTP 200 confirms delivery", self.settings.name,
                    extra={"output": self.settings.name})

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None
