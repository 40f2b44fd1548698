"""Rate-limited logging of an output's delivery failures."""

import logging

from podspool.outputs.base import PermanentError, TransientError
from podspool.outputs.http import describe_exception

# The lines belong to the shipper that logs them, so they keep its logger name.
log = logging.getLogger("podspool.shipper")

# Failures of one kind in a row that are all logged. After these, one line per interval with a count.
LOGGED_FAILURES = 3
FAILURE_LOG_INTERVAL_SECONDS = 60.0


class FailureLog:
    """Log delivery failures: the first few of a kind in a row, then one line per interval with a count.

    A failure of another kind (exception class and status code) starts a new
    run, so a change from "connection refused" to "HTTP 503" is always logged.
    """

    def __init__(self, name, clock):
        self.name = name
        self.clock = clock
        self.reset()

    def reset(self):
        self.in_a_row = 0
        self.suppressed = 0
        self.last_logged = None
        self.kind = None

    def failed(self, exc, attempt, delay):
        kind = (type(exc).__name__, getattr(exc, "status_code", None))
        if kind != self.kind:
            self.kind = kind
            self.in_a_row = 0
            self.last_logged = None
        self.in_a_row += 1
        now = self.clock()
        due = self.last_logged is None or now - self.last_logged >= FAILURE_LOG_INTERVAL_SECONDS
        if self.in_a_row > LOGGED_FAILURES and not due:
            self.suppressed += 1
            return
        text = str(exc) if isinstance(exc, (TransientError, PermanentError)) else describe_exception(exc)
        fields = {
            "output": self.name, "event": "delivery_failed", "attempt": attempt,
            "delay_seconds": round(delay, 3), "error": type(exc).__name__,
            "status_code": getattr(exc, "status_code", None), "suppressed": self.suppressed,
        }
        level = getattr(exc, "log_level", logging.WARNING)
        log.log(level, "output=%s delivery failed (attempt %d, %s): %s; retrying in %.1f s%s",
                self.name, attempt, type(exc).__name__, text, delay,
                f" ({self.suppressed} similar failures not logged)" if self.suppressed else "",
                extra=fields)
        self.suppressed = 0
        self.last_logged = now
