"""The interface between the shipper and a destination.

The shipper reads closed spool files, cuts them into batches of `Record`s and
calls `Destination.send(batch)`. A destination responds in one of three ways:

- it returns a `SendResult` saying which records were delivered, which were
  rejected for good (they go to the output's dead-letter file) and which failed
  for a transient reason (the shipper sends those again after a backoff);
- it raises `TransientError` when nothing in the batch can be known delivered
  (connection refused, timeout, 429, 5xx): the whole batch is retried;
- it raises another exception for a bug; the shipper logs it and retries.

Records are delivered at least once: a destination confirms only what the
remote side acknowledged.
"""

import json
from dataclasses import dataclass, field


@dataclass
class Record:
    """One spooled event on its way to a destination."""

    device: str
    log_type: str
    line: bytes  # the spool line without its newline: compact JSON of one object
    key: str  # the dedup key: `<guid>|<ts>`, `<id>|<ts>` or `sha256:<hex>`
    _event: dict = field(default=None, repr=False)

    @property
    def event(self):
        """The parsed event, decoded once on first use."""
        if self._event is None:
            self._event = json.loads(self.line)
        return self._event


@dataclass
class Rejection:
    index: int  # position of the record in the batch
    reason: str  # short text: the destination's reason for the rejection
    response: object = None  # the destination's response for this record (JSON-able)


@dataclass
class SendResult:
    """The outcome of one send; indexes not listed anywhere count as delivered."""

    rejected: list = field(default_factory=list)  # Rejection, dead-lettered
    retry: list = field(default_factory=list)  # indexes to send again after a backoff
    retry_after_seconds: float = None


class TransientError(Exception):
    """Nothing of the batch is known delivered; send all of it again later."""

    def __init__(self, message, retry_after_seconds=None):
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PermanentError(Exception):
    """The destination rejected the whole request for a reason that retrying cannot fix.

    The shipper splits the batch to find the records at fault; a batch of one
    record that raises this is dead-lettered.
    """

    def __init__(self, message, response=None):
        super().__init__(message)
        self.response = response


class Destination:
    """Base class: `__init__` stores settings and does no I/O; `close` may be called twice."""

    def __init__(self, settings):
        self.settings = settings

    def send(self, records):
        raise NotImplementedError

    def close(self):
        pass
