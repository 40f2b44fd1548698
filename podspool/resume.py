"""Decide how a device resumes: let the server resume the live stream, or replay a range first.

The PoD service keeps a dropped live session's position for about an hour,
so a device that was connected less than `resume_window_seconds` ago and
stopped cleanly reconnects without `sinceTime`. Otherwise it replays from its
checkpoint rounded down to the hour, because the service rounds `sinceTime`
and `toTime` to whole hours and reaches back at most 30 days.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

from podspool.events import parse_ts

HOUR = timedelta(hours=1)
MAX_REPLAY_AGE = timedelta(days=30)


@dataclass(frozen=True)
class ReplayPlan:
    """A replay range; `gap` is the (from, to) range older than the service keeps, or None."""

    since: datetime
    until: datetime
    gap: Optional[tuple] = None


def floor_hour(moment):
    """Return MOMENT (aware) rounded down to the whole UTC hour."""
    moment = moment.astimezone(timezone.utc)
    return moment.replace(minute=0, second=0, microsecond=0)


def ceil_hour(moment):
    """Return MOMENT (aware) rounded up to the whole UTC hour; a whole hour stays as it is."""
    floor = floor_hour(moment)
    return floor if floor == moment else floor + HOUR


def from_epoch(seconds):
    """Return epoch SECONDS as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def server_can_resume(now, last_connected, clean_stop, window_seconds):
    """Return True when the server still keeps the live position: a clean stop less than the window ago."""
    if not clean_stop or last_connected is None:
        return False
    return now - last_connected < window_seconds


def plan_replay(now, checkpoint, since_setting):
    """Return the ReplayPlan for a device at epoch NOW, or None when there is nothing to replay.

    CHECKPOINT is an aware datetime or None; SINCE_SETTING is the device's
    `since` text, used only when there is no checkpoint yet.
    """
    start = checkpoint
    if start is None and since_setting:
        start = parse_ts(since_setting)
    if start is None:
        return None
    now_moment = from_epoch(now)
    since = floor_hour(start)
    until = ceil_hour(now_moment)
    earliest = ceil_hour(now_moment - MAX_REPLAY_AGE)
    gap = None
    if since < earliest:
        gap = (start.astimezone(timezone.utc), earliest)
        since = earliest
    if since >= until:
        return None
    return ReplayPlan(since=since, until=until, gap=gap)
