"""Tests of the PoD emulator, talking to it through plain websocket-client connections."""

import json
import logging
import os
import selectors
import signal
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import websocket
from websocket import ABNF

from podspool.emulator import TOKEN_ENV, Emulator, Fault, main
from podspool.emulator_archive import HOUR_US, ceil_hour, floor_hour
from podspool.emulator_events import TimestampFormatter, build_template, load_templates, pad_event, top_level_spans
from podspool.emulator_request import Rejection, parse_time_param
from podspool.errors import ConfigError
from podspool.events import parse_ts

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "podspool" / "samples"
CID = "example_hosted"
MIB = 1024 * 1024


# Helpers


def stream_url(emulator, log_type="message", **params):
    query = "&".join(f"{name}={value}" for name, value in {"cid": CID, "type": log_type, **params}.items())
    return f"{emulator.url}?{query}"


def connect(emulator, log_type="message", token=None, sslopt=None, **params):
    header = [f"Authorization: Bearer {token or emulator.token}"]
    # websocket-client's UTF-8 check is pure Python (seconds per 10 MB); the tests decode themselves.
    return websocket.create_connection(stream_url(emulator, log_type, **params), header=header,
                                       timeout=10, sslopt=sslopt, skip_utf8_validation=True)


def handshake_status(url, header):
    """Return the HTTP status of a handshake: 101 when it opened a session, else the error status."""
    try:
        ws = websocket.create_connection(url, header=header, timeout=10)
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    ws.close()
    return 101


def read_until_close(ws):
    """Read text messages until a close frame; return (lines, close code, close reason).

    websocket-client replies to the close frame but leaves the socket open, and
    the server waits for the TCP close; shutdown() closes the socket at once.
    """
    lines = []
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            ws.shutdown()
            code = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
            return lines, code, frame.data[2:].decode("utf-8")
        if opcode == ABNF.OPCODE_TEXT:
            lines.append(frame.data.decode("utf-8"))


def serial_of(line):
    """Return the serial number the emulator encoded in a generated event's id."""
    event = json.loads(line)
    return int((event.get("guid") or event["id"])[-9:], 16)


def instant_of(line):
    return parse_ts(json.loads(line)["ts"]).timestamp()


def sample_lines(log_type):
    return [line for line in (SAMPLES / f"{log_type}.ndjson").read_bytes().split(b"\n") if line.strip()]


# Event templates, time parameters and rounding (no server)


def test_spans_find_top_level_keys_only():
    raw = '{"metadata":{"trace":{"ts":"nested"}}, "ts" : "2024-01-01T00:00:00+0000","guid":"abc"}'
    spans = top_level_spans(raw)
    assert raw[slice(*spans["ts"])] == '"2024-01-01T00:00:00+0000"'
    assert raw[slice(*spans["guid"])] == '"abc"'
    assert set(spans) == {"metadata", "ts", "guid"}


def test_template_replaces_id_and_ts():
    raw = '{"id":"usCZNabcdefghijm3/1234","trace":{"ts":"keep"},"ts":"2024-06-19T05:25:41.855197-07:00"}'
    template = build_template(raw)
    event = json.loads(template.render(0x2A, 1_736_503_200_000_001, 0xABC))
    assert event["id"] == "usCZNabcde" + "abc" + "00000002a"
    assert event["ts"] == "2025-01-10T03:00:00.000001-07:00"
    assert event["trace"] == {"ts": "keep"}


@pytest.mark.parametrize("sample_ts, expected", [
    ("2024-05-22T12:10:03.058340-0700", "2025-01-10T03:00:00.500000-0700"),
    ("2023-10-25T21:49:38.968838+0000", "2025-01-10T10:00:00.500000+0000"),
    ("2024-01-01T00:00:00Z", "2025-01-10T10:00:00.500000Z"),
    ("2024-01-01T00:00:00", "2025-01-10T10:00:00.500000"),
])
def test_timestamp_formatter_keeps_offset(sample_ts, expected):
    assert TimestampFormatter(sample_ts).format(1_736_503_200_500_000) == expected


