"""The shipper: one thread per output that forwards closed spool files to its destination.

For every device the output routes, the shipper reads closed spool files
oldest first, cuts them into batches and sends each batch through the send
policy, which retries transient failures forever with capped, jittered
backoff. Progress is recorded durably after each confirmed batch, so a crash
re-sends at most the batch that was in flight. Events the destination rejects
for good go to the output's dead-letter file. A batch rejected as a whole is
split in halves until the rejected events are found, so one bad event never
blocks the queue.

On stop, a batch that is still being sent or retried is abandoned (it is sent
again after a restart); a batch the destination already confirmed is recorded.
"""

import logging
import math
import threading
import time

import requests

from podspool import retry
from podspool import spool
from podspool.errors import PodspoolError
from podspool.events import dedup_key
from podspool.failure_log import FailureLog
from podspool.intake import parse_event
from podspool.outputs.base import PermanentError, Record, Rejection, SendResult, TransientError
from podspool.outputs.http import describe_exception
from podspool.stats import OutputStats

log = logging.getLogger(__name__)

DEAD_LETTER_LOG_LINES = 3
DEAD_LETTER_LOG_WINDOW_SECONDS = 60.0

RETRY_ON = (TransientError, requests.RequestException, OSError)


class Stopped(Exception):
    """The stop event was set while a batch was in flight; the batch is abandoned."""


class PartialRetry(TransientError):
    """Some records of a batch need another attempt; the others are settled."""


def routed_devices(output_settings, device_settings_list):
    """Return the DeviceSettings that OUTPUT_SETTINGS routes: by name or tag, all when none is given."""
    selectors = set(output_settings.devices or ())
    if not selectors:
        return list(device_settings_list)
    return [device for device in device_settings_list
            if device.name in selectors or selectors.intersection(device.tags or ())]


