"""Pipelines: ordered processors that modify, enrich or drop events before they are spooled.

A device names pipelines that run in order on each event. A pipeline is a
list of processors, each a one-key mapping from the processor name to its
options:

    pipelines:
      email_enrichment:
        - email_domain: {field: envelope.from, target_field: envelope.from_domain}
        - drop: {if: "filter.modules.spam.scores.overall >= `90`"}

Every processor also takes:

- `if`: a JMESPath expression evaluated on the event. The processor runs when
  the result is truthy in JMESPath's sense: null, false, "", [] and {} are
  false, and every number, 0 included, is true.
- `ignore_missing` (default false): an absent or null field makes the
  processor do nothing instead of failing.
- `on_failure`: `skip` (the default) logs the failure and goes on with the
  next processor, `drop` discards the event, and `dead_letter` stops the
  pipelines and hands the event back for the device's dead-letter file.

Field paths are dotted object keys (`msg.header.subject`). A path that crosses
a list is a failure: `msg.header.from` names the whole list, but nothing can
address a key inside one of its elements.

Everything is parsed once by compile_pipelines: paths become key tuples and
expressions are compiled, so apply() does no per-event parsing. A processor
that fails on an event never raises out of apply().
"""

import logging
import time

import jmespath
import jmespath.exceptions
import maxminddb

from podspool import geoip
from podspool.errors import ConfigError
from podspool.fieldpath import FieldMissing, ProcessorFailure
from podspool.pipeconfig import Pipeline, compile_pipelines, select_pipelines
from podspool.geoip import GeoIPProcessor
from podspool.processor_base import DROP, UNCHANGED

__all__ = ["compile_pipelines", "select_pipelines", "Pipeline", "PipelineRunner", "Outcome"]

log = logging.getLogger(__name__)

KEEP = "keep"
DROPPED = "drop"
DEAD_LETTER = "dead_letter"

# A processor that keeps failing logs once, then once per interval with a count.
FAILURE_LOG_INTERVAL_SECONDS = 60.0

class Outcome:
    """Result of the pipelines for one event.

    `kind` is "keep", "drop" or "dead_letter". `event` is the event as the
    processors left it. `reason` names the processor that dropped the event
    or failed, and why; it is None for "keep". `changed` is False when no
    processor modified the event, so the device may store the frame as it
    arrived.
    """

    __slots__ = ("kind", "event", "reason", "changed")

    def __init__(self, kind, event, reason=None, changed=True):
        self.kind = kind
        self.event = event
        self.reason = reason
        self.changed = changed

    def __repr__(self):
        return f"Outcome(kind={self.kind!r}, reason={self.reason!r}, changed={self.changed!r})"


def _truthy(value):
    """Apply JMESPath truthiness: null, false and empty strings, lists and objects are false."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


class PipelineRunner:
    """Apply a device's pipelines to its events, in the order the device lists them.

    CONTEXT contains `device`, `cluster`, `type` and `tags`, which `add_metadata`
    writes and log lines name. The runner opens each GeoIP database its
    processors use (shared with other runners of the same file) and closes it
    in close(). Raises ConfigError when such a file can no longer be opened.
    """

    def __init__(self, pipelines, context=None, *, clock=time.monotonic):
        self.pipelines = tuple(pipelines)
        self.context = dict(context or {})
        self.device = self.context.get("device")
        self._steps = tuple(proc for pipeline in self.pipelines for proc in pipeline.processors)
        self.active = bool(self._steps)
        self.failures = {}  # processor label -> failures so far
        self._last_report = {}  # processor label -> [clock time of the last log line, failures not logged]
        self._clock = clock
        self.databases = {}
        self._open_databases()

    def _open_databases(self):
        paths = sorted({proc.database_file for proc in self._steps if isinstance(proc, GeoIPProcessor)})
        for path in paths:
            try:
                self.databases[path] = geoip.acquire(path)
            except (OSError, maxminddb.InvalidDatabaseError) as exc:
                self.close()
                raise ConfigError(
                    f"device {self.device}: GeoIP database {path} cannot be opened: {exc}",
                    fix="restore the file, or reload a configuration without that geoip processor",
                ) from None

    def metadata(self):
        """Return a new `add_metadata` object for one event."""
        context = self.context
        return {
            "device": context.get("device"),
            "cluster": context.get("cluster"),
            "type": context.get("type"),
            "tags": list(context.get("tags") or ()),
        }

    def apply(self, event):
        """Run every processor on EVENT in place and return an Outcome; never raises for event data."""
        changed = False
        for proc in self._steps:
            try:
                condition = proc.condition
                if condition is not None and not _truthy(condition.search(event)):
                    continue
                result = proc.apply(event, self)
            except FieldMissing as exc:
                if proc.ignore_missing:
                    continue
                failure = str(exc)
            except ProcessorFailure as exc:
                failure = str(exc)
            except jmespath.exceptions.JMESPathError as exc:
                failure = f"if condition failed: {exc}"
            except Exception as exc:  # noqa: BLE001 - a bug or an odd value must not stop the device
                failure = f"unexpected {type(exc).__name__}: {exc}"
            else:
                if result is DROP:
                    return Outcome(DROPPED, event, f"{proc.label}: dropped by the drop processor", changed)
                if result is not UNCHANGED:
                    changed = True
                continue

            # A failed processor may have created objects on the way, so the event counts as changed.
            changed = True
            self._report_failure(proc, failure)
            if proc.on_failure != "skip":
                return Outcome(proc.on_failure, event, f"{proc.label} failed: {failure}", changed)
        return Outcome(KEEP, event, None, changed)

    def _report_failure(self, proc, failure):
        label = proc.label
        self.failures[label] = self.failures.get(label, 0) + 1
        now = self._clock()
        report = self._last_report.get(label)
        if report is not None and now - report[0] < FAILURE_LOG_INTERVAL_SECONDS:
            report[1] += 1
            return
        suppressed = report[1] if report is not None else 0
        self._last_report[label] = [now, 0]
        extra = {"device": self.device, "processor": label, "suppressed": suppressed}
        if suppressed:
            log.warning(
                "device %s: %s failed (on_failure: %s): %s; %d more failures in the last %.0f s were not logged",
                self.device, label, proc.on_failure, failure, suppressed, now - report[0], extra=extra,
            )
        else:
            log.warning(
                "device %s: %s failed (on_failure: %s): %s",
                self.device, label, proc.on_failure, failure, extra=extra,
            )

    def close(self):
        """Release the GeoIP databases; calling it again does nothing."""
        databases, self.databases = self.databases, {}
        for database in databases.values():
            geoip.release(database)
