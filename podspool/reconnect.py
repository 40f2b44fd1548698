"""Drive a device's reconnect policy (podspool.retry) one failure at a time.

tenacity's Retrying normally wraps one call and loops until it succeeds. A
device instead needs the attempt count to survive across sessions, so that a
server that accepts and closes at once meets a growing delay, and to reset
after a healthy session. `Backoff` keeps the tenacity RetryCallState between
failures and runs the policy's retry, wait, stop and before_sleep steps for
each one.
"""

import logging

import websocket
from tenacity import DoSleep, RetryCallState

from podspool.retry import reconnect_policy
from podspool.session import HandshakeError, SessionError

log = logging.getLogger(__name__)

RETRY_ON = (SessionError, OSError, websocket.WebSocketException)


class Backoff:
    """Capped, jittered exponential waits between sessions, cut short by the stop event."""

    def __init__(self, stop_event, settings, stats):
        self.stop_event = stop_event
        self.settings = settings
        self.stats = stats
        self.policy = reconnect_policy(stop_event, settings, retry_on=RETRY_ON, before_sleep=self.before_sleep)
        self.delays = []  # (attempt, delay_seconds) of every scheduled wait, newest last
        self._state = None

    @property
    def attempt(self):
        return self._state.attempt_number if self._state is not None else 0

    def reset(self):
        """Start again from the first, shortest delay."""
        self._state = None

    def wait_after(self, exc):
        """Wait the policy's delay after EXC; return False when the stop event ended the wait.

        Re-raises EXC when the policy does not retry its type.
        """
        if self._state is None:
            self.policy.begin()
            self._state = RetryCallState(self.policy, fn=None, args=(), kwargs={})
        self._state.set_exception((type(exc), exc, exc.__traceback__))
        try:
            action = self.policy.iter(self._state)
        except BaseException:
            if self.stop_event.is_set():
                return False
            raise
        if not isinstance(action, DoSleep):
            return not self.stop_event.is_set()
        self._state.prepare_for_next_attempt()
        self.policy.sleep(action)
        return not self.stop_event.is_set()

    def before_sleep(self, retry_state):
        """Log the next attempt: device, attempt, delay, error class and, for a handshake, the status."""
        exc = retry_state.outcome.exception()
        delay = retry_state.upcoming_sleep
        attempt = retry_state.attempt_number
        self.delays.append((attempt, delay))
        del self.delays[:-100]
        self.stats.reconnects += 1
        extra = {
            "device": self.settings.name,
            "cluster": self.settings.cluster,
            "event": "reconnect_scheduled",
            "attempt": attempt,
            "delay_seconds": round(delay, 3),
            "error": type(exc).__name__,
        }
        if isinstance(exc, HandshakeError):
            extra["status_code"] = exc.status_code
            log.warning("device %s: reconnecting in %.1f s (attempt %d, after HTTP %d)",
                        self.settings.name, delay, attempt, exc.status_code, extra=extra)
            return
        log.warning("device %s: reconnecting in %.1f s (attempt %d, after %s)",
                    self.settings.name, delay, attempt, type(exc).__name__, extra=extra)