@pytest.mark.parametrize("value", [
    "2025-01-10T11:15:00-0000",
    "2025-01-10T11:15:00+0000",
    "2025-01-10T11:15:00Z",
    "2025-01-10T11:15:00",
    "2025-01-10T11:15:00.000000",
    "2025-01-10T11:15:00.000-0000",
    "2025-01-10T07:15:00-0400",
    "2025-01-10T07:15:00-04:00",
])
def test_time_param_formats_parse(value):
    assert parse_time_param("sinceTime", value) == 1_736_507_700_000_000


def test_time_param_bare_date_is_midnight():
    assert parse_time_param("sinceTime", "2025-01-10") == 1_736_467_200_000_000


@pytest.mark.parametrize("value", ["", "yesterday", "2025-01-10T11:15:00 0000", "2025-13-01"])
def test_time_param_invalid_rejected(value):
    with pytest.raises(Rejection) as caught:
        parse_time_param("sinceTime", value)
    assert caught.value.status == 400


def test_hour_rounding_down_and_up():
    instant = 1_736_507_700_000_000  # 11:15
    assert floor_hour(instant) == 1_736_506_800_000_000
    assert ceil_hour(instant) == 1_736_506_800_000_000 + HOUR_US
    assert ceil_hour(floor_hour(instant)) == floor_hour(instant)


def test_pad_event_exact_size_and_valid():
    line = sample_lines("message")[0].decode("utf-8")
    padded = pad_event(line, 2 * MIB)
    assert len(padded.encode("utf-8")) == 2 * MIB
    assert json.loads(padded)["guid"] == json.loads(line)["guid"]
    empty = pad_event("{}", 100)
    assert len(empty) == 100
    assert json.loads(empty) == {"emulatorPadding": "x" * 78}


def test_events_file_bad_line_names_file(tmp_path):
    (tmp_path / "message.ndjson").write_text('{"guid":"a","ts":"2024-01-01T00:00:00Z"}\n[1, 2]\n')
    with pytest.raises(ConfigError) as caught:
        load_templates("message", tmp_path)
    assert "message.ndjson" in str(caught.value)
    assert "line 2" in str(caught.value)


def test_events_dir_missing_type_is_empty(tmp_path):
    assert load_templates("audit", tmp_path) == []


@pytest.mark.parametrize("kwargs", [
    {"kind": "explode"},
    {"kind": "close", "code": 1006},
    {"kind": "close", "after": -1},
    {"kind": "refuse", "status": 200},
    {"kind": "trickle", "frames": 0},
    {"kind": "close", "log_type": "mail"},
])
def test_fault_invalid_fields_rejected(kwargs):
    with pytest.raises(ValueError):
        Fault(**kwargs)


def test_events_dir_not_found(tmp_path):
    emulator = Emulator(token="t", events_dir=tmp_path / "missing")
    with pytest.raises(ConfigError) as caught:
        emulator.start()
    assert "missing" in str(caught.value)
    assert "not found" in str(caught.value)


@pytest.mark.integration
def test_events_dir_serves_given_file(make_emulator, tmp_path):
    line = '{"guid":"custom-0000000000000000","ts":"2024-01-01T00:00:00.000000+0200","n":1}'
    (tmp_path / "audit.ndjson").write_text(line + "\n")
    emulator = make_emulator(events_dir=tmp_path, once=True)
    ws = connect(emulator, "audit")
    assert ws.recv() == line
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(emulator, "message", sinceTime="bad")


def test_emulator_invalid_arguments_rejected():
    with pytest.raises(ValueError):
        Emulator(token="")
    with pytest.raises(ValueError):
        Emulator(token="t", once=True, count=3)
    with pytest.raises(ValueError):
        Emulator(token="t", rate=0)


# Handshake statuses


