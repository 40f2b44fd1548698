"""The `kafka` output: one Kafka message per event, produced with confluent-kafka (librdkafka).

The message key is the event's dedup key as UTF-8 text (`<guid>|<ts>`,
`<id>|<ts>` or `sha256:<hex>`), so every copy of an event lands in the same
partition and a consumer can drop repeats by key. The value is the spool line.

The producer uses `acks=all` and idempotence. A batch counts as delivered only
after every message's delivery report succeeded: the batch is produced, then
flushed for timeout_seconds (plus a margin), and any message still waiting is
purged and sent again by the shipper. Nothing is retried inside librdkafka
beyond `message.timeout.ms`, which defaults to timeout_seconds.
"""

import logging
import re
import string
import time
from dataclasses import dataclass, field
from functools import partial

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException

from podspool import convert
from podspool.errors import ConfigError
from podspool.outputs.base import Destination, Rejection, SendResult, TransientError

log = logging.getLogger(__name__)
# librdkafka's own log lines, kept apart so they can be silenced on their own.
librdkafka_log = logging.getLogger(__name__ + ".librdkafka")

COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
# zstd needs Kafka 2.1 or later on the broker; set `compression: lz4` for older brokers.
DEFAULT_COMPRESSION = "zstd"
DEFAULT_TOPIC = "proofpoint-pod-{type}"
TOPIC_PLACEHOLDERS = ("type", "device")
KNOWN_OPTIONS = {"bootstrap_servers", "topic", "compression", "settings"}

# Kafka topic names: at most 249 of these characters.
_TOPIC_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOPIC_CHARS = 249

# Extra time the flush waits beyond the message timeout, so librdkafka's own
# timeout reports arrive before podspool purges what is left.
FLUSH_MARGIN_SECONDS = 5.0
# A repeated client error with the same code is logged once per this interval, with a count.
ERROR_LOG_INTERVAL_SECONDS = 60.0

# Errors in a delivery report that sending again cannot fix: the event goes to dead-letter.
REJECTED_ERRORS = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_RECORD,
    KafkaError.RECORD_LIST_TOO_LARGE,
}
# librdkafka keys whose values are credentials; they are masked in any text podspool shows.
_SECRET_KEY = re.compile(r"password|secret|\.key|key\.pem|token|jaas", re.IGNORECASE)


@dataclass(frozen=True)
class KafkaOptions:
    bootstrap_servers: str
    topic: str
    compression: str
    settings: dict = field(repr=False)


def validate_options(settings, *, file=None, path=None):
    """Return the KafkaOptions of SETTINGS; raise ConfigError naming the bad key, never a value in `settings`."""
    raw = dict(settings.options or {})
    prefix = f"{path}." if path else ""

    unknown = sorted(set(raw) - KNOWN_OPTIONS)
    if unknown:
        raise ConfigError("unknown kafka option", file=file, key=prefix + unknown[0],
                          fix="use one of " + ", ".join(sorted(KNOWN_OPTIONS)))
    if raw.get("bootstrap_servers") is None:
        raise ConfigError("missing required key", file=file, key=prefix + "bootstrap_servers",
                          fix="add bootstrap_servers: host:9092 (a string or a list)")
    try:
        servers = _to_servers(raw["bootstrap_servers"])
    except ValueError as exc:
        raise ConfigError(f"invalid value: {exc}", file=file, key=prefix + "bootstrap_servers",
                          value=raw["bootstrap_servers"]) from None

    topic = raw.get("topic") or DEFAULT_TOPIC
    try:
        _check_topic_template(topic)
        compression = convert.to_choice(COMPRESSIONS)(raw.get("compression") or DEFAULT_COMPRESSION)
    except ValueError as exc:
        key = "compression" if "expected one of" in str(exc) else "topic"
        raise ConfigError(f"invalid value: {exc}", file=file, key=prefix + key, value=raw.get(key)) from None

    client_settings = raw.get("settings") or {}
    if not isinstance(client_settings, dict):
        raise ConfigError("expected a mapping of librdkafka properties", file=file, key=prefix + "settings")
    for key, value in client_settings.items():
        if not isinstance(key, str) or isinstance(value, (dict, list)) or value is None:
            raise ConfigError("expected a librdkafka property name and a string, number or boolean",
                              file=file, key=f"{prefix}settings.{key}")
    return KafkaOptions(servers, topic, compression, dict(client_settings))


def _to_servers(value):
    if isinstance(value, (list, tuple)):
        value = ",".join(convert.to_str_list(list(value)))
    return convert.to_str(value)


def _check_topic_template(template):
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = names - set(TOPIC_PLACEHOLDERS)
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}}; use {{type}} and {{device}}")
    if _TOPIC_ILLEGAL.search(template.replace("{type}", "").replace("{device}", "")):
        raise ValueError("a Kafka topic name may contain only letters, digits, '.', '_' and '-'")


def topic_for(template, record):
    """Return the topic of RECORD; characters Kafka does not allow in a device name become '_'."""
    device = _TOPIC_ILLEGAL.sub("_", record.device)
    return template.format(type=record.log_type, device=device)[:MAX_TOPIC_CHARS]


def redact(text, client_settings):
    """Replace the value of every credential-like property of CLIENT_SETTINGS found in TEXT."""
    for key, value in client_settings.items():
        if _SECRET_KEY.search(key) and isinstance(value, str) and value:
            text = text.replace(value, "***")
    return text


