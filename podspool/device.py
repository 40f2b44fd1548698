"""One PoD device: a thread that keeps one log stream session open and spools what it receives.

`run()` calls `run_once()` until the stop event is set. Each step does one
thing: open the state and the spool, write events a full spool rejected
earlier, open a session (waiting out the reconnect backoff after a failure),
or read for at most podspool.session.READ_SLICE_SECONDS and spool the frames that arrived. A
stop takes effect within about a second. Closing then spools the frames the
server sent before its own close frame, makes the spool durable and saves
the state with the clean-stop flag.
"""

import logging
import threading
import time

import websocket

from podspool import session as sessions
from podspool.intake import Intake
from podspool.reconnect import Backoff
from podspool.resume import from_epoch, plan_replay, server_can_resume
from podspool.session import (
    HandshakeError,
    SessionClosed,
    SessionError,
    build_url,
    format_api_time,
    open_session,
    parse_close_frame,
)
from podspool.sink import DeviceSink
from podspool.stream import NORMAL_CLOSURE, Session, as_session_error, drain_for_close, keep_alive, read_frames

log = logging.getLogger(__name__)

# A session that stayed open this long counts as healthy and resets the backoff.
HEALTHY_SESSION_SECONDS = 60.0
# The last connected time is saved at least this often while a live session is open.
STATE_SAVE_SECONDS = 2.0
# Keys and the checkpoint are committed at most this often, at a durable point of the spool.
COMMIT_MIN_SECONDS = 1.0
ABNORMAL_CLOSURE = 1006