@pytest.mark.integration
def test_handshake_wrong_path_404(emulator, sentinel_token):
    url = emulator.url.replace("/v1/stream", "/v2/stream") + f"?cid={CID}&type=message"
    assert handshake_status(url, [f"Authorization: Bearer {sentinel_token}"]) == 404


@pytest.mark.integration
@pytest.mark.parametrize("header", [
    [],
    ["Authorization: Bearer wrong-token"],
    ["Authorization: Bearer "],
    ["Authorization: Basic c2VudGluZWw6dG9rZW4="],
])
def test_handshake_bad_token_401(emulator, header):
    assert handshake_status(stream_url(emulator), header) == 401


@pytest.mark.integration
def test_handshake_wrong_cluster_401(emulator, sentinel_token):
    url = f"{emulator.url}?cid=other_hosted&type=message"
    assert handshake_status(url, [f"Authorization: Bearer {sentinel_token}"]) == 401


@pytest.mark.integration
@pytest.mark.parametrize("query", [
    "type=message",
    "cid=example_hosted",
    "cid=&type=message",
    "cid=example_hosted&type=",
    "cid=example_hosted&type=mail",
    "cid=example_hosted&type=message&type=audit",
    "cid=example_hosted&type=message&sinceTime=yesterday",
    "cid=example_hosted&type=message&sinceTime=2025-01-10T11:15:00+0000",
    "cid=example_hosted&type=message&sinceTime=2020-01-01T00:00:00-0000",
    "cid=example_hosted&type=message&toTime=2025-01-10T11:00:00-0000",
    "cid=example_hosted&type=message&sinceTime=2025-01-10T11:00:00-0000&toTime=later",
    "cid=example_hosted&type=message&sinceTime=2025-01-10T11:00:00-0000&toTime=2025-01-10T10:00:00-0000",
])
def test_handshake_bad_parameters_400(make_emulator, fake_clock, sentinel_token, query):
    emulator = make_emulator(clock=fake_clock)
    url = f"{emulator.url}?{query}"
    assert handshake_status(url, [f"Authorization: Bearer {sentinel_token}"]) == 400


@pytest.mark.integration
def test_second_session_same_type_409(emulator):
    first = connect(emulator, "message")
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        connect(emulator, "message")
    assert caught.value.status_code == 409
    assert caught.value.resp_body == b"Exceeded maximum number of sessions per token"

    other_type = connect(emulator, "maillog")
    assert json.loads(other_type.recv())["id"]
    other_type.close()

    first.close()
    again = connect(emulator, "message")
    assert json.loads(again.recv())["guid"]
    again.close()
    statuses = [record.status for record in emulator.sessions if record.log_type == "message"]
    assert statuses == [101, 409, 101]


# Resume and replay


@pytest.mark.integration
def test_live_resume_inside_window_no_gap(make_emulator, fake_clock):
    emulator = make_emulator(rate=1.0, clock=fake_clock)
    first = connect(emulator, "message")
    fake_clock.advance(4)  # events 0 to 4 are due
    received = [first.recv() for _ in range(5)]
    first.close()
    assert emulator.wait_idle()

    fake_clock.advance(10)  # events 5 to 14 become due while no session is open
    second = connect(emulator, "message")
    received += [second.recv() for _ in range(10)]
    second.close()
    assert emulator.wait_idle()

    assert [serial_of(line) for line in received] == list(range(15))
    assert received == emulator.sent_lines("message")


@pytest.mark.integration
def test_live_resume_after_window_last_window(make_emulator, fake_clock):
    emulator = make_emulator(rate=1.0, clock=fake_clock, resume_window_seconds=3600)
    first = connect(emulator, "message")
    fake_clock.advance(4)
    assert [serial_of(first.recv()) for _ in range(5)] == [0, 1, 2, 3, 4]
    first.close()
    assert emulator.wait_idle()

    fake_clock.advance(7200)  # now = start + 7204 s; the window starts at start + 3604 s
    second = connect(emulator, "message")
    line = second.recv()
    second.close()
    assert serial_of(line) == 3604
    assert instant_of(line) == pytest.approx(fake_clock.now - 3600, abs=1e-6)


