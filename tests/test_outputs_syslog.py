"""The syslog output: RFC 5424 formatting, and delivery to a real rsyslogd over TCP, TLS and UDP."""

import json
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from podspool.errors import ConfigError
from podspool.events import dedup_key
from podspool.outputs import syslog, syslog_stream
from podspool.outputs.base import Record, TransientError
from podspool.outputs.syslog import SyslogDestination, format_message, frame, syslog_timestamp, validate_options
from podspool.settings import OutputSettings
from rsyslog_server import RsyslogServer, free_port

SAMPLES = Path(__file__).resolve().parent.parent / "podspool" / "samples"
TS = "2024-05-22T12:10:03.058340-0700"

# Events whose JSON strings hold what line-based receivers split on or mangle.
EXTRA_EVENTS = [
    ("message", json.dumps({"guid": "crlf", "ts": TS, "subject": "one\r\ntwo\tthree\n"}).encode()),
    ("message", json.dumps({"guid": "ls-escaped", "ts": TS, "subject": "a\u2028b\u2029c"}).encode()),
    ("message", json.dumps({"guid": "ls-raw", "ts": TS, "subject": "a\u2028b\u2029c"},
                           ensure_ascii=False).encode("utf-8")),
    ("audit", json.dumps({"guid": "utf8", "subject": "Grüße, 日本語, 📧"}, ensure_ascii=False).encode("utf-8")),
]


def make_record(log_type, line, device="edge-1"):
    return Record(device=device, log_type=log_type, line=line, key=dedup_key(json.loads(line), line))


def all_records():
    """Return every bundled sample event plus the hard cases, as Records."""
    records = []
    for log_type in ("message", "maillog", "audit"):
        for line in (SAMPLES / f"{log_type}.ndjson").read_bytes().splitlines():
            if line.strip():
                records.append(make_record(log_type, line))
    records.extend(make_record(log_type, line) for log_type, line in EXTRA_EVENTS)
    return records


def output(options, **common):
    return OutputSettings(name="siem", type="syslog", options=dict(options), timeout_seconds=5.0, **common)


# Formatting, no server


def test_message_has_rfc5424_header():
    settings = output({"host": "127.0.0.1", "hostname": "collector-1", "app_name": "pod",
                       "facility": "local4", "severity": "notice"})
    record = make_record("maillog", json.dumps({"id": "m1", "ts": TS}).encode())

    message = format_message(validate_options(settings), record, "4242")

    assert message.startswith(b"<165>1 2024-05-22T12:10:03.058340-07:00 collector-1 pod 4242 maillog - ")
    assert message.endswith(b" " + record.line)


def test_timestamp_keeps_event_offset():
    assert syslog_timestamp({"ts": "2024-05-22T19:10:03.058340+0000"}) == "2024-05-22T19:10:03.058340Z"
    assert syslog_timestamp({"ts": "2024-05-22T12:10:03-07:00"}) == "2024-05-22T12:10:03.000000-07:00"
    assert syslog_timestamp({"ts": "2024-05-22T19:10:03.123456789"}) == "2024-05-22T19:10:03.123456Z"


def test_timestamp_falls_back_to_now():
    now = datetime(2025, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)

    assert syslog_timestamp({}, now) == "2025-01-02T03:04:05.600000Z"
    assert syslog_timestamp({"ts": "yesterday"}, now) == "2025-01-02T03:04:05.600000Z"
    assert syslog_timestamp(None, now) == "2025-01-02T03:04:05.600000Z"


def test_octet_counting_counts_bytes():
    message = "<134>1 - - - - - - é".encode("utf-8")

    assert frame(message, "octet-counting") == b"%d " % len(message) + message
    assert len(message) == 21
    assert frame(message, "newline") == message + b"\n"


def test_options_defaults_per_protocol():
    tcp = validate_options(output({"host": "siem.example"}))
    tls = validate_options(output({"host": "siem.example", "protocol": "tls"}))
    udp = validate_options(output({"host": "siem.example", "protocol": "udp"}))

    assert (tcp.port, tcp.framing, tcp.app_name, tcp.facility, tcp.severity) == (
        514, "octet-counting", "podspool", "local0", "info")
    assert tls.port == 6514
    assert tcp.max_message_bytes == 65536
    assert udp.max_message_bytes == syslog.MAX_UDP_PAYLOAD_BYTES


