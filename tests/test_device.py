"""The device thread against the PoD emulator on loopback, plus the session helpers it uses."""

import base64
import hashlib
import json
import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import websocket

from podspool.device import DeviceConnection
from podspool.emulator import Fault
from podspool.session import (
    HandshakeError,
    build_url,
    classify_connect_error,
    connect_options,
    is_cleartext_remote,
    open_session,
    parse_close_frame,
    ssl_options,
)
from podspool.settings import DeviceSettings, SpoolSettings
from podspool.spool import SpoolWriter
from podspool.state import DeviceStateStore
from podspool.stats import DeviceStats
from podspool.stream import as_session_error

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def wait_until(predicate, timeout=20.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


class Harness:
    """One device with its spool writer, stats and stop event, in TMP_PATH."""

    def __init__(self, tmp_path, url, token, clock=time.time, **overrides):
        values = dict(id=1, name="dev", cluster="example_hosted", token=token, type="message",
                      endpoint=url, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.5,
                      ping_interval_seconds=5.0, ping_timeout_seconds=5.0, replay_idle_seconds=3.0)
        values.update(overrides)
        self.settings = DeviceSettings(**values)
        self.spool_root = str(tmp_path / "spool")
        self.state_root = str(tmp_path / "state")
        spool = SpoolSettings(directory=self.spool_root, rotate_bytes=1 << 30, rotate_seconds=3600.0,
                              fsync="interval", fsync_seconds=0.2, max_bytes=1 << 36)
        self.writer = SpoolWriter(spool, self.settings.name)
        self.stop = threading.Event()
        self.stats = DeviceStats()
        self.device = DeviceConnection(self.settings, self.writer, state_directory=self.state_root,
                                       stop_event=self.stop, stats=self.stats, clock=clock)

    def start(self):
        self.device.start()
        return self

    def finish(self, timeout=5.0):
        self.stop.set()
        ended = self.device.join(timeout)
        self.writer.close()
        return ended

    def spooled(self):
        return spool_lines(os.path.join(self.spool_root, self.settings.name))

    def state(self):
        with open(os.path.join(self.state_root, "devices", self.settings.name, "state.json")) as handle:
            return json.load(handle)


def spool_lines(directory):
    lines = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".ndjson") and not name.startswith("."):
            with open(os.path.join(directory, name), "rb") as handle:
                lines.extend(handle.read().splitlines())
    return lines


def sent(emulator):
    return [line.encode("utf-8") for line in emulator.sent_lines("message")]


def records_with(caplog, event):
    return [record for record in caplog.records if getattr(record, "event", None) == event]


# -- session helpers ----------------------------------------------------------

def settings_for(**overrides):
    values = dict(id=1, name="dev", cluster="c1", token="secret-token", type="message")
    values.update(overrides)
    return DeviceSettings(**values)


def test_url_adds_cid_and_type():
    url = build_url("wss://logstream.proofpoint.com:443/v1/stream", "acme_hosted", "maillog")
    assert url == "wss://logstream.proofpoint.com:443/v1/stream?cid=acme_hosted&type=maillog"


def test_url_keeps_existing_query():
    url = build_url("wss://h/v1/stream?x=a%20b", "c&d", "message")
    assert url == "wss://h/v1/stream?x=a%20b&cid=c%26d&type=message"


def test_url_replay_times_in_utc():
    from datetime import datetime, timedelta, timezone
    since = datetime(2025, 1, 10, 3, 0, tzinfo=timezone(timedelta(hours=-7)))
    until = datetime(2025, 1, 10, 12, 0, tzinfo=timezone.utc)
    url = build_url("ws://127.0.0.1:1/v1/stream", "c", "audit", since=since, until=until)
    assert url.endswith("&sinceTime=2025-01-10T10:00:00-0000&toTime=2025-01-10T12:00:00-0000")


@pytest.mark.parametrize("status, retry_after, configuration", [
    (400, 300.0, True), (401, 300.0, True), (404, 300.0, True), (409, None, False), (503, None, False),
])
def test_handshake_status_classification(status, retry_after, configuration):
    error = classify_connect_error(websocket.WebSocketBadStatusException(
        "Handshake status secret-token", status, resp_headers={"x": "secret-token"}), "h:443", 300.0)
    assert isinstance(error, HandshakeError)
    assert error.status_code == status
    assert error.retry_after_seconds == retry_after
    assert error.configuration_problem is configuration
    assert str(status) in str(error)
    assert "secret-token" not in str(error)