@pytest.mark.integration
def test_first_session_gets_last_window(make_emulator, fake_clock):
    emulator = make_emulator(rate=1 / 60, clock=fake_clock, resume_window_seconds=600)
    fake_clock.advance(3600)  # events every minute for an hour, no session yet
    ws = connect(emulator, "message")
    line = ws.recv()
    ws.close()
    assert serial_of(line) == 50


def replay_emulator(make_emulator, fake_clock, **kwargs):
    """Return an emulator with one event every 10 minutes from 10:20 to 13:00 UTC (serials 0 to 16)."""
    fake_clock.advance(20 * 60)  # 10:20
    emulator = make_emulator(rate=1 / 600, clock=fake_clock, **kwargs)
    fake_clock.advance(2 * 3600 + 45 * 60)  # 13:05
    return emulator


@pytest.mark.integration
def test_replay_rounds_hours_closes_after_totime(make_emulator, fake_clock):
    emulator = replay_emulator(make_emulator, fake_clock)
    ws = connect(emulator, "message", sinceTime="2025-01-10T11:15:00-0000", toTime="2025-01-10T12:05:00-0000")
    lines, code, _ = read_until_close(ws)
    # 11:15 rounds down to 11:00 (serial 4) and 12:05 up to 13:00 (serial 16, excluded).
    assert [serial_of(line) for line in lines] == list(range(4, 16))
    assert code == 1000
    assert instant_of(lines[0]) < parse_ts("2025-01-10T11:15:00Z").timestamp()


@pytest.mark.integration
def test_replay_overlaps_earlier_live_session(make_emulator, fake_clock):
    emulator = replay_emulator(make_emulator, fake_clock, resume_window_seconds=86400)
    live = connect(emulator, "message")
    live_serials = [serial_of(live.recv()) for _ in range(17)]
    live.close()
    assert emulator.wait_idle()
    replay = connect(emulator, "message", sinceTime="2025-01-10T12:30:00-0000", toTime="2025-01-10T12:45:00-0000")
    lines, code, _ = read_until_close(replay)
    assert live_serials == list(range(17))
    assert [serial_of(line) for line in lines] == [10, 11, 12, 13, 14, 15]
    assert code == 1000


@pytest.mark.integration
def test_replay_without_totime_continues_live(make_emulator, fake_clock):
    emulator = replay_emulator(make_emulator, fake_clock)
    ws = connect(emulator, "message", sinceTime="2025-01-10T11:15:00-0000")
    serials = [serial_of(ws.recv()) for _ in range(13)]
    fake_clock.advance(600)
    serials.append(serial_of(ws.recv()))
    ws.close()
    assert serials == list(range(4, 18))


@pytest.mark.integration
@pytest.mark.parametrize("since, first_serial", [
    ("2025-01-10T11:15:00-0000", 4),
    ("2025-01-10T11:15:00Z", 4),
    ("2025-01-10T11:15:00%2B0000", 4),
    ("2025-01-10T07:15:00-0400", 4),
    ("2025-01-10T11:15:00", 4),
    ("2025-01-10T11:15:00.000000", 4),
    ("2025-01-10T11:15:00.000-0000", 4),
    ("2025-01-10", 0),
])
def test_replay_accepts_time_formats(make_emulator, fake_clock, since, first_serial):
    emulator = replay_emulator(make_emulator, fake_clock)
    ws = connect(emulator, "message", sinceTime=since, toTime="2025-01-10T11:30:00-0000")
    lines, code, _ = read_until_close(ws)
    assert [serial_of(line) for line in lines] == list(range(first_serial, 10))
    assert code == 1000


# Event content


@pytest.mark.integration
@pytest.mark.parametrize("log_type", ["message", "maillog", "audit"])
def test_once_sends_samples_byte_for_byte(make_emulator, log_type):
    emulator = make_emulator(once=True)
    expected = sample_lines(log_type)
    ws = connect(emulator, log_type)
    received = [ws.recv_data_frame()[1].data for _ in expected]
    ws.close()
    assert emulator.wait_idle()
    assert received == expected
    assert emulator.sent_lines(log_type) == [line.decode("utf-8") for line in expected]


