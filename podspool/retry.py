"""The two retry policies: device reconnects and output sends, both built from settings here.

Both wait with capped, jittered exponential backoff, both sleep on the
component's stop event so that a stop cuts any wait short, and both retry
forever until that event is set: a collector that gives up loses data.

An exception may carry `retry_after_seconds` (a float, or None). When it does,
that delay replaces the backoff for the next attempt: outputs use it for an
HTTP Retry-After, devices for handshakes that waiting cannot fix soon
(400, 401, 404), which retry at the maximum delay.
"""

import tenacity
from tenacity import nap, stop, wait

# A Retry-After longer than this is treated as this, so a bad header cannot park an output for days.
MAX_RETRY_AFTER_SECONDS = 3600.0


class wait_retry_after(wait.wait_base):
    """Wait the exception's `retry_after_seconds` when it gives one, else defer to BACKOFF."""

    def __init__(self, backoff):
        self.backoff = backoff

    def __call__(self, retry_state):
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        delay = getattr(exc, "retry_after_seconds", None)
        if delay is not None:
            return min(max(float(delay), 0.0), MAX_RETRY_AFTER_SECONDS)
        return self.backoff(retry_state)


def build_policy(stop_event, *, initial_seconds, max_seconds, retry_on, before_sleep):
    """Return a Retrying that retries RETRY_ON exceptions until STOP_EVENT is set.

    Exceptions outside RETRY_ON propagate at once: configuration and
    programming errors are not fixed by waiting.
    """
    backoff = wait.wait_random_exponential(multiplier=initial_seconds, max=max_seconds)
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=wait_retry_after(backoff),
        stop=stop.stop_when_event_set(stop_event),
        sleep=nap.sleep_using_event(stop_event),
        before_sleep=before_sleep,
        reraise=True,
    )


def reconnect_policy(stop_event, settings, *, retry_on, before_sleep):
    """Build the reconnect policy of one device from its DeviceSettings."""
    return build_policy(
        stop_event,
        initial_seconds=settings.reconnect_initial_seconds,
        max_seconds=settings.reconnect_max_seconds,
        retry_on=retry_on,
        before_sleep=before_sleep,
    )


def send_policy(stop_event, settings, *, retry_on, before_sleep):
    """Build the send policy of one output from its OutputSettings."""
    return build_policy(
        stop_event,
        initial_seconds=settings.retry_initial_seconds,
        max_seconds=settings.retry_max_seconds,
        retry_on=retry_on,
        before_sleep=before_sleep,
    )