def test_connect_errors_named_plainly():
    dns = classify_connect_error(websocket.WebSocketAddressException("x"), "pod.example:443", 300.0)
    assert (dns.kind, str(dns)) == ("dns", "DNS lookup of pod.example:443 failed")
    refused = classify_connect_error(ConnectionRefusedError(111, "refused"), "h:1", 300.0)
    assert refused.kind == "refused"
    tls = classify_connect_error(ssl.SSLCertVerificationError(1, "bad"), "h:1", 300.0)
    assert tls.kind == "tls"
    assert "TLS certificate verification" in str(tls)
    assert classify_connect_error(ValueError("bug"), "h:1", 300.0) is None


def test_connect_options_proxy_and_header():
    options = connect_options(settings_for(proxy="http://user:p%40ss@127.0.0.1:3128"))
    assert options["http_proxy_host"] == "127.0.0.1"
    assert options["http_proxy_port"] == 3128
    assert options["http_proxy_auth"] == ("user", "p@ss")
    assert options["header"] == ["Authorization: Bearer secret-token"]
    assert options["redirect_limit"] == 0


def test_ssl_options_verify_by_default():
    assert ssl_options(settings_for())["cert_reqs"] == ssl.CERT_REQUIRED
    assert ssl_options(settings_for(ca_file="/x/ca.pem"))["ca_certs"] == "/x/ca.pem"
    assert ssl_options(settings_for(verify_tls=False))["cert_reqs"] == ssl.CERT_NONE


@pytest.mark.parametrize("url, expected", [
    ("ws://127.0.0.1:8080/v1/stream", False),
    ("ws://[::1]:8080/v1/stream", False),
    ("ws://localhost/v1/stream", False),
    ("wss://logstream.proofpoint.com/v1/stream", False),
    ("ws://logstream.proofpoint.com/v1/stream", True),
    ("ws://10.0.0.5/v1/stream", True),
])
def test_cleartext_remote_endpoint(url, expected):
    assert is_cleartext_remote(url) is expected


def test_close_frame_parsing():
    assert parse_close_frame(b"\x03\xf3going") == (1011, "going")
    assert parse_close_frame(b"") == (1005, "")


def test_session_error_hides_details():
    dropped = as_session_error(websocket.WebSocketConnectionClosedException("x"))
    assert str(dropped) == "the connection closed without a close frame"
    reset = as_session_error(ConnectionResetError(104, "Connection reset by peer"))
    assert "reset" in str(reset)


# -- reconnects ---------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("kind, code", [("close", 1000), ("close", 1001), ("close", 1011), ("drop", 1006)])
def test_device_reconnects_after_each_close(make_emulator, sentinel_token, tmp_path, caplog, kind, code):
    caplog.set_level(logging.INFO)
    emulator = make_emulator(count=150)
    emulator.add_fault(Fault(kind, after=20, code=code if kind == "close" else None,
                             reason="test close", sessions=5))
    harness = Harness(tmp_path, emulator.url, sentinel_token).start()
    wait_until(lambda: harness.stats.events_spooled >= 150)
    assert harness.finish()
    assert emulator.wait_idle()

    disconnects = records_with(caplog, "disconnected")
    assert [record.close_code for record in disconnects] == [code] * 5
    assert all(str(code) in record.getMessage() for record in disconnects)
    assert harness.stats.reconnects == 5
    sessions = emulator.sessions
    assert len(sessions) == 6
    assert all("sinceTime" not in session.params for session in sessions)
    assert harness.spooled() == sent(emulator)
    assert harness.stats.duplicates_dropped == 0