@pytest.mark.integration
@pytest.mark.parametrize("log_type", ["message", "maillog", "audit"])
def test_generated_events_fresh_ids_and_ts(emulator, log_type):
    samples = [json.loads(line) for line in sample_lines(log_type)]
    id_key = "id" if log_type == "maillog" else "guid"
    ws = connect(emulator, log_type)
    events = [json.loads(ws.recv()) for _ in range(2 * len(samples) + 3)]
    ws.close()

    assert len({event[id_key] for event in events}) == len(events)
    instants = [parse_ts(event["ts"]) for event in events]
    assert instants == sorted(instants)
    for serial, event in enumerate(events):
        sample = samples[serial % len(samples)]
        assert len(event[id_key]) == len(sample[id_key])
        assert event["ts"][-5:] == sample["ts"][-5:]
        strip = {id_key, "ts"}
        assert {k: v for k, v in event.items() if k not in strip} == {
            k: v for k, v in sample.items() if k not in strip}


@pytest.mark.integration
def test_count_limits_generated_events(make_emulator):
    emulator = make_emulator(count=5)
    ws = connect(emulator, "audit")
    serials = [serial_of(ws.recv()) for _ in range(5)]
    ws.close()
    assert emulator.wait_idle()
    assert serials == [0, 1, 2, 3, 4]
    assert len(emulator.sent_lines("audit")) == 5


@pytest.mark.integration
def test_duplicate_ratio_sends_exact_copies(make_emulator):
    emulator = make_emulator(count=200, duplicate_ratio=0.3, seed=7)
    ws = connect(emulator, "message")
    first_seen, duplicates = {}, 0
    while len(first_seen) < 200:
        line = ws.recv()
        guid = json.loads(line)["guid"]
        if guid in first_seen:
            duplicates += 1
            assert line == first_seen[guid]
        else:
            first_seen[guid] = line
    ws.close()
    assert 20 <= duplicates <= 120


# Faults


@pytest.mark.integration
def test_fault_close_code_and_reason(emulator):
    emulator.add_fault(Fault("close", after=5, code=1011, reason="keepalive ping timeout"))
    ws = connect(emulator, "message")
    lines, code, reason = read_until_close(ws)
    assert emulator.wait_idle()
    assert len(lines) == 5
    assert (code, reason) == (1011, "keepalive ping timeout")
    assert emulator.sessions[-1].close_code == 1011
    assert emulator.sessions[-1].fault == "close"


@pytest.mark.integration
def test_fault_drop_without_close_frame(emulator):
    emulator.add_fault(Fault("drop", after=3))
    ws = connect(emulator, "message")
    lines = [ws.recv() for _ in range(3)]
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data_frame(control_frame=True)
    assert emulator.wait_idle()
    assert len(lines) == 3
    assert emulator.sessions[-1].close_code == 1006


@pytest.mark.integration
def test_fault_reset_connection(emulator):
    emulator.add_fault(Fault("reset", after=0))
    ws = connect(emulator, "message")
    with pytest.raises((ConnectionResetError, websocket.WebSocketConnectionClosedException)):
        ws.recv_data_frame(control_frame=True)
    assert emulator.wait_idle()
    assert emulator.sessions[-1].close_code == 1006