class KafkaDestination(Destination):
    """Produce batches of records to Kafka and confirm each from its delivery report."""

    def __init__(self, settings):
        super().__init__(settings)
        self.name = settings.name
        self.options = validate_options(settings)
        self.producer = None
        self._error_log = {}  # librdkafka error code -> (monotonic time last logged, repeats since)

    def client_config(self):
        """Build the librdkafka configuration; `settings` overrides every default but the callbacks."""
        config = {
            "bootstrap.servers": self.options.bootstrap_servers,
            "client.id": f"podspool-{self.name}",
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.options.compression,
            "message.timeout.ms": int(self.settings.timeout_seconds * 1000),
        }
        config.update(self.options.settings)
        config["logger"] = logging.LoggerAdapter(librdkafka_log, {"output": self.name})
        config["error_cb"] = self._on_error
        return config

    def send(self, records):
        """Produce RECORDS and wait for their delivery reports.

        Returns a SendResult with rejected (too large, invalid) and retry
        indexes; raises TransientError when no record was delivered.
        """
        producer = self._ensure_producer()
        reports = [None] * len(records)
        for index, record in enumerate(records):
            if not self._produce(producer, record, reports, index):
                break  # the local queue is full; the rest of the batch counts as not delivered
        self._wait_for_reports(producer)
        return self._result(reports)

    def _ensure_producer(self):
        if self.producer is None:
            try:
                self.producer = confluent_kafka.Producer(self.client_config())
            except (KafkaException, ValueError, TypeError) as exc:
                raise ConfigError(
                    "invalid Kafka client settings: " + redact(str(exc), self.options.settings),
                    key=f"outputs.{self.name}.settings",
                ) from None
        return self.producer

    def _produce(self, producer, record, reports, index):
        """Queue one record; return False when the local queue is full."""
        try:
            producer.produce(
                topic_for(self.options.topic, record),
                key=record.key.encode("utf-8"),
                value=record.line,
                on_delivery=partial(_store_report, reports, index),
            )
        except BufferError:
            return False
        except KafkaException as exc:
            reports[index] = exc.args[0]
        return True

    def _wait_for_reports(self, producer):
        """Serve delivery reports until all arrive or the flush times out; purge what is left.

        confluent-kafka raises a librdkafka fatal error (an idempotent producer
        ID the broker has lost, for one) from flush, sometimes wrapped in a
        SystemError because the next report callback runs with it pending. The
        producer is then unusable: it is destroyed and the batch sent again by
        a new one.
        """
        timeout = self.settings.timeout_seconds + FLUSH_MARGIN_SECONDS
        try:
            if producer.flush(timeout) > 0:
                # The reports of purged messages arrive as _PURGE_QUEUE or _PURGE_INFLIGHT errors.
                producer.purge(in_queue=True, in_flight=True)
                producer.flush(0)
        except (KafkaException, SystemError) as exc:
            name = _error_name(exc)
            log.error("Kafka producer failed with fatal error %s; a new producer will send the batch again",
                      name, extra={"output": self.name, "event": "delivery_failed", "error": name})
            self.close()
            raise TransientError(f"Kafka producer failed with fatal error {name}") from None

    def _result(self, reports):
        rejected, retry, delivered = [], [], 0
        first_error = None
        for index, error in enumerate(reports):
            if error is True:
                delivered += 1
            elif isinstance(error, KafkaError) and error.code() in REJECTED_ERRORS:
                reason = redact(error.str(), self.options.settings)
                rejected.append(Rejection(index=index, reason=reason, response={"error": error.name()}))
            else:
                retry.append(index)
                first_error = first_error or error
        if retry and not delivered and not rejected:
            cause = first_error.name() if isinstance(first_error, KafkaError) else "no delivery report"
            raise TransientError(f"Kafka delivered none of {len(reports)} messages: {cause}")
        return SendResult(rejected=rejected, retry=retry)

    def _on_error(self, error):
        """Log a client-level error from librdkafka: each code once per interval, with a repeat count."""
        now = time.monotonic()
        last_logged, repeats = self._error_log.get(error.code(), (None, 0))
        if last_logged is not None and now - last_logged < ERROR_LOG_INTERVAL_SECONDS:
            self._error_log[error.code()] = (last_logged, repeats + 1)
            return
        log.warning("Kafka client error %s: %s (%d repeats not logged)", error.name(),
                    redact(error.str(), self.options.settings), repeats,
                    extra={"output": self.name, "error": error.name()})
        self._error_log[error.code()] = (now, 0)

    def close(self):
        """Drop queued messages and destroy the producer; calling it again does nothing."""
        if self.producer is None:
            return
        producer, self.producer = self.producer, None
        try:
            producer.purge(in_queue=True, in_flight=True)
            producer.flush(0)
        except (KafkaException, SystemError):
            pass  # a producer in a fatal state raises its error again; it is destroyed anyway
        producer.close()


def _error_name(exc):
    """Return the librdkafka error name carried by EXC or its cause."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        if isinstance(candidate, KafkaException) and isinstance(candidate.args[0], KafkaError):
            return candidate.args[0].name()
    return type(exc).__name__


def _store_report(reports, index, error, message):
    """Record one delivery report: True when delivered, else the KafkaError."""
    reports[index] = True if error is None else error
