"""Counters shared between the threads that update them and the status file and metrics that read them.

Each counter is a plain attribute updated under the GIL by one writer thread;
readers take a snapshot with `as_dict()`. Metrics and `podspool status` are
both built from these, so the two never disagree.
"""

from dataclasses import asdict, dataclass


@dataclass
class DeviceStats:
    connected: bool = False
    last_event_time: str = None  # RFC 3339 UTC of the newest spooled event
    checkpoint: str = None
    events_received: int = 0
    events_spooled: int = 0
    duplicates_dropped: int = 0
    dead_lettered: int = 0
    events_dropped_by_pipeline: int = 0
    reconnects: int = 0
    handshake_failures: int = 0
    last_handshake_status: int = None
    failing_since: float = None  # epoch seconds of the first failure in a row, None when healthy
    paused: bool = False  # the spool is full or unwritable; the device does not read
    gaps: int = 0  # ranges that could not be replayed
    last_error: str = None

    def as_dict(self):
        return asdict(self)


@dataclass
class OutputStats:
    events_delivered: int = 0
    events_rejected: int = 0
    batches_sent: int = 0
    failing_since: float = None
    last_error: str = None
    backlog_files: int = 0
    backlog_bytes: int = 0
    lag_seconds: float = None

    def as_dict(self):
        return asdict(self)