@pytest.mark.integration
def test_fault_stall_answers_no_ping(make_emulator, fake_clock):
    emulator = make_emulator(rate=1.0, clock=fake_clock)
    emulator.add_fault(Fault("stall", after=3))
    ws = connect(emulator, "message")
    assert ws.recv_data_frame(control_frame=True)[0] == ABNF.OPCODE_TEXT
    ws.ping("before")
    assert ws.recv_data_frame(control_frame=True)[0] == ABNF.OPCODE_PONG

    fake_clock.advance(2)  # events 1 and 2 are due; the stall starts after event 2
    assert ws.recv_data_frame(control_frame=True)[0] == ABNF.OPCODE_TEXT
    assert ws.recv_data_frame(control_frame=True)[0] == ABNF.OPCODE_TEXT
    ws.ping("after")
    fake_clock.advance(10)
    ws.settimeout(1.0)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_data_frame(control_frame=True)
    ws.shutdown()
    assert emulator.wait_idle()
    assert emulator.sessions[-1].events_sent == 3


@pytest.mark.integration
def test_fault_stall_drops_after_seconds(emulator):
    emulator.add_fault(Fault("stall", after=0, seconds=0.2))
    ws = connect(emulator, "message")
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        ws.recv_data_frame(control_frame=True)
    assert emulator.wait_idle()
    assert emulator.sessions[-1].close_code == 1006


@pytest.mark.integration
def test_fault_oversized_event_10_mib(emulator):
    emulator.add_fault(Fault("oversized", after=2, size_bytes=10 * MIB))
    ws = connect(emulator, "message")
    lines = [ws.recv() for _ in range(4)]
    ws.close()
    assert [len(line.encode("utf-8")) < 10_000 for line in lines] == [True, True, False, True]
    assert len(lines[2].encode("utf-8")) == 10 * MIB
    assert json.loads(lines[2])["guid"]
    assert [serial_of(lines[i]) for i in (0, 1, 3)] == [0, 1, 2]


@pytest.mark.integration
def test_fault_invalid_frames_then_stream(emulator):
    emulator.add_fault(Fault("invalid_frames", after=1))
    ws = connect(emulator, "message")
    frames = [ws.recv_data_frame() for _ in range(6)]
    ws.close()
    kinds = [(opcode, frame.data) for opcode, frame in frames[1:5]]
    assert kinds == [
        (ABNF.OPCODE_TEXT, b"this is not JSON"),
        (ABNF.OPCODE_BINARY, b'{"guid":"\xff\xfe"}'),
        (ABNF.OPCODE_TEXT, b"[1, 2, 3]"),
        (ABNF.OPCODE_TEXT, b""),
    ]
    assert [serial_of(frames[i][1].data.decode("utf-8")) for i in (0, 5)] == [0, 1]


@pytest.mark.integration
def test_fault_refuse_handshake_status(emulator):
    emulator.add_fault(Fault("refuse", status=503, reason="maintenance"))
    with pytest.raises(websocket.WebSocketBadStatusException) as caught:
        connect(emulator, "message")
    assert caught.value.status_code == 503
    assert caught.value.resp_body == b"maintenance"
    ws = connect(emulator, "message")
    assert json.loads(ws.recv())["guid"]
    ws.close()


@pytest.mark.integration
def test_fault_trickle_answers_pings(emulator):
    emulator.add_fault(Fault("trickle", after=0, size_bytes=3 * MIB, frames=20, seconds=1.0))
    ws = connect(emulator, "message")
    first = ws.recv_frame()
    assert (first.opcode, first.fin) == (ABNF.OPCODE_TEXT, 0)
    ws.ping("during")
    frames = [first]
    while True:
        frame = ws.recv_frame()
        if frame.opcode == ABNF.OPCODE_PONG:
            break
        frames.append(frame)
    assert frames[-1].fin == 0  # the pong arrived before the last fragment
    while frames[-1].fin == 0:
        frames.append(ws.recv_frame())
    ws.close()
    message = b"".join(frame.data for frame in frames)
    assert len(message) == 3 * MIB
    assert json.loads(message)["guid"]
    # websockets ends a message sent from an iterable with an empty final frame.
    assert len([frame for frame in frames if frame.data]) == 20


