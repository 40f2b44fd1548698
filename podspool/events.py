"""Facts about PoD events shared by devices, pipelines and outputs: time stamps and dedup keys."""

import hashlib
from datetime import datetime, timezone


def parse_ts(value):
    """Parse a PoD time stamp into an aware UTC datetime.

    PoD writes `2024-05-22T12:10:03.058340-0700`, `...-07:00` and `...+0000`;
    Python 3.11's fromisoformat reads all three. A value without an offset is
    taken as UTC. Raises ValueError for anything else.
    """
    if not isinstance(value, str):
        raise ValueError(f"time stamp is not a string: {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def event_time(event):
    """Return the event's `ts` as a UTC datetime, or None when it is missing or unreadable."""
    try:
        return parse_ts(event.get("ts"))
    except ValueError:
        return None


def format_rfc3339(moment):
    """Format an aware datetime as RFC 3339 UTC with microseconds: 2024-05-22T19:10:03.058340Z."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def dedup_key(event, raw):
    """Return the key that identifies EVENT across replays and outputs.

    `<guid>|<ts>` for message and audit events, `<id>|<ts>` for maillog events,
    and `sha256:<hex>` of the raw frame bytes for an object with neither.
    """
    ts = event.get("ts")
    guid = event.get("guid")
    if isinstance(guid, str) and guid:
        return f"{guid}|{ts}"
    event_id = event.get("id")
    if isinstance(event_id, str) and event_id:
        return f"{event_id}|{ts}"
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    return "sha256:" + hashlib.sha256(raw).hexdigest()
