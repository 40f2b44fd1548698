"""The `elasticsearch` output: the bulk API of Elasticsearch and OpenSearch.

Every record is a `create` action whose `_id` comes from the dedup key, so a
batch sent twice (after a timeout or a crash) cannot index an event twice:
Elasticsearch returns 409 for the second copy, which counts as delivered.
"""

import hashlib
import json
import logging

from podspool.outputs.base import Destination, Rejection, SendResult, TransientError
from podspool.outputs.http import build_session, json_body, post, raise_for_status, safe_url

log = logging.getLogger(__name__)

# NOTE: `logs-*-*` names are data streams, which reject a document without `@timestamp`
# unless an ingest pipeline sets it; a device pipeline with the `timestamp` processor adds it.
DEFAULT_INDEX = "logs-proofpoint_on_demand.{type}-default"
MAX_ID_BYTES = 512  # Elasticsearch rejects a longer _id


def document_id(key):
    """Return the `_id` for a dedup key: the key itself, or its sha256 hex when over 512 bytes."""
    if len(key.encode("utf-8")) <= MAX_ID_BYTES:
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def classify_item(index, item):
    """Return "delivered", "retry" or a Rejection for one bulk response item."""
    result = item.get("create") if isinstance(item, dict) else None
    if not isinstance(result, dict):
        result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
    if not isinstance(result, dict) or not isinstance(result.get("status"), int):
        return "retry"
    status = result["status"]
    # 409 on `create` is version_conflict_engine_exception: the document is already indexed.
    if 200 <= status < 300 or status == 409:
        return "delivered"
    if status == 429 or status >= 500:
        return "retry"
    error = result.get("error")
    if isinstance(error, dict):
        reason = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip()
    else:
        reason = str(error or f"status {status}")
    return Rejection(index=index, reason=f"HTTP {status} {reason}", response=error)


class ElasticsearchDestination(Destination):
    """Send batches to `<url>/_bulk`, trying the next URL of the list on a connection error."""

    def __init__(self, settings):
        super().__init__(settings)
        options = settings.options
        urls = options["url"]
        urls = [urls] if isinstance(urls, str) else list(urls)
        self.bulk_urls = [url.rstrip("/") + "/_bulk" for url in urls]
        self.index = options.get("index") or DEFAULT_INDEX
        self._api_key = options.get("api_key")
        self._basic = (options["username"], options["password"]) if options.get("username") else None
        self._next_url = 0
        self._session = None

    def __repr__(self):
        urls = [safe_url(url) for url in self.bulk_urls]
        return f"ElasticsearchDestination(output={self.settings.name!r}, urls={urls!r})"

    @property
    def session(self):
        if self._session is None:
            self._session = build_session(self.settings)
            if self._basic:
                self._session.auth = self._basic
        return self._session

    def encode(self, records):
        """Return the bulk request body: a create action line, then the event line, per record."""
        lines = []
        for record in records:
            index = self.index.format_map({"type": record.log_type, "device": record.device})
            action = {"create": {"_index": index, "_id": document_id(record.key)}}
            lines.append(json.dumps(action, separators=(",", ":")).encode())
            lines.append(record.line)
        return b"\n".join(lines) + b"\n"

    def send(self, records):
        response, url = self._post(self.encode(records))
        raise_for_status(response, url)
        answer = json_body(response)
        items = answer.get("items") if isinstance(answer, dict) else None
        if not isinstance(items, list) or len(items) != len(records):
            raise TransientError(
                f"bulk response from {safe_url(url)} has no item result per event; the batch is sent again")
        result = SendResult()
        for index, item in enumerate(items):
            outcome = classify_item(index, item)
            if outcome == "retry":
                result.retry.append(index)
            elif isinstance(outcome, Rejection):
                result.rejected.append(outcome)
        if answer.get("errors") and not (result.retry or result.rejected):
            log.debug("output=%s bulk response has errors: true and only 409 items",
                      self.settings.name, extra={"output": self.settings.name})
        return result

    def _post(self, body):
        headers = {"Content-Type": "application/x-ndjson"}
        if self._api_key:
            headers["Authorization"] = f"ApiKey {self._api_key}"
        last_error = None
        for step in range(len(self.bulk_urls)):
            position = (self._next_url + step) % len(self.bulk_urls)
            url = self.bulk_urls[position]
            try:
                response = post(self.session, url, data=body, headers=headers,
                                timeout=self.settings.timeout_seconds)
            except TransientError as exc:
                last_error = exc
                continue
            self._next_url = position
            return response, url
        # Start the next attempt at the URL after the one that failed last.
        self._next_url = (self._next_url + 1) % len(self.bulk_urls)
        raise last_error

    def close(self):
        if self._session is not None:
            self._session.close()
            self._session = None