@pytest.mark.integration
def test_restart_within_window_resumes_live(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(rate=300)
    first = Harness(tmp_path, emulator.url, sentinel_token).start()
    wait_until(lambda: first.stats.events_spooled >= 60)
    assert first.finish()
    assert first.state()["clean_stop"] is True

    second = Harness(tmp_path, emulator.url, sentinel_token).start()
    wait_until(lambda: second.stats.events_spooled >= 60)
    assert second.finish()
    assert emulator.wait_idle()

    sessions = emulator.sessions
    assert len(sessions) == 2
    assert all("sinceTime" not in session.params for session in sessions)
    assert second.spooled() == sent(emulator)


@pytest.mark.integration
def test_restart_after_window_replays_hour(make_emulator, sentinel_token, tmp_path, fake_clock):
    emulator = make_emulator(count=300, clock=fake_clock)
    first = Harness(tmp_path, emulator.url, sentinel_token, clock=fake_clock).start()
    wait_until(lambda: first.stats.events_spooled >= 300)
    assert first.finish()
    fake_clock.advance(2 * 3600 + 30)

    second = Harness(tmp_path, emulator.url, sentinel_token, clock=fake_clock).start()
    wait_until(lambda: len(emulator.sessions) >= 3)
    assert second.finish()
    assert emulator.wait_idle()

    replay, live = emulator.sessions[1], emulator.sessions[2]
    assert replay.params["sinceTime"] == "2025-01-10T10:00:00-0000"
    assert replay.params["toTime"] == "2025-01-10T13:00:00-0000"
    assert replay.events_sent == 300
    assert "sinceTime" not in live.params
    assert second.stats.duplicates_dropped == 300
    spooled = second.spooled()
    assert len(spooled) == 300
    assert set(spooled) == set(sent(emulator))


@pytest.mark.integration
def test_checkpoint_orders_mixed_offsets(make_emulator, sentinel_token, tmp_path):
    events_dir = tmp_path / "events"
    events_dir.mkdir()
    lines = [
        '{"guid":"a","ts":"2024-05-22T12:10:03.000000-0700"}',
        '{"guid":"b","ts":"2024-05-22T18:00:00.000000-07:00"}',
        '{"guid":"c","ts":"2024-05-22T20:00:00.000000+0000"}',
    ]
    (events_dir / "message.ndjson").write_text("\n".join(lines) + "\n")
    emulator = make_emulator(events_dir=str(events_dir), once=True)
    harness = Harness(tmp_path, emulator.url, sentinel_token).start()
    wait_until(lambda: harness.stats.events_spooled >= 3)
    assert harness.finish()
    assert harness.stats.checkpoint == "2024-05-23T01:00:00.000000Z"
    assert harness.state()["checkpoint"] == "2024-05-23T01:00:00.000000Z"
    assert harness.spooled() == [line.encode() for line in lines]


@pytest.mark.integration
def test_gap_older_than_thirty_days(make_emulator, sentinel_token, tmp_path, fake_clock, caplog):
    caplog.set_level(logging.INFO)
    emulator = make_emulator(count=5, clock=fake_clock)
    store = DeviceStateStore(str(tmp_path / "state"), "dev")
    from podspool.dedup import DedupWindow
    store.load(DedupWindow(60))
    store.state.checkpoint_micros = int((fake_clock() - 40 * 86400) * 1_000_000)
    store.commit([])
    store.close()

    harness = Harness(tmp_path, emulator.url, sentinel_token, clock=fake_clock).start()
    wait_until(lambda: len(emulator.sessions) >= 2)
    assert harness.finish()

    gaps = records_with(caplog, "gap_detected")
    assert len(gaps) == 1
    assert gaps[0].levelno == logging.ERROR
    assert getattr(gaps[0], "from") == "2024-12-01T10:00:00-0000"
    assert gaps[0].to == "2024-12-11T10:00:00-0000"
    assert harness.stats.gaps == 1
    assert emulator.sessions[0].params["sinceTime"] == "2024-12-11T10:00:00-0000"


# -- keep-alive ---------------------------------------------------------------

@pytest.mark.integration
def test_stalled_session_is_replaced(make_emulator, sentinel_token, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    emulator = make_emulator(count=40)
    emulator.add_fault(Fault("stall", after=5))
    harness = Harness(tmp_path, emulator.url, sentinel_token,
                      ping_interval_seconds=1.0, ping_timeout_seconds=1.0).start()
    wait_until(lambda: harness.stats.events_spooled >= 40)
    assert harness.finish()

    connected = records_with(caplog, "connected")
    disconnected = records_with(caplog, "disconnected")
    assert len(disconnected) == 1
    assert "nothing received" in disconnected[0].error
    # Ping interval 1 s plus timeout 1 s, plus one read slice and the 5 events before the stall.
    assert disconnected[0].created - connected[0].created < 3.0
    assert len(connected) == 2
    assert harness.spooled() == sent(emulator)


@pytest.mark.integration
def test_trickled_event_keeps_session(make_emulator, sentinel_token, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    emulator = make_emulator(count=6)
    emulator.add_fault(Fault("trickle", after=3, size_bytes=3 * 1024 * 1024, seconds=20.0))
    harness = Harness(tmp_path, emulator.url, sentinel_token,
                      ping_interval_seconds=2.0, ping_timeout_seconds=3.0).start()
    wait_until(lambda: harness.stats.events_spooled >= 7, timeout=40.0)
    assert harness.finish()

    assert records_with(caplog, "disconnected") == []
    assert harness.stats.reconnects == 0
    assert len(emulator.sessions) == 1
    spooled = harness.spooled()
    assert spooled == sent(emulator)
    assert len(spooled[3]) >= 3 * 1024 * 1024


class TrickleServer:
    """Accept one WebSocket client, ignore what it sends, and send one large frame in small pieces."""

    def __init__(self, payload, piece_bytes, interval_seconds):
        self.payload = payload
        self.piece_bytes = piece_bytes
        self.interval_seconds = interval_seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self._serve_one()
        except OSError:
            pass  # the client went away

    def _serve_one(self):
        self.listener.settimeout(30)
        connection, _ = self.listener.accept()
        self.accepted += 1
        request = b""
        while b"\r\n\r\n" not in request:
            request += connection.recv(4096)
        key = [line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                           b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        frame = b"\x81\x7f" + len(self.payload).to_bytes(8, "big") + self.payload
        for start in range(0, len(frame), self.piece_bytes):
            # Blocking sendall: a non-blocking one can stop half-way when the client reads slowly.
            connection.sendall(frame[start:start + self.piece_bytes])
            time.sleep(self.interval_seconds)
            if select.select([connection], [], [], 0)[0]:
                connection.recv(65536)  # discard client pings, so no pong is sent
        self.done.wait(30)

    def close(self):
        self.done.set()
        self.listener.close()


@pytest.mark.integration
def test_partial_frame_counts_as_life(sentinel_token, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    payload = json.dumps({"guid": "big", "ts": "2025-01-10T10:00:00.000000+0000",
                          "blob": "x" * (1024 * 1024)}).encode()
    server = TrickleServer(payload, piece_bytes=16 * 1024, interval_seconds=0.06)
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    harness = Harness(tmp_path, url, sentinel_token, ping_interval_seconds=1.0, ping_timeout_seconds=1.0).start()
    try:
        wait_until(lambda: harness.stats.events_spooled >= 1, timeout=30.0)
    finally:
        assert harness.finish()
        server.close()
    # The single frame took about 4 s, twice the 2 s silence limit, and no pong ever came.
    assert records_with(caplog, "disconnected") == []
    assert server.accepted == 1
    assert harness.spooled() == [payload]


# -- handshake failures and the token -----------------------------------------

def assert_token_absent(token, caplog, *directories):
    for record in caplog.records:
        assert token not in record.getMessage()
        assert token not in json.dumps(record.__dict__, default=str)
    for directory in directories:
        for folder, _, names in os.walk(directory):
            for name in names:
                with open(os.path.join(folder, name), "rb") as handle:
                    assert token.encode() not in handle.read(), name


@pytest.mark.integration
def test_unauthorized_retries_at_maximum(make_emulator, sentinel_token, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websocket")
    emulator = make_emulator(token="the-right-token", count=5)
    harness = Harness(tmp_path, emulator.url, sentinel_token,
                      reconnect_initial_seconds=0.01, reconnect_max_seconds=0.2).start()
    wait_until(lambda: len(harness.device.backoff.delays) >= 3)
    assert harness.finish()

    assert harness.device.backoff.delays[:3] == [(1, 0.2), (2, 0.2), (3, 0.2)]
    failures = records_with(caplog, "handshake_failed")
    assert failures[0].status_code == 401
    assert failures[0].levelno == logging.ERROR
    assert "HTTP 401" in failures[0].getMessage()
    assert harness.stats.last_handshake_status == 401
    assert harness.stats.failing_since is not None
    assert all(record.status_code == 401 for record in records_with(caplog, "reconnect_scheduled"))
    with pytest.raises(HandshakeError) as raised:
        open_session(harness.settings, emulator.url + "?cid=example_hosted&type=message")
    assert sentinel_token not in str(raised.value)
    assert sentinel_token not in str(harness.stats.as_dict())
    assert_token_absent(sentinel_token, caplog, harness.spool_root, harness.state_root)


@pytest.mark.integration
def test_conflict_backs_off_exponentially(make_emulator, sentinel_token, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="websocket")
    emulator = make_emulator(count=5)
    holder = websocket.create_connection(emulator.url + "?cid=example_hosted&type=message",
                                         header=[f"Authorization: Bearer {sentinel_token}"], timeout=5)
    harness = Harness(tmp_path, emulator.url, sentinel_token,
                      reconnect_initial_seconds=0.02, reconnect_max_seconds=1.0).start()
    try:
        wait_until(lambda: len(harness.device.backoff.delays) >= 6)
        assert harness.stats.last_handshake_status == 409
        assert harness.stats.failing_since is not None
    finally:
        holder.close()
    wait_until(lambda: harness.stats.connected)
    assert harness.stats.failing_since is None
    assert harness.finish()

    delays = harness.device.backoff.delays[:6]
    assert [attempt for attempt, _ in delays] == [1, 2, 3, 4, 5, 6]
    for attempt, delay in delays:
        assert delay <= min(1.0, 0.02 * 2 ** (attempt - 1)) + 1e-9
    assert max(delay for _, delay in delays) > 0.02
    failures = records_with(caplog, "handshake_failed")
    assert failures[0].status_code == 409
    assert failures[0].levelno == logging.WARNING
    assert_token_absent(sentinel_token, caplog, harness.spool_root, harness.state_root)


@pytest.mark.integration
def test_tls_needs_trusted_ca(make_emulator, sentinel_token, tmp_path, tls_ca, caplog):
    caplog.set_level(logging.INFO)
    ca_file, cert_file, key_file = tls_ca
    emulator = make_emulator(count=3, tls_cert=cert_file, tls_key=key_file)
    untrusted = Harness(tmp_path / "a", emulator.url, sentinel_token, reconnect_initial_seconds=5.0).start()
    wait_until(lambda: records_with(caplog, "handshake_failed"))
    assert untrusted.finish()
    assert "TLS certificate verification" in records_with(caplog, "handshake_failed")[0].error

    trusted = Harness(tmp_path / "b", emulator.url, sentinel_token, ca_file=ca_file).start()
    wait_until(lambda: trusted.stats.events_spooled >= 3)
    assert trusted.finish()
    assert trusted.spooled() == sent(emulator)


# -- resources and stopping ----------------------------------------------------

def resources(samples=50):
    """Return the smallest (open descriptors, threads, RSS KiB) seen over SAMPLES readings.

    A reconnect in progress has a socket and an emulator thread open for a moment;
    the minimum leaves those out and keeps anything that stays.
    """
    readings = []
    for _ in range(samples):
        with open("/proc/self/status") as handle:
            rss_kib = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        readings.append((len(os.listdir("/proc/self/fd")), threading.active_count(), rss_kib))
        time.sleep(0.002)
    return tuple(min(values) for values in zip(*readings))


@pytest.mark.integration
def test_reconnect_cycles_leave_resources_flat(make_emulator, sentinel_token, tmp_path):
    for name in ("podspool", "websockets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        emulator = make_emulator()
        emulator.add_fault(Fault("close", after=1, code=1000, sessions=310))
        harness = Harness(tmp_path, emulator.url, sentinel_token,
                          reconnect_initial_seconds=0.001, reconnect_max_seconds=0.01).start()
        wait_until(lambda: len(emulator.sessions) >= 50, timeout=30.0)
        assert emulator.wait_idle()
        before = resources()
        wait_until(lambda: len(emulator.sessions) >= 300, timeout=60.0)
        assert emulator.wait_idle()
        after = resources()
        assert harness.finish()
    finally:
        for name in ("podspool", "websockets"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    # The counts are process-wide, and other tests' servers may still be closing their
    # sockets. A leak per reconnect would add about 250 between the two measurements, so
    # a margin of 8 still catches it.
    assert after[0] - before[0] <= 8, f"open descriptors {before[0]} -> {after[0]}"
    assert after[1] - before[1] <= 8, f"threads {before[1]} -> {after[1]}"
    assert after[2] - before[2] < 8 * 1024, f"RSS {before[2]} KiB -> {after[2]} KiB"
    assert harness.stats.reconnects >= 299


@pytest.mark.integration
def test_stop_ends_backoff_within_bound(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(token="the-right-token", count=1)
    harness = Harness(tmp_path, emulator.url, sentinel_token,
                      reconnect_initial_seconds=30.0, reconnect_max_seconds=60.0).start()
    wait_until(lambda: harness.device.backoff.delays)
    harness.stop.set()
    assert harness.device.join(2.0)
    harness.writer.close()


@pytest.mark.integration
def test_stop_mid_stream_is_clean(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator()
    harness = Harness(tmp_path, emulator.url, sentinel_token).start()
    wait_until(lambda: harness.stats.events_spooled >= 5000)
    harness.stop.set()
    assert harness.device.join(2.0)
    harness.writer.close()
    assert emulator.wait_idle()
    assert harness.state()["clean_stop"] is True
    spooled = harness.spooled()
    assert spooled == sent(emulator)
    assert harness.state()["checkpoint"] == harness.stats.last_event_time


@pytest.mark.integration
def test_four_workers_spool_each_once(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(count=3000)
    harness = Harness(tmp_path, emulator.url, sentinel_token, workers=4, reuse=True).start()
    wait_until(lambda: harness.stats.events_spooled >= 3000)
    assert harness.finish()
    assert harness.spooled() == sent(emulator)
    assert harness.stats.duplicates_dropped == 0


@pytest.mark.integration
def test_duplicates_from_server_dropped(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(count=2000, duplicate_ratio=0.2, seed=7)
    harness = Harness(tmp_path, emulator.url, sentinel_token, workers=4).start()
    wait_until(lambda: harness.stats.events_received >= len(sent(emulator)) >= 2000)
    assert harness.finish()
    lines = sent(emulator)
    spooled = harness.spooled()
    assert len(spooled) == 2000
    assert spooled == list(dict.fromkeys(lines))
    assert harness.stats.duplicates_dropped == len(lines) - 2000


@pytest.mark.integration
def test_bad_frames_dead_lettered(make_emulator, sentinel_token, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    big = json.dumps({"guid": "big", "blob": "x" * 300_000})
    binary_event = b'{"guid":"bin-ok","ts":"2025-01-10T10:00:00.000000+0000"}'
    frames = ["this is not JSON", b'{"guid":"\xff\xfe"}', "[1, 2, 3]", "", big, binary_event,
              '{"guid":"multi",\n "ts":"2025-01-10T10:00:00.000000+0000"}']
    emulator = make_emulator(count=20)
    emulator.add_fault(Fault("invalid_frames", after=5, frames=frames))
    harness = Harness(tmp_path, emulator.url, sentinel_token, max_event_bytes=200_000).start()
    wait_until(lambda: harness.stats.events_spooled >= 22)
    assert harness.finish()

    directory = os.path.join(harness.spool_root, "dev", "dead-letter")
    records = [json.loads(line) for name in os.listdir(directory)
               for line in open(os.path.join(directory, name), "rb").read().splitlines()]
    reasons = [record["reason"] for record in records]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1] == "invalid UTF-8 at byte 9"
    assert reasons[2] == "JSON list instead of an object"
    assert reasons[3] == "empty frame"
    assert reasons[4] == f"frame of {len(big)} bytes is larger than max_event_bytes (200000)"
    assert len(records) == 5
    assert harness.stats.dead_lettered == 5
    spooled = harness.spooled()
    assert spooled[5:7] == [binary_event, b'{"guid":"multi","ts":"2025-01-10T10:00:00.000000+0000"}']
    assert [line for line in spooled if line not in (spooled[5], spooled[6])] == sent(emulator)
    assert len(records_with(caplog, "dead_lettered")) == 5
    assert len(records_with(caplog, "disconnected")) == 0


# -- crash ---------------------------------------------------------------------

def start_child(url, spool_root, state_root, token):
    env = dict(os.environ, PODSPOOL_TEST_TOKEN=token, PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "device_child.py"), url, spool_root, state_root],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert child.stdout.readline() == b"running\n"
    return child


@pytest.mark.integration
def test_sigkill_then_restart_spools_once(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(rate=400)
    spool_root, state_root = str(tmp_path / "spool"), str(tmp_path / "state")
    directory = os.path.join(spool_root, "crash")

    child = start_child(emulator.url, spool_root, state_root, sentinel_token)
    wait_until(lambda: os.path.isdir(directory) and len(sent(emulator)) >= 400)
    child.kill()
    child.wait(10)
    child.stdout.close()
    child.stderr.close()
    assert emulator.wait_idle()

    child = start_child(emulator.url, spool_root, state_root, sentinel_token)
    wait_until(lambda: len(emulator.sessions) >= 3 and emulator.sessions[2].events_sent >= 100)
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == 0
    errors = child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    assert emulator.wait_idle()

    sessions = emulator.sessions
    assert "sinceTime" not in sessions[0].params
    assert "sinceTime" in sessions[1].params
    assert "sinceTime" not in sessions[2].params
    spooled = spool_lines(directory)
    assert len(spooled) == len(set(spooled)), "the spool holds a line twice"
    assert set(spooled) == set(sent(emulator))
    assert "Traceback" not in errors
    assert sentinel_token not in errors
