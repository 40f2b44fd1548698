"""Validated settings objects and the table of defaults, with units.

The configuration loader (podspool.config) turns YAML into these frozen
dataclasses; every other module takes them as they are and does no parsing.
Key names carry their unit: durations end in `_seconds`, sizes in `_bytes`.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

DEFAULT_ENDPOINT = "wss://logstream.proofpoint.com:443/v1/stream"
LOG_TYPES = ("message", "maillog", "audit")
FSYNC_POLICIES = ("always", "interval", "never")
COMPRESSIONS = ("none", "gzip", "zstd")

# name -> (default, description). One table, so documentation and tests can walk it.
SPOOL_DEFAULTS = {
    "directory": ("/var/lib/podspool/spool", "root of the per-device spool directories"),
    "rotate_bytes": (64 * 1024 * 1024, "close the active file once it holds this many bytes"),
    "rotate_seconds": (60.0, "close the active file once it is this old, even when idle"),
    "fsync": ("interval", "durability policy: always, interval or never"),
    "fsync_seconds": (1.0, "with fsync: interval, the longest time between two fsync calls"),
    "max_bytes": (10 * 1024**3, "spool size cap; at the cap devices stop reading"),
    "compress": ("none", "compression of closed files: none, gzip or zstd"),
}

DEVICE_PROPERTY_DEFAULTS = {
    "endpoint": (DEFAULT_ENDPOINT, "PoD log stream URL"),
    "type": ("message", "log type: message, maillog or audit"),
    "secure": (False, "the token is ciphertext made by `podspool encrypt-token`"),
    "workers": (1, "threads that process the events of the device's one session"),
    "reuse": (True, "let several workers share the device's one session"),
    "ping_interval_seconds": (30.0, "period of client pings"),
    "ping_timeout_seconds": (25.0, "silence after a ping that replaces the session"),
    "reconnect_initial_seconds": (1.0, "first reconnect delay"),
    "reconnect_max_seconds": (300.0, "cap of the reconnect delay"),
    "resume_window_seconds": (3300.0, "how long the server keeps a dropped session's position"),
    "dedup_window_seconds": (7200.0, "how far back duplicate keys are remembered"),
    "max_event_bytes": (64 * 1024 * 1024, "larger frames go to dead-letter"),
    "since": (None, "ISO 8601 time to replay from on the first start"),
    "replay_idle_seconds": (30.0, "silence that ends a replay the server does not close"),
    "ca_file": (None, "CA bundle for TLS verification"),
    "verify_tls": (True, "verify the server certificate"),
    "proxy": (None, "HTTP proxy URL for the WebSocket connection"),
}

OUTPUT_COMMON_DEFAULTS = {
    "batch_max_events": (500, "events per request at most"),
    "batch_max_bytes": (5 * 1024 * 1024, "bytes per request at most"),
    "timeout_seconds": (30.0, "time limit of one request"),
    "verify_tls": (True, "verify the destination's certificate"),
    "ca_file": (None, "CA bundle for TLS verification"),
    "client_cert": (None, "client certificate file (PEM)"),
    "client_key": (None, "client key file (PEM)"),
    "retry_initial_seconds": (1.0, "first delay after a transient failure"),
    "retry_max_seconds": (60.0, "cap of the delay between two attempts"),
}


@dataclass(frozen=True)
class SpoolSettings:
    directory: str
    rotate_bytes: int
    rotate_seconds: float
    fsync: str
    fsync_seconds: float
    max_bytes: int
    compress: str = "none"


@dataclass(frozen=True)
class DeviceSettings:
    """One PoD device: the product page's fields plus podspool's connection properties."""

    id: int
    name: str
    cluster: str
    token: str = field(repr=False)
    type: str = "message"
    endpoint: str = DEFAULT_ENDPOINT
    description: str = ""
    tags: tuple = ()
    pipelines: tuple = ()
    status: bool = True
    secure: bool = False
    workers: int = 1
    reuse: bool = True
    ping_interval_seconds: float = 30.0
    ping_timeout_seconds: float = 25.0
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 300.0
    resume_window_seconds: float = 3300.0
    dedup_window_seconds: float = 7200.0
    max_event_bytes: int = 64 * 1024 * 1024
    since: Optional[str] = None
    replay_idle_seconds: float = 30.0
    ca_file: Optional[str] = None
    verify_tls: bool = True
    proxy: Optional[str] = field(default=None, repr=False)
    source_file: str = ""


@dataclass(frozen=True)
class OutputSettings:
    """One output: common settings plus the type's own in `options`.

    Credentials in `options` (token, api_key, password) are already resolved.
    """

    name: str
    type: str
    devices: tuple = ()
    batch_max_events: int = 500
    batch_max_bytes: int = 5 * 1024 * 1024
    timeout_seconds: float = 30.0
    verify_tls: bool = True
    ca_file: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    options: Any = field(default_factory=dict, repr=False)
    source_file: str = ""


@dataclass(frozen=True)
class LogSettings:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class MetricsSettings:
    listen: Optional[str] = None
    unhealthy_after_seconds: float = 300.0


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration."""

    spool: SpoolSettings
    state_directory: str
    shared_key_file: str
    secrets_directory: str
    log: LogSettings
    metrics: MetricsSettings
    pipelines: dict
    outputs: tuple
    devices: tuple
    files: tuple = ()
