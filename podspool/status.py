"""The status file the service rewrites every few seconds, and the `podspool status` command.

The file is `<state_directory>/status.json`. Counters count since the state
directory was created: at start the service reads the previous file and adds
its counters to the new ones.
"""

import json
import os
import sys
import time
from datetime import datetime, timezone

from podspool import health
from podspool.fsutil import read_json, write_json_atomic
from podspool.lock import LOCK_FILE

STATUS_FILE = "status.json"
# The service rewrites the file every second. A file this old means the service is not
# running, even where the lock file cannot tell (a process on another machine).
WRITE_INTERVAL_SECONDS = 1.0
STALE_AFTER_SECONDS = 15.0

DEVICE_COUNTERS = ("events_received", "events_spooled", "duplicates_dropped", "dead_lettered",
                   "events_dropped_by_pipeline", "reconnects", "handshake_failures", "gaps")
OUTPUT_COUNTERS = ("events_delivered", "events_rejected", "batches_sent")
DEVICE_FIELDS = ("connected", "last_event_time", "checkpoint", "events_spooled",
                 "duplicates_dropped", "dead_lettered", "reconnects", "last_error")
OUTPUT_FIELDS = ("backlog_files", "backlog_bytes", "events_delivered", "lag_seconds", "last_error")


def status_path(state_directory):
    return os.path.join(state_directory, STATUS_FILE)


def rfc3339(epoch):
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusBook:
    """Combine live stats with the counters of earlier runs and write the status file."""

    def __init__(self, state_directory):
        self.path = status_path(state_directory)
        previous = read_json(self.path, default={}) or {}
        self.base_devices = {name: {key: entry.get(key, 0) or 0 for key in DEVICE_COUNTERS}
                             for name, entry in previous.get("devices", {}).items()}
        self.base_outputs = {name: {key: entry.get(key, 0) or 0 for key in OUTPUT_COUNTERS}
                             for name, entry in previous.get("outputs", {}).items()}

    def snapshot(self, devices, outputs, now=None):
        """Build the status document from {name: (stats, enabled, disconnected_since)} and {name: stats}."""
        now = time.time() if now is None else now
        document = {"updated": rfc3339(now), "updated_epoch": now, "pid": os.getpid(),
                    "devices": {}, "outputs": {}}
        for name, (stats, enabled, disconnected_since) in devices.items():
            entry = stats.as_dict()
            for key in DEVICE_COUNTERS:
                entry[key] += self.base_devices.get(name, {}).get(key, 0)
            entry["enabled"] = enabled
            entry["disconnected_since"] = disconnected_since
            document["devices"][name] = entry
        for name, stats in outputs.items():
            entry = stats.as_dict()
            for key in OUTPUT_COUNTERS:
                entry[key] += self.base_outputs.get(name, {}).get(key, 0)
            document["outputs"][name] = entry
        return document

    def write(self, document):
        # No fsync: the file is rewritten every few seconds and only describes the present.
        write_json_atomic(self.path, document, fsync=False)


def public_view(document):
    """Return the documented `status --json` shape of a status document."""
    return {
        "devices": {name: {key: entry.get(key) for key in DEVICE_FIELDS}
                    for name, entry in document.get("devices", {}).items()},
        "outputs": {name: {key: entry.get(key) for key in OUTPUT_FIELDS}
                    for name, entry in document.get("outputs", {}).items()},
    }


def render_table(document):
    """Return the human-readable status: one table of devices, one of outputs."""
    lines = [f"updated {document.get('updated')} (pid {document.get('pid')})", ""]
    rows = [("DEVICE", "CONNECTED", "LAST EVENT", "SPOOLED", "DUPLICATES", "DEAD-LETTER", "RECONNECTS", "LAST ERROR")]
    for name, entry in sorted(document.get("devices", {}).items()):
        rows.append((name, "yes" if entry.get("connected") else "no", entry.get("last_event_time") or "-",
                     str(entry.get("events_spooled", 0)), str(entry.get("duplicates_dropped", 0)),
                     str(entry.get("dead_lettered", 0)), str(entry.get("reconnects", 0)),
                     entry.get("last_error") or "-"))
    lines += _columns(rows)
    lines.append("")
    rows = [("OUTPUT", "BACKLOG FILES", "BACKLOG BYTES", "DELIVERED", "LAG", "LAST ERROR")]
    for name, entry in sorted(document.get("outputs", {}).items()):
        lag = entry.get("lag_seconds")
        rows.append((name, str(entry.get("backlog_files", 0)), str(entry.get("backlog_bytes", 0)),
                     str(entry.get("events_delivered", 0)), "-" if lag is None else f"{lag:.0f}s",
                     entry.get("last_error") or "-"))
    lines += _columns(rows)
    return "\n".join(lines)


def _columns(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def service_running(state_directory):
    """Tell whether the podspool process named in the state directory's lock file is alive."""
    try:
        with open(os.path.join(state_directory, LOCK_FILE), "rb") as handle:
            pid = int(handle.read(32).strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"podspool" in handle.read()
    except OSError:
        return False


def valid_document(document):
    """Tell whether DOCUMENT has the shape the service writes."""
    if not isinstance(document, dict) or not isinstance(document.get("updated_epoch"), (int, float)):
        return False
    for section in ("devices", "outputs"):
        entries = document.get(section)
        if not isinstance(entries, dict) or not all(isinstance(entry, dict) for entry in entries.values()):
            return False
    return True


def main(settings, as_json=False, now=None):
    """Print the status of the running service; return 0 when healthy, 1 otherwise."""
    now = time.time() if now is None else now
    path = status_path(settings.state_directory)
    try:
        document = read_json(path)
    except (OSError, ValueError) as exc:
        print(f"the status file {path} cannot be read ({exc.__class__.__name__}); "
              "the service rewrites it every second while it runs", file=sys.stderr)
        return 1
    if document is None:
        print(f"no status file in {settings.state_directory}: the service has not run with this configuration",
              file=sys.stderr)
        return 1
    if not valid_document(document):
        print(f"the status file {path} is damaged; the service rewrites it every second while it runs",
              file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(public_view(document), indent=2, sort_keys=True))
    else:
        print(render_table(document))
    age = now - document.get("updated_epoch", 0)
    if not service_running(settings.state_directory):
        # The devices' and outputs' states describe the last run, not the present.
        found = [f"the service is not running (no podspool process holds {settings.state_directory}); "
                 f"this status is {age:.0f} s old"]
    elif age > STALE_AFTER_SECONDS:
        found = [f"the status file is {age:.0f} s old: the service is not running or is stuck"]
    else:
        found = health.problems(document, now, settings.metrics.unhealthy_after_seconds)
    for problem in found:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if found else 0