class Shipper:
    """Forward the closed spool files of the routed devices to one destination."""

    def __init__(self, settings, destination, *, spool_root, state_directory, devices,
                 stop_event=None, stats=None, on_file_done=None, clock=time.time, poll_seconds=1.0):
        self.settings = settings
        self.name = settings.name
        self.destination = destination
        self.spool_root = spool_root
        self.state_directory = state_directory
        self.devices = {device.name: device for device in routed_devices(settings, devices)}
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.stats = stats if stats is not None else OutputStats()
        self.on_file_done = on_file_done
        self.clock = clock
        self._dead_letter_window_start = float("-inf")
        self._dead_letter_lines = 0
        self._dead_letter_suppressed = 0
        self.poll_seconds = poll_seconds
        if hasattr(destination, "stop_event"):
            # Destinations that wait (Splunk's ack polling) stop waiting on our stop.
            destination.stop_event = self.stop_event
        self.failures = FailureLog(self.name, clock)
        self._progress = None
        self._thread = None
        self._closed = False
        self._retained = set()
        self._unexpected_logged = False

    @property
    def progress(self):
        """The durable OutputProgress of this output, opened on first use."""
        if self._progress is None:
            self._progress = spool.OutputProgress(self.state_directory, self.name)
        return self._progress

    def _log_extra(self, **fields):
        return {"output": self.name, **fields}

    # Thread lifecycle

    def start(self):
        self._thread = threading.Thread(target=self.run, name=f"output-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout=None):
        """Set the stop event and wait up to TIMEOUT seconds; return True when the thread ended."""
        self.stop_event.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def run(self):
        log.info("output=%s started (%s, devices: %s)", self.name, self.settings.type,
                 ", ".join(self.devices) or "none", extra=self._log_extra(event="started"))
        last_error = None
        try:
            while not self.stop_event.is_set():
                try:
                    worked = self.run_once()
                    last_error = None
                except Exception as exc:
                    self._log_iteration_error(exc, repeated=type(exc) is last_error)
                    last_error = type(exc)
                    worked = False
                if not worked:
                    self.stop_event.wait(self.poll_seconds)
        finally:
            self.close()
            log.info("output=%s stopped", self.name, extra=self._log_extra(event="stopped"))

    def _log_iteration_error(self, exc, repeated):
        """Log an error that ended an iteration; a repeat of the same class in a row goes to DEBUG."""
        if repeated:
            log.debug("output=%s iteration failed again: %s", self.name, type(exc).__name__,
                      extra=self._log_extra())
        elif isinstance(exc, PodspoolError):
            # A spool or state write failed (a full disk, for example); the file is shipped again later.
            log.error("output=%s iteration failed: %s", self.name, exc, extra=self._log_extra(error=str(exc)))
        elif isinstance(exc, OSError) and exc.errno is not None:
            # Saving the progress failed (a full or read-only state directory); the batch is
            # confirmed again after the next send, so at most that batch repeats.
            log.error("output=%s saving the progress failed: %s; retrying", self.name,
                      exc.strerror or type(exc).__name__, extra=self._log_extra(error=exc.strerror))
        else:
            log.exception("output=%s iteration failed unexpectedly", self.name, extra=self._log_extra())

    def close(self):
        if self._closed:
            return
        self._closed = True
        self.destination.close()

    # One iteration

    def run_once(self, now=None):
        """Ship the oldest pending closed file; return True when a file was shipped."""
        pending = self.scan(now)
        if not pending or self.stop_event.is_set():
            return False
        try:
            self.ship_file(pending[0])
        except Stopped:
            return False
        self.scan(now=None)
        return True

    def scan(self, now=None):
        """Return the routed closed files not yet delivered and update the backlog stats.

        The first file is the next to ship: of each device's oldest pending
        file, the one closed first. Files this output already delivered are
        passed to `on_file_done` once per process, so a removal that a crash
        interrupted is completed.
        """
        now = self.clock() if now is None else now
        pending = []
        heads = []
        present = set()
        for device in self.devices:
            device_pending = []
            for closed in spool.list_closed(self.spool_root, device):
                present.add(closed.path)
                if not self.progress.is_done(device, closed.name):
                    device_pending.append(closed)
                elif closed.path not in self._retained:
                    self._retained.add(closed.path)
                    self._file_done(closed)
            if device_pending:
                heads.append(device_pending[0])
            pending.extend(device_pending)
        self._retained &= present
        if heads:
            first = min(heads, key=lambda closed: closed.closed_at)
            pending.remove(first)
            pending.insert(0, first)
        self.stats.backlog_files = len(pending)
        self.stats.backlog_bytes = sum(closed.size for closed in pending)
        oldest = min((closed.closed_at for closed in pending), default=None)
        self.stats.lag_seconds = max(now - oldest, 0.0) if oldest is not None else 0.0
        return pending

    def ship_file(self, closed):
        """Deliver CLOSED from its recorded offset to its end, recording progress per batch."""
        device = closed.device
        log_type = self.devices[device].type
        offset = self.progress.offset(device, closed.name)
        count = 0
        while True:
            if self.stop_event.is_set():
                raise Stopped()
            lines = spool.read_lines(closed, offset, max_lines=self.settings.batch_max_events,
                                     max_bytes=self.settings.batch_max_bytes)
            if not lines:
                break
            self.deliver(self.build_records(device, log_type, lines))
            offset = lines[-1][1]
            self.progress.advance(device, closed.name, offset)
            count += len(lines)
        self.progress.mark_done(device, closed.name)
        self._retained.add(closed.path)
        log.info("output=%s delivered %s/%s (%d events)", self.name, device, closed.name, count,
                 extra=self._log_extra(device=device, file=closed.name, events=count))
        self._file_done(closed)

    def _file_done(self, closed):
        if self.on_file_done is not None:
            self.on_file_done(closed.device, closed)

    def build_records(self, device, log_type, lines):
        """Return Records for LINES; a line that is not a JSON object is dead-lettered here."""
        records = []
        for line, _ in lines:
            # Only the key fields are decoded here (a third of the cost of the whole
            # event); Record.event decodes the rest when an output needs it.
            keys, _, _ = parse_event(line, math.inf, keys_only=True)
            if keys is None:
                self.dead_letter_events(device, [({"line": line.decode("utf-8", "replace")},
                                                  "spool line is not a JSON object", None)])
                continue
            records.append(Record(device=device, log_type=log_type, line=line, key=dedup_key(keys, line)))
        return records

    # Delivery

    def deliver(self, records):
        """Deliver or dead-letter every record; raise Stopped when the stop event ends the attempt."""
        pending = [records] if records else []
        while pending:
            if self.stop_event.is_set():
                raise Stopped()
            batch = pending.pop()
            try:
                self.send_with_retry(batch)
            except PermanentError as exc:
                if len(batch) == 1:
                    self.dead_letter(batch, [Rejection(0, str(exc), exc.response)])
                    continue
                # Split in halves; the first half is sent first, so order is kept.
                middle = len(batch) // 2
                pending.append(batch[middle:])
                pending.append(batch[:middle])

    def send_with_retry(self, batch):
        """Send BATCH through the send policy until every record is settled.

        Raises PermanentError for the destination to split, and Stopped when
        the stop event ends the retries.
        """
        state = {"batch": batch, "attempts": 0}

        def attempt():
            state["attempts"] += 1
            if state["attempts"] > 1 and self.stop_event.is_set():
                raise Stopped()
            result = self.call_destination(state["batch"])
            state["batch"] = self.settle(state["batch"], result)
            if state["batch"]:
                raise PartialRetry(f"{len(state['batch'])} events of the batch need another attempt",
                                   retry_after_seconds=result.retry_after_seconds)

        policy = retry.send_policy(self.stop_event, self.settings, retry_on=RETRY_ON,
                                   before_sleep=self._before_sleep)
        try:
            policy(attempt)
        except RETRY_ON as exc:
            raise Stopped() from exc
        self.stats.failing_since = None
        self.failures.reset()
        self._unexpected_logged = False

    def call_destination(self, batch):
        """Call the destination; turn an unexpected exception (a bug) into a TransientError."""
        try:
            result = self.destination.send(batch)
        except (PermanentError,) + RETRY_ON:
            raise
        except Exception as exc:
            if not self._unexpected_logged:
                self._unexpected_logged = True
                log.exception("output=%s destination raised an unexpected error; retrying",
                              self.name, extra=self._log_extra())
            raise TransientError(f"unexpected {type(exc).__name__} in the destination") from exc
        return result if result is not None else SendResult()

    def settle(self, batch, result):
        """Count delivered records and dead-letter rejected ones; return the records to send again."""
        self.stats.batches_sent += 1
        rejected = [rejection for rejection in result.rejected if 0 <= rejection.index < len(batch)]
        rejected_indexes = {rejection.index for rejection in rejected}
        retry_indexes = sorted({index for index in result.retry
                                if 0 <= index < len(batch) and index not in rejected_indexes})
        self.dead_letter(batch, rejected)
        self.stats.events_delivered += len(batch) - len(rejected) - len(retry_indexes)
        return [batch[index] for index in retry_indexes]

    def _before_sleep(self, retry_state):
        exc = retry_state.outcome.exception()
        if self.stats.failing_since is None:
            self.stats.failing_since = self.clock()
        self.stats.last_error = str(exc) if isinstance(exc, TransientError) else describe_exception(exc)
        self.failures.failed(exc, retry_state.attempt_number, retry_state.next_action.sleep)
        self.scan()

    def dead_letter(self, batch, rejections):
        """Append the rejected records to the output's dead-letter file."""
        self.dead_letter_events(batch[0].device if batch else "", [
            (batch[rejection.index].event, rejection.reason, rejection.response) for rejection in rejections])

    def dead_letter_events(self, device, entries):
        """Append (event, reason, response) ENTRIES of DEVICE to the dead-letter file; log one line."""
        if not entries:
            return
        for event, reason, response in entries:
            spool.dead_letter_output(self.spool_root, device, self.name, event, reason, response,
                                     now=self.clock())
        self.stats.events_rejected += len(entries)
        reason = entries[0][1]
        # A batch split into single events would otherwise log one line per event: log the
        # first few of each minute, then one line with the count of those not logged.
        now = self.clock()
        if now - self._dead_letter_window_start >= DEAD_LETTER_LOG_WINDOW_SECONDS:
            self._dead_letter_window_start, self._dead_letter_lines = now, 0
        self._dead_letter_lines += 1
        if self._dead_letter_lines > DEAD_LETTER_LOG_LINES:
            self._dead_letter_suppressed += len(entries)
            return
        suppressed, self._dead_letter_suppressed = self._dead_letter_suppressed, 0
        log.warning("output=%s dead-lettered %d event(s) of device %s: %s%s", self.name, len(entries),
                    device, reason, f" ({suppressed} more earlier, not logged)" if suppressed else "",
                    extra=self._log_extra(event="dead_lettered", device=device, count=len(entries),
                                          reason=reason, suppressed=suppressed))