@pytest.mark.integration
def test_fault_counts_sessions_and_type(emulator):
    emulator.add_fault(Fault("close", after=0, code=4000, sessions=2, log_type="maillog"))
    message = connect(emulator, "message")
    assert json.loads(message.recv())["guid"]
    message.close()
    codes = []
    for _ in range(3):
        ws = connect(emulator, "maillog")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            codes.append(struct.unpack("!H", frame.data[:2])[0])
            ws.shutdown()
        else:
            codes.append("event")
            ws.close()
        assert emulator.wait_idle()
    assert codes == [4000, 4000, "event"]


# TLS, records, logging, stop


@pytest.mark.integration
def test_tls_with_custom_ca(make_emulator, tls_ca):
    ca_file, cert_file, key_file = tls_ca
    emulator = make_emulator(tls_cert=cert_file, tls_key=key_file)
    assert emulator.url.startswith("wss://127.0.0.1:")
    ws = connect(emulator, "message", sslopt={"ca_certs": ca_file})
    assert json.loads(ws.recv())["guid"]
    ws.close()


@pytest.mark.integration
def test_tls_without_ca_fails(make_emulator, tls_ca):
    _, cert_file, key_file = tls_ca
    emulator = make_emulator(tls_cert=cert_file, tls_key=key_file)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(emulator, "message")


@pytest.mark.integration
def test_sessions_recorded_token_never_logged(make_emulator, sentinel_token, caplog):
    caplog.set_level(logging.DEBUG)
    emulator = make_emulator(count=3)
    ws = connect(emulator, "audit")
    assert len([ws.recv() for _ in range(3)]) == 3
    ws.close()
    assert emulator.wait_idle()
    with pytest.raises(websocket.WebSocketBadStatusException):
        connect(emulator, "audit", token="wrong-" + sentinel_token)

    accepted, rejected = emulator.sessions
    assert (accepted.path, accepted.params) == ("/v1/stream", {"cid": CID, "type": "audit"})
    assert (accepted.status, accepted.token_ok, accepted.events_sent) == (101, True, 3)
    assert accepted.close_code == 1000
    assert accepted.started_at <= accepted.ended_at
    assert (rejected.status, rejected.token_ok, rejected.events_sent) == (401, False, 0)
    session_lines = [r for r in caplog.records if r.name.startswith("podspool") and "session" in r.getMessage()]
    assert len(session_lines) == 2
    for record in caplog.records:
        assert sentinel_token not in record.getMessage()
        assert sentinel_token not in str(record.args)


@pytest.mark.integration
def test_stop_closes_sessions_going_away(make_emulator):
    emulator = make_emulator(count=2)
    ws = connect(emulator, "message")
    assert [serial_of(ws.recv()) for _ in range(2)] == [0, 1]
    emulator.stop()
    emulator.stop()
    lines, code, reason = read_until_close(ws)
    assert lines == []
    assert (code, reason) == (1001, "server stopping")


@pytest.mark.integration
def test_stop_drops_client_not_reading(emulator):
    ws = connect(emulator, "message")
    emulator.stop()
    assert emulator.sessions[-1].ended_at is not None
    ws.shutdown()


# Command line


@pytest.mark.integration
def test_cli_prints_listening_line_first(sentinel_token):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{TOKEN_ENV: sentinel_token})
    process = subprocess.Popen([sys.executable, "-m", "podspool.emulator", "--port", "0", "--count", "1"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=20), "the emulator printed nothing within 20 s"
        first_line = process.stdout.readline().rstrip("\n")
        prefix, _, port = first_line.rpartition(":")
        assert prefix == "listening on ws://127.0.0.1"
        assert port.endswith("/v1/stream")
        port_number = int(port.removesuffix("/v1/stream"))
        assert port_number > 0
        url = f"ws://127.0.0.1:{port_number}/v1/stream?cid={CID}&type=message"
        ws = websocket.create_connection(url, header=[f"Authorization: Bearer {sentinel_token}"], timeout=10)
        assert json.loads(ws.recv())["guid"]
        ws.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert sentinel_token not in process.stdout.read() + process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_without_token_exits_2(monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert main(["--port", "0"]) == 2
    assert "--token" in capsys.readouterr().err