@pytest.mark.parametrize("options, key", [
    ({}, "host"),
    ({"host": "h", "protocol": "relp"}, "protocol"),
    ({"host": "h", "facility": "local9"}, "facility"),
    ({"host": "h", "severity": "loud"}, "severity"),
    ({"host": "h", "app_name": "has space"}, "app_name"),
    ({"host": "h", "protocol": "udp", "max_message_bytes": 70000}, "max_message_bytes"),
    ({"host": "h", "colour": "blue"}, "colour"),
])
def test_options_reject_invalid_key(options, key):
    with pytest.raises(ConfigError) as caught:
        validate_options(output(options), file="podspool.yaml", path="outputs[0]")

    assert f"outputs[0].{key}" in str(caught.value)


def test_unreachable_receiver_raises_transient():
    port = free_port()
    destination = SyslogDestination(output({"host": "127.0.0.1", "port": port}))

    with pytest.raises(TransientError, match="connecting to syslog receiver"):
        destination.send(all_records()[:1])
    destination.close()
    destination.close()


# Delivery to a real rsyslogd


@pytest.fixture(scope="module")
def rsyslog(tmp_path_factory):
    server = RsyslogServer(tmp_path_factory.mktemp("rsyslog"))
    server.start()
    yield server
    server.stop()


def wait_for_app(server, app_name, count, timeout=15.0):
    """Return APP_NAME's records once COUNT arrived, or what arrived by the timeout."""
    deadline = time.monotonic() + timeout
    found = [r for r in server.records() if r["app_name"] == app_name]
    while len(found) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        found = [r for r in server.records() if r["app_name"] == app_name]
    return found


def assert_parsed_exactly(records, found):
    """Check each record arrived once as one RFC 5424 record with its MSGID, time and JSON intact."""
    assert len(found) == len(records)
    expected = sorted((r.log_type, r.line.decode("utf-8")) for r in records)
    assert sorted((f["msgid"], f["msg"]) for f in found) == expected
    for record, line in zip(records, (r.line for r in records)):
        assert json.loads(line) == record.event
    by_msg = {f["msg"]: f for f in found}
    for record in records:
        parsed = by_msg[record.line.decode("utf-8")]
        assert parsed["version"] == "1"
        assert parsed["pri"] == "134"
        if "ts" in record.event:
            assert parsed["timestamp"] == syslog_timestamp(record.event)


@pytest.mark.integration
@pytest.mark.parametrize("framing", ["octet-counting", "newline"])
def test_tcp_delivers_every_event(rsyslog, framing):
    app_name = f"tcp-{framing}"
    records = all_records()
    destination = SyslogDestination(output(
        {"host": "127.0.0.1", "port": rsyslog.tcp_port, "framing": framing, "app_name": app_name}))

    result = destination.send(records)
    destination.close()

    assert result.rejected == []
    assert result.retry == []
    assert_parsed_exactly(records, wait_for_app(rsyslog, app_name, len(records)))


@pytest.mark.integration
def test_tls_delivers_every_event(rsyslog):
    records = all_records()
    destination = SyslogDestination(output(
        {"host": "127.0.0.1", "port": rsyslog.tls_port, "protocol": "tls", "app_name": "tls"},
        ca_file=rsyslog.ca_file))

    destination.send(records[:10])
    destination.send(records[10:])
    destination.close()

    assert_parsed_exactly(records, wait_for_app(rsyslog, "tls", len(records)))


@pytest.mark.integration
def test_tls_wrong_ca_fails_clearly(rsyslog):
    destination = SyslogDestination(output(
        {"host": "127.0.0.1", "port": rsyslog.tls_port, "protocol": "tls", "app_name": "wrong-ca"},
        ca_file=rsyslog.wrong_ca_file))

    with pytest.raises(TransientError) as caught:
        destination.send(all_records()[:1])
    destination.close()

    assert "TLS certificate verification" in str(caught.value)
    assert "set ca_file" in str(caught.value)


@pytest.mark.integration
def test_tls_client_certificate_accepted(rsyslog):
    base = {"host": "127.0.0.1", "port": rsyslog.mtls_port, "protocol": "tls", "app_name": "mtls"}
    records = all_records()[:3]
    with_cert = SyslogDestination(output(base, ca_file=rsyslog.ca_file,
                                         client_cert=rsyslog.client_cert, client_key=rsyslog.client_key))
    without_cert = SyslogDestination(output(base, ca_file=rsyslog.ca_file))

    with_cert.send(records)
    with_cert.close()
    with pytest.raises(TransientError, match="closed the connection"):
        without_cert.send(all_records()[3:4])
    without_cert.close()

    assert_parsed_exactly(records, wait_for_app(rsyslog, "mtls", len(records) + 1, timeout=3))