class DeviceConnection:
    """Keep one device's PoD session and spool its events; see the module docstring."""

    def __init__(self, settings, writer, *, state_directory, stop_event, stats, pipeline=None, clock=time.time):
        self.settings = settings
        self.writer = writer
        self.stop_event = stop_event
        self.stats = stats
        self.pipeline = pipeline
        self.clock = clock
        self.sink = DeviceSink(settings, writer, state_directory, stats)
        self.backoff = Backoff(stop_event, settings, stats)
        self.intake = None
        self.session = None
        self.replay_pending = False
        self._gap_logged = False
        self._live_seen = None  # epoch seconds when a live session was last seen open
        self._opened = False
        self._closed = False
        self._running = False
        self._run_thread = None
        self._close_lock = threading.Lock()
        self._last_save = self._last_commit = time.monotonic()
        self._state_errors = 0
        self._thread = None
        self._extra = {"device": settings.name, "cluster": settings.cluster, "type": settings.type}

    def _fields(self, event, **fields):
        return dict(self._extra, event=event, **fields)

    def start(self):
        """Run the device in a new daemon thread named after it; return self."""
        self._thread = threading.Thread(target=self.run, name=f"device-{self.settings.name}", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout=None):
        """Wait for the thread of start(); return True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self):
        """Call run_once until the stop event is set, then close; unexpected errors are logged and retried."""
        self._running = True
        self._run_thread = threading.current_thread()
        log.info("device %s: started (cluster %s, type %s)", self.settings.name, self.settings.cluster,
                 self.settings.type, extra=self._fields("started"))
        if sessions.is_cleartext_remote(self.settings.endpoint):
            log.warning("device %s: endpoint %s uses ws:// without TLS to a host that is not loopback; "
                        "the token is sent unencrypted, use wss://", self.settings.name,
                        sessions.endpoint_host(self.settings.endpoint), extra=self._extra)
        failures = 0
        try:
            while not self.stop_event.is_set():
                try:
                    self.run_once()
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - the device thread must outlive a bug
                    failures += 1
                    delay = min(self.settings.reconnect_max_seconds, 2.0 ** min(failures, 10))
                    self.stats.last_error = f"unexpected {type(exc).__name__}"
                    log.exception("device %s: unexpected error, retrying in %.0f s", self.settings.name, delay,
                                  extra=self._fields("error", error=type(exc).__name__))
                    self._abandon_session()
                    self.stop_event.wait(delay)
        finally:
            self._running = False
            self.close()
            log.info("device %s: stopped", self.settings.name, extra=self._fields("stopped"))

    def run_once(self, now=None):
        """Do one step: open, write held events, connect, or read one slice. NOW is epoch seconds."""
        now = self.clock() if now is None else now
        if not self._opened:
            self._open(now)
        elif self.sink.in_hand:
            self._retry_in_hand(now)
        elif self.session is None:
            self._connect(now)
        else:
            self._receive(now)

    # -- start-up ---------------------------------------------------------

    def _open(self, now):
        if self.intake is None:
            self.intake = Intake(self.settings, self.pipeline)
        state = self.sink.open(now)
        resumable = server_can_resume(now, state.last_connected, state.clean_stop,
                                      self.settings.resume_window_seconds)
        self.replay_pending = not resumable
        if state.last_connected is not None:
            self._live_seen = state.last_connected
        if state.exists and not state.clean_stop:
            log.info("device %s: the previous run did not stop cleanly; replaying from the checkpoint",
                     self.settings.name, extra=self._extra)
        # From here on a crash must not look like a clean stop.
        self.sink.commit(now, durable=self.writer.sync(), clean_stop=False)
        self._opened = True

    # -- connecting -------------------------------------------------------

    def _connect(self, now):
        window = self.settings.resume_window_seconds
        if not self.replay_pending and self._live_seen is not None and now - self._live_seen >= window:
            self.replay_pending = True
        plan = self._replay_plan(now) if self.replay_pending else None
        if plan is None:
            self.replay_pending = False
            url = build_url(self.settings.endpoint, self.settings.cluster, self.settings.type)
        else:
            url = build_url(self.settings.endpoint, self.settings.cluster, self.settings.type,
                            since=plan.since, until=plan.until)
        try:
            ws = open_session(self.settings, url)
        except SessionError as exc:
            self._connect_failed(exc, now)
            return
        self._session_opened(ws, plan, now)

    def _replay_plan(self, now):
        checkpoint = self.sink.checkpoint_micros
        checkpoint_moment = None
        if checkpoint is not None:
            checkpoint_moment = from_epoch(checkpoint / 1_000_000)
        plan = plan_replay(now, checkpoint_moment, self.settings.since if checkpoint is None else None)
        if plan is not None and plan.gap is not None and not self._gap_logged:
            self._gap_logged = True
            self.stats.gaps += 1
            start, end = (format_api_time(moment) for moment in plan.gap)
            log.error("device %s: events from %s to %s cannot be replayed: the service keeps 30 days",
                      self.settings.name, start, end, extra=self._fields("gap_detected", **{"from": start, "to": end}))
        return plan

    def _connect_failed(self, exc, now):
        self.stats.last_error = str(exc)
        if isinstance(exc, HandshakeError):
            self.stats.handshake_failures += 1
            self.stats.last_handshake_status = exc.status_code
            if self.stats.failing_since is None:
                self.stats.failing_since = now
            level = logging.ERROR if exc.configuration_problem else logging.WARNING
            log.log(level, "device %s: handshake failed: %s", self.settings.name, exc,
                    extra=self._fields("handshake_failed", status_code=exc.status_code))
        else:
            log.warning("device %s: connecting failed: %s", self.settings.name, exc,
                        extra=self._fields("handshake_failed", error=str(exc)))
        self.backoff.wait_after(exc)

    def _session_opened(self, ws, plan, now):
        started = time.monotonic()
        self.session = Session(ws=ws, replay=plan is not None, opened=started, last_ping=started,
                               last_frame=started)
        self.stats.connected = True
        self.stats.failing_since = None
        self.stats.last_handshake_status = None
        log.info("device %s: connected to %s", self.settings.name, sessions.endpoint_host(self.settings.endpoint),
                 extra=self._fields("connected", replay=plan is not None))
        if plan is None:
            self._live_seen = now
            return
        since, until = format_api_time(plan.since), format_api_time(plan.until)
        log.info("device %s: replaying events from %s to %s", self.settings.name, since, until,
                 extra=self._fields("replay_started", since=since, until=until))

    # -- receiving --------------------------------------------------------

    def _receive(self, now):
        session = self.session
        close_data = None
        try:
            keep_alive(session, self.settings.ping_interval_seconds, self.settings.ping_timeout_seconds)
            frames, close_data = read_frames(session.ws)
        except (SessionError, websocket.WebSocketException, OSError) as exc:
            self._end_session(as_session_error(exc), now)
            return
        if frames:
            self._handle_frames(frames, session, now)
        if close_data is not None:
            self._end_session(SessionClosed(*parse_close_frame(close_data)), now)
            return
        self._housekeeping(now)

    def _handle_frames(self, frames, session, now):
        items = self.intake.process(frames)
        self.stats.events_received += len(frames)
        session.events += len(frames)
        session.last_frame = time.monotonic()
        self.sink.spool(items, now)

    def _housekeeping(self, now):
        """Commit at a durable point, save the last connected time, and end an idle replay."""
        session = self.session
        if session is not None and not session.replay:
            self._live_seen = now
        durable = self.writer.tick()
        mono = time.monotonic()
        if durable and self.sink.has_pending() and mono - self._last_commit >= COMMIT_MIN_SECONDS:
            self._save(now, durable=True)
        elif mono - self._last_save >= STATE_SAVE_SECONDS:
            self._save(now, durable=durable)
        if session is not None and session.replay and not self.sink.in_hand:
            if mono - session.last_frame >= self.settings.replay_idle_seconds:
                self._finish_replay("no event for %g s" % self.settings.replay_idle_seconds, now)

    def _save(self, now, *, durable, clean_stop=False):
        # A state that cannot be saved (a full disk) is safe to retry later: the checkpoint
        # does not advance, and the spool keeps the files whose keys are not saved yet.
        try:
            self.sink.commit(now, durable=durable, clean_stop=clean_stop, last_connected=self._live_seen)
        except OSError as exc:
            self._state_errors += 1
            if self._state_errors == 1 or self._state_errors % 60 == 0:
                log.warning("device %s: saving the state failed (%s), will try again; %d failures so far",
                            self.settings.name, exc.strerror or type(exc).__name__, self._state_errors,
                            extra=self._fields("state_save_failed", error=exc.strerror or type(exc).__name__))
            self._last_save = time.monotonic()
            return
        self._state_errors = 0
        self._last_save = time.monotonic()
        if durable:
            self._last_commit = self._last_save

    def _retry_in_hand(self, now):
        """Write the events a full spool rejected; between tries keep pinging and wait a second.

        The active file still rotates and the keys of what is already spooled
        are still saved. Outputs may remove delivered files only once the
        device has saved past them, so a device that stopped saving while
        paused would keep the cap full for good.
        """
        session = self.session
        if self.sink.flush(now):
            if session is not None:
                session.ws.last_received = session.last_frame = time.monotonic()
            return
        # Rotation goes on too: a paused device's active file must close so outputs can
        # deliver and remove it, or a cap the active file fills would never clear.
        if self.writer.tick() and self.sink.has_pending():
            self._save(now, durable=True)
        if session is not None and time.monotonic() - session.last_ping >= self.settings.ping_interval_seconds:
            try:
                session.ws.ping()
                session.last_ping = time.monotonic()
            except (websocket.WebSocketException, OSError):
                pass  # the read after the pause finds the connection gone
        self.stop_event.wait(1.0)

    # -- ending sessions --------------------------------------------------

    def _finish_replay(self, cause, now):
        log.info("device %s: replay finished (%s); connecting live", self.settings.name, cause, extra=self._extra)
        self._close_session()
        self.replay_pending = False
        # The replay reached the present, so the next live session continues from here.
        self._live_seen = now
        self._gap_logged = False
        self.backoff.reset()

    def _end_session(self, exc, now):
        """Log how the session ended, then wait out the backoff before the next connect."""
        session = self.session
        self._abandon_session()
        self._log_disconnect(exc)
        if session.replay and isinstance(exc, SessionClosed) and exc.close_code == NORMAL_CLOSURE:
            self._finish_replay("the server closed it", now)
            return
        if not session.replay:
            self._live_seen = now
        if session.events or time.monotonic() - session.opened >= HEALTHY_SESSION_SECONDS:
            self.backoff.reset()
        self.backoff.wait_after(exc)

    def _log_disconnect(self, exc):
        if isinstance(exc, SessionClosed):
            level = logging.INFO if exc.close_code == NORMAL_CLOSURE else logging.WARNING
            log.log(level, "device %s: the server closed the session with code %d (%s)", self.settings.name,
                    exc.close_code, exc.reason or "no reason",
                    extra=self._fields("disconnected", close_code=exc.close_code, reason=exc.reason))
            if exc.close_code != NORMAL_CLOSURE:
                self.stats.last_error = str(exc)
            return
        self.stats.last_error = str(exc)
        log.warning("device %s: session lost (code %d): %s", self.settings.name, ABNORMAL_CLOSURE, exc,
                    extra=self._fields("disconnected", close_code=ABNORMAL_CLOSURE, error=str(exc)))

    def _abandon_session(self):
        """Close the socket without a closing handshake."""
        session, self.session = self.session, None
        self.stats.connected = False
        if session is not None:
            session.ws.shutdown()

    def _close_session(self):
        """Send a close frame, spool the frames that arrive before the server's close frame, and close."""
        session = self.session
        if session is None:
            return
        try:
            frames = drain_for_close(session.ws)
        except (websocket.WebSocketException, OSError):
            frames = []
        self._abandon_session()
        if frames:
            self._handle_frames(frames, session, self.clock())

    def close(self):
        """Close the session, make the spool durable and save the state; safe to call twice.

        Called from another thread while run() is active, it only sets the
        stop event: run() closes on its own thread when it returns.
        """
        if self._running and threading.current_thread() is not self._run_thread:
            self.stop_event.set()
            return
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._close_session()
            if self._opened:
                now = self.clock()
                self.sink.flush(now)
                durable = self.writer.sync()
                self._save(now, durable=durable, clean_stop=durable and not self.sink.in_hand)
        finally:
            self.sink.close()
            if self.intake is not None:
                self.intake.close()
            self.stats.connected = False