@pytest.mark.integration
def test_udp_delivers_and_rejects_oversize(rsyslog):
    records = all_records()
    big = make_record("message", json.dumps({"guid": "big", "ts": TS, "pad": "x" * 2000}).encode())
    destination = SyslogDestination(output(
        {"host": "127.0.0.1", "port": rsyslog.udp_port, "protocol": "udp", "app_name": "udp",
         "max_message_bytes": 1500}))
    small = [r for r in records if len(format_message(destination.options, r, "1")) <= 1500]

    result = destination.send(records + [big])
    destination.close()

    rejected = {rejection.index for rejection in result.rejected}
    assert len(records) in rejected
    assert rejected == {i for i, r in enumerate(records + [big]) if r not in small}
    assert "exceeds max_message_bytes 1500" in result.rejected[0].reason
    assert_parsed_exactly(small, wait_for_app(rsyslog, "udp", len(small)))


# Receiver restarts


def send_until_delivered(destination, batch, attempts=5):
    """Send BATCH as the shipper would, again after each TransientError; return the failures seen."""
    failures = 0
    for _ in range(attempts):
        try:
            destination.send(batch)
            return failures
        except TransientError:
            failures += 1
    raise AssertionError(f"batch not delivered after {attempts} attempts")


@pytest.mark.integration
def test_restart_mid_stream_loses_nothing(tmp_path, monkeypatch):
    records = all_records()
    batches = [records[i:i + 10] for i in range(0, len(records), 10)]
    server = RsyslogServer(tmp_path)
    server.start()
    destination = SyslogDestination(output({"host": "127.0.0.1", "port": server.tcp_port}))
    try:
        destination.send(batches[0])

        # Stopped: the send fails and the batch stays with the caller.
        server.stop()
        with pytest.raises(TransientError):
            destination.send(batches[1])

        server.start()
        send_until_delivered(destination, batches[1])

        # Restarted between two batches: the closed connection is noticed before writing.
        server.stop()
        server.start()
        destination.send(batches[2])

        # Restarted and the check before writing misses it (the receiver closed
        # in between): the write fails, or the check after writing notices.
        server.stop()
        server.start()
        real_check = syslog_stream._peer_state
        calls = []

        def miss_first_check(sock):
            calls.append(sock)
            return syslog_stream.OPEN if len(calls) == 1 else real_check(sock)

        monkeypatch.setattr(syslog_stream, "_peer_state", miss_first_check)
        with pytest.raises(TransientError, match="closed the connection|reset by peer|Broken pipe"):
            destination.send(batches[3])
        monkeypatch.setattr(syslog_stream, "_peer_state", real_check)
        for batch in batches[3:]:
            send_until_delivered(destination, batch)

        found = server.wait_for_records(len(records))
    finally:
        destination.close()
        server.stop()

    messages = [f["msg"] for f in found]
    missing = [(i // 10, r.key) for i, r in enumerate(records) if r.line.decode("utf-8") not in messages]
    assert missing == []
    duplicates = len(messages) - len(set(messages))
    print(f"restart test: {len(records)} events, {len(messages)} records, {duplicates} duplicates")
    # At most the batch written before the simulated missed check and the one after it.
    assert duplicates <= len(batches[2]) + len(batches[3])


@pytest.mark.integration
def test_reset_connection_resends_previous_batch():
    """A receiver that closes with a batch unread resets the connection; that batch is sent again."""
    records = all_records()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        destination = SyslogDestination(output({"host": "127.0.0.1", "port": listener.getsockname()[1],
                                                "framing": "newline"}))
        destination.send(records[:2])
        unread, _ = listener.accept()
        unread.close()  # closing with bytes unread makes Linux send a reset

        destination.send(records[2:3])
        reader, _ = listener.accept()
        received = read_lines(reader, 3)
        destination.close()
        reader.close()

    assert [line.split(b" - ", 1)[1] for line in received] == [r.line for r in records[:3]]


def read_lines(sock, count, timeout=10.0):
    sock.settimeout(timeout)
    data = b""
    while data.count(b"\n") < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.splitlines()
