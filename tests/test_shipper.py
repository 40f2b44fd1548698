import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import podspool
from podspool import spool
from podspool.events import dedup_key, event_time
from podspool.outputs.base import Destination, PermanentError, SendResult, TransientError
from podspool.outputs.elasticsearch import document_id
from podspool.outputs.registry import build_destination
from podspool.settings import DeviceSettings, OutputSettings, SpoolSettings
from podspool.shipper import FailureLog, Shipper, routed_devices
from podspool.stats import OutputStats
from http_server import TestHttpServer, free_port

SAMPLES = Path(podspool.__file__).parent / "samples"
LOG_TYPES = ("message", "maillog", "audit")
DEVICES = [DeviceSettings(id=number, name=f"dev-{log_type}", cluster="test", token="unused", type=log_type,
                          tags=("pod", log_type))
           for number, log_type in enumerate(LOG_TYPES, start=1)]
SENTINEL = "SENTINEL-7c1e9b-credential"
WAIT_SECONDS = 20.0


def sample_lines(log_type):
    return [line for line in (SAMPLES / f"{log_type}.ndjson").read_bytes().splitlines() if line.strip()]


def write_spool(root, device, lines, files=1):
    """Write LINES into FILES closed spool files of DEVICE with the real SpoolWriter."""
    settings = SpoolSettings(directory=str(root), rotate_bytes=10**9, rotate_seconds=3600.0, fsync="never",
                             fsync_seconds=1.0, max_bytes=10**10)
    writer = spool.SpoolWriter(settings, device)
    writer.open()
    size = -(-len(lines) // files)
    try:
        for start in range(0, len(lines), size):
            writer.write_many(lines[start:start + size])
            writer.rotate()
    finally:
        writer.close()


def write_all_samples(root, files=1):
    for device in DEVICES:
        write_spool(root, device.name, sample_lines(device.type), files=files)


def output_settings(output_type, options, name="out", **common):
    values = {"batch_max_events": 7, "timeout_seconds": 10.0, "retry_initial_seconds": 0.01,
              "retry_max_seconds": 0.05}
    values.update(common)
    return OutputSettings(name=name, type=output_type, options=dict(options), **values)


class Retention:
    """The service's retention callback: remove a file once every output routing its device has it."""

    def __init__(self, root):
        self.root = root
        self.shippers = []

    def __call__(self, device, closed):
        progresses = [shipper.progress for shipper in self.shippers if device in shipper.devices]
        spool.remove_delivered(self.root, device, progresses)


def make_shipper(tmp_path, settings, retention=None, devices=DEVICES, **kwargs):
    shipper = Shipper(settings, build_destination(settings), spool_root=str(tmp_path / "spool"),
                      state_directory=str(tmp_path / "state"), devices=devices,
                      on_file_done=retention, **kwargs)
    if retention is not None:
        retention.shippers.append(shipper)
    return shipper


def drain(shipper, limit=200):
    for _ in range(limit):
        if not shipper.run_once():
            return
    raise AssertionError("shipper still had files after %d iterations" % limit)


def wait_for(condition, message):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {message}")


def expected_events():
    return sorted(json.dumps(json.loads(line), sort_keys=True)
                  for log_type in LOG_TYPES for line in sample_lines(log_type))


def canonical(events):
    return sorted(json.dumps(event, sort_keys=True) for event in events)


def dead_letters(root, device):
    directory = Path(root) / device / "dead-letter"
    return [json.loads(line) for path in sorted(directory.glob("output-*.ndjson"))
            for line in path.read_text().splitlines()]


def remaining_files(root):
    return [closed for device in DEVICES for closed in spool.list_closed(str(root), device.name)]


# Every sample delivered exactly once, per output type

@pytest.mark.integration
@pytest.mark.parametrize("options", [{}, {"format": "json_array"}, {"gzip": True}],
                         ids=["ndjson", "json_array", "gzip"])
def test_http_delivers_every_sample_once(tmp_path, options):
    write_all_samples(tmp_path / "spool", files=2)
    with TestHttpServer() as server:
        retention = Retention(tmp_path / "spool")
        shipper = make_shipper(tmp_path, output_settings("http", {"url": server.url + "/ingest", **options}),
                               retention)
        drain(shipper)
    assert canonical(server.state.events) == expected_events()
    assert remaining_files(tmp_path / "spool") == []
    assert shipper.stats.events_delivered == len(expected_events())
    assert shipper.stats.backlog_files == 0
    if options.get("gzip"):
        assert all(request.headers.get("content-encoding") == "gzip" for request in server.state.requests)


@pytest.mark.integration
def test_splunk_hec_delivers_samples_with_time(tmp_path):
    write_all_samples(tmp_path / "spool")
    with TestHttpServer(hec_token="hec-token") as server:
        settings = output_settings("splunk_hec", {"url": server.url, "token": "hec-token", "host": "collector1"})
        drain(make_shipper(tmp_path, settings, Retention(tmp_path / "spool")))
    assert canonical(server.state.events) == expected_events()
    for obj in server.state.hec_objects:
        moment = event_time(obj["event"])
        assert abs(obj["time"] - moment.timestamp()) < 1e-6
        assert obj["host"] == "collector1"
        assert obj["sourcetype"].startswith("proofpoint:pod:")
        assert obj["source"].startswith("podspool:dev-")
    body = b"".join(request.body for request in server.state.requests)
    # 2024-05-22T12:10:03.058340-0700 is 2024-05-22T19:10:03.058340Z, epoch 1716405003.058340.
    assert b'"time":1716405003.058340,' in body


@pytest.mark.integration
def test_elasticsearch_delivers_samples_with_ids(tmp_path):
    write_all_samples(tmp_path / "spool")
    with TestHttpServer() as server:
        drain(make_shipper(tmp_path, output_settings("elasticsearch", {"url": server.url}),
                           Retention(tmp_path / "spool")))
    assert canonical(server.state.documents.values()) == expected_events()
    for (index, doc_id), document in server.state.documents.items():
        line = json.dumps(document, separators=(",", ":")).encode()
        assert doc_id == document_id(dedup_key(document, line))
        assert index.startswith("logs-proofpoint_on_demand.")
        assert index.endswith("-default")
    assert {index for index, _ in server.state.documents} == {
        f"logs-proofpoint_on_demand.{log_type}-default" for log_type in LOG_TYPES}


def test_file_output_delivers_every_sample(tmp_path):
    write_all_samples(tmp_path / "spool", files=3)
    template = str(tmp_path / "delivered" / "{device}" / "{type}-{date}.ndjson")
    shipper = make_shipper(tmp_path, output_settings("file", {"path": template}), Retention(tmp_path / "spool"))
    shipper.destination.clock = lambda: 1716404403.0  # 2024-05-22T19:00:03Z
    drain(shipper)
    events = []
    for device in DEVICES:
        path = tmp_path / "delivered" / device.name / f"{device.type}-2024-05-22.ndjson"
        assert path.stat().st_mode & 0o777 == 0o640
        assert path.parent.stat().st_mode & 0o777 == 0o750
        events.extend(json.loads(line) for line in path.read_text().splitlines())
    assert canonical(events) == expected_events()
    assert remaining_files(tmp_path / "spool") == []


# Failures and recovery

@pytest.mark.integration
def test_outage_then_busy_loses_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="podspool")
    write_all_samples(tmp_path / "spool")
    port = free_port()
    server = TestHttpServer(port=port)
    stats = OutputStats()
    shipper = make_shipper(tmp_path, output_settings("http", {"url": f"http://127.0.0.1:{port}/ingest"}),
                           Retention(tmp_path / "spool"), stats=stats, poll_seconds=0.05)
    shipper.start()
    try:
        wait_for(lambda: stats.failing_since is not None and stats.backlog_files == 3, "failures while down")
        assert stats.backlog_bytes > 0
        assert "ConnectionError" in stats.last_error
        server.fail_next(2, 503, retry_after="1")
        server.start()
        wait_for(lambda: stats.backlog_files == 0, "backlog drained")
    finally:
        assert shipper.stop(timeout=10)
        server.stop()
    assert canonical(server.state.events) == expected_events()
    assert stats.failing_since is None
    busy = [record for record in caplog.records
            if getattr(record, "event", None) == "delivery_failed" and record.status_code == 503]
    assert len(busy) == 2
    assert all(record.delay_seconds == 1.0 for record in busy)
    assert all(record.output == "out" for record in caplog.records if record.name == "podspool.shipper")


@pytest.mark.integration
@pytest.mark.parametrize("output_type", ["http", "splunk_hec"])
def test_bad_event_alone_is_dead_lettered(tmp_path, output_type):
    lines = [json.dumps({"guid": f"g{number}", "ts": "2024-05-22T12:10:03.058340-0700", "n": number,
                         "bad": number == 5}, separators=(",", ":")).encode() for number in range(10)]
    write_spool(tmp_path / "spool", "dev-message", lines)
    with TestHttpServer() as server:
        server.state.reject = lambda event: event.get("bad") is True
        url = server.url + ("/ingest" if output_type == "http" else "")
        settings = output_settings(output_type, {"url": url, **({"token": "t"} if output_type != "http" else {})},
                                   batch_max_events=10)
        shipper = make_shipper(tmp_path, settings, Retention(tmp_path / "spool"))
        drain(shipper)
    assert sorted(event["n"] for event in server.state.events) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    records = dead_letters(tmp_path / "spool", "dev-message")
    assert [record["event"]["n"] for record in records] == [5]
    assert records[0]["output"] == "out"
    assert "400" in records[0]["reason"]
    assert shipper.stats.events_rejected == 1
    assert remaining_files(tmp_path / "spool") == []


@pytest.mark.integration
def test_hec_ack_confirms_before_progress(tmp_path):
    write_spool(tmp_path / "spool", "dev-message", sample_lines("message"))
    with TestHttpServer(hec_token="tok") as server:
        server.state.ack_false_polls = 3
        settings = output_settings("splunk_hec", {"url": server.url, "token": "tok", "ack": True,
                                                  "ack_poll_seconds": 0.02}, batch_max_events=100)
        shipper = make_shipper(tmp_path, settings, devices=DEVICES[:1])
        polls_at_advance = []
        original = shipper.progress.advance

        def advance(device, name, offset):
            polls_at_advance.append(dict(server.state.ack_polls))
            original(device, name, offset)

        shipper.progress.advance = advance
        drain(shipper)
    assert polls_at_advance == [{0: 4}]
    ack_requests = [request for request in server.state.requests if request.path.endswith("/ack")]
    assert len(ack_requests) == 4
    assert all(request.query == {} and request.headers["x-splunk-request-channel"] for request in ack_requests)


@pytest.mark.integration
def test_hec_without_ack_keeps_file(tmp_path):
    write_spool(tmp_path / "spool", "dev-message", sample_lines("message"))
    with TestHttpServer(hec_token="tok") as server:
        server.state.ack_false_polls = 10**9
        settings = output_settings("splunk_hec", {"url": server.url, "token": "tok", "ack": True,
                                                  "ack_poll_seconds": 0.02, "ack_timeout_seconds": 0.2})
        shipper = make_shipper(tmp_path, settings, Retention(tmp_path / "spool"), devices=DEVICES[:1],
                               poll_seconds=0.05)
        shipper.start()
        wait_for(lambda: shipper.stats.failing_since is not None, "ack timeout reported")
        assert shipper.stop(timeout=10)
    closed = spool.list_closed(str(tmp_path / "spool"), "dev-message")
    assert len(closed) == 1
    assert shipper.progress.offset("dev-message", closed[0].name) == 0
    assert "did not acknowledge" in shipper.stats.last_error


@pytest.mark.integration
def test_bulk_mixed_items_settle_separately(tmp_path):
    lines = [json.dumps({"id": f"m{number}", "ts": "2024-06-19T05:25:41.855197-07:00", "n": number},
                        separators=(",", ":")).encode() for number in range(8)]
    write_spool(tmp_path / "spool", "dev-maillog", lines)
    with TestHttpServer() as server:
        index = "logs-proofpoint_on_demand.maillog-default"
        # Events 0 and 1 are already indexed (a re-sent batch): 409, counted as delivered.
        for number in (0, 1):
            event = json.loads(lines[number])
            server.state.documents[(index, document_id(dedup_key(event, lines[number])))] = event
        server.state.reject = lambda event: event["n"] == 3
        server.state.item_retry = lambda event: event["n"] in (5, 6)
        server.state.item_retry_budget = 2
        shipper = make_shipper(tmp_path, output_settings("elasticsearch", {"url": server.url}, batch_max_events=8),
                               Retention(tmp_path / "spool"), devices=DEVICES[1:2])
        drain(shipper)
    bulk = [request for request in server.state.requests if request.path == "/_bulk"]
    assert len(bulk) == 2
    resent = [json.loads(line) for line in bulk[1].body.decode().splitlines()[1::2]]
    assert [event["n"] for event in resent] == [5, 6]
    assert sorted(document["n"] for document in server.state.documents.values()) == [0, 1, 2, 4, 5, 6, 7]
    assert [record["event"]["n"] for record in dead_letters(tmp_path / "spool", "dev-maillog")] == [3]
    assert "mapper_parsing_exception" in dead_letters(tmp_path / "spool", "dev-maillog")[0]["reason"]
    assert shipper.stats.events_delivered == 7
    assert shipper.stats.events_rejected == 1


def run_child(tmp_path, output_type, url):
    command = [sys.executable, str(Path(__file__).parent / "shipper_child.py"), str(tmp_path / "spool"),
               str(tmp_path / "state"), output_type, url, "5"]
    command += [f"{device.name}:{device.type}" for device in DEVICES]
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    return subprocess.Popen(command, env=environment, stderr=subprocess.PIPE)


@pytest.mark.integration
@pytest.mark.parametrize("output_type", ["http", "elasticsearch"])
def test_sigkill_mid_batch_repeats_one_batch(tmp_path, output_type):
    write_all_samples(tmp_path / "spool", files=2)
    with TestHttpServer() as server:
        url = server.url + ("/ingest" if output_type == "http" else "")
        server.hold_next(skip=3)
        child = run_child(tmp_path, output_type, url)
        try:
            assert server.held.wait(WAIT_SECONDS), "the held request never arrived"
            child.send_signal(signal.SIGKILL)
            assert child.wait(WAIT_SECONDS) == -signal.SIGKILL
        finally:
            child.kill()
            server.release.set()
        child.stderr.close()
        restarted = run_child(tmp_path, output_type, url)
        _, errors = restarted.communicate(timeout=60)
        assert restarted.returncode == 0, errors.decode()
    if output_type == "http":
        delivered = canonical(server.state.events)
        assert sorted(set(delivered)) == expected_events()
        assert 1 <= len(delivered) - len(expected_events()) <= 5
    else:
        assert canonical(server.state.documents.values()) == expected_events()
        assert 1 <= server.state.es_creates - len(expected_events()) <= 5


def test_file_removed_after_both_outputs(tmp_path):
    write_spool(tmp_path / "spool", "dev-audit", sample_lines("audit"))
    retention = Retention(tmp_path / "spool")
    devices = DEVICES[2:]
    first = make_shipper(tmp_path, output_settings("file", {"path": str(tmp_path / "a.ndjson")}, name="a"),
                         retention, devices=devices)
    second = make_shipper(tmp_path, output_settings("file", {"path": str(tmp_path / "b.ndjson")}, name="b"),
                          retention, devices=devices)
    drain(first)
    assert len(spool.list_closed(str(tmp_path / "spool"), "dev-audit")) == 1
    assert second.stats.backlog_files == 0  # not scanned yet
    second.scan()
    assert second.stats.backlog_files == 1
    drain(second)
    assert spool.list_closed(str(tmp_path / "spool"), "dev-audit") == []
    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()


# Credentials never leak

@pytest.mark.integration
@pytest.mark.parametrize("case", ["hec_refused", "hec_403", "hec_bad_header", "es_api_key", "es_password"])
def test_credentials_never_logged(tmp_path, caplog, case):
    caplog.set_level(logging.DEBUG)
    write_spool(tmp_path / "spool", "dev-message", sample_lines("message")[:3])
    server = TestHttpServer(hec_token="the-right-token", es_authorization="ApiKey the-right-key").start()
    refused = f"http://127.0.0.1:{free_port()}"
    options = {
        "hec_refused": ("splunk_hec", {"url": refused, "token": SENTINEL}),
        "hec_403": ("splunk_hec", {"url": server.url, "token": SENTINEL}),
        "hec_bad_header": ("splunk_hec", {"url": server.url, "token": SENTINEL + "\n"}),
        "es_api_key": ("elasticsearch", {"url": [refused, server.url], "api_key": SENTINEL}),
        "es_password": ("elasticsearch", {"url": server.url, "username": "podspool", "password": SENTINEL}),
    }[case]
    shipper = make_shipper(tmp_path, output_settings(*options), devices=DEVICES[:1], poll_seconds=0.05)
    shipper.start()
    try:
        wait_for(lambda: shipper.failures.in_a_row >= 3, "three failed attempts")
    finally:
        assert shipper.stop(timeout=10)
        server.stop()
    assert SENTINEL not in caplog.text
    assert SENTINEL not in repr(shipper.destination)
    assert SENTINEL not in str(shipper.stats.as_dict())
    assert not list((tmp_path / "spool" / "dev-message").glob("dead-letter/*"))
    failures = [record for record in caplog.records if getattr(record, "event", None) == "delivery_failed"]
    assert failures and all(record.exc_info is None for record in failures)
    for record in failures:
        assert SENTINEL not in json.dumps(record.__dict__, default=str)


# Shipper mechanics with in-memory destinations

class ScriptedDestination(Destination):
    """Return results from a list of callables, one per send, and record every batch."""

    def __init__(self, settings, script):
        super().__init__(settings)
        self.script = list(script)
        self.batches = []
        self.closed = 0

    def send(self, records):
        self.batches.append([json.loads(record.line)["n"] for record in records])
        return self.script.pop(0)(records) if self.script else SendResult()

    def close(self):
        self.closed += 1


def numbered_spool(tmp_path, count):
    lines = [json.dumps({"guid": f"g{n}", "ts": "2024-05-22T12:10:03.058340-0700", "n": n}).encode()
             for n in range(count)]
    write_spool(tmp_path / "spool", "dev-message", lines)


def scripted_shipper(tmp_path, script, **common):
    settings = output_settings("http", {"url": "http://127.0.0.1:9/"}, **common)
    destination = ScriptedDestination(settings, script)
    shipper = Shipper(settings, destination, spool_root=str(tmp_path / "spool"),
                      state_directory=str(tmp_path / "state"), devices=DEVICES[:1])
    return shipper, destination


def raise_(exc):
    def answer(records):
        raise exc
    return answer


def test_permanent_error_splits_to_one_event(tmp_path):
    numbered_spool(tmp_path, 4)

    def reject_if_two(records):
        if any(json.loads(record.line)["n"] == 2 for record in records):
            raise PermanentError("HTTP 400", response={"error": "bad"})
        return SendResult()

    shipper, destination = scripted_shipper(tmp_path, [reject_if_two] * 10, batch_max_events=4)
    drain(shipper)
    assert destination.batches[:5] == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3]]
    records = dead_letters(tmp_path / "spool", "dev-message")
    assert [(record["event"]["n"], record["response"]) for record in records] == [(2, {"error": "bad"})]


def test_unexpected_error_retried_logged_once(tmp_path, caplog):
    numbered_spool(tmp_path, 2)
    shipper, destination = scripted_shipper(tmp_path, [raise_(KeyError("x"))] * 3)
    drain(shipper)
    assert len(destination.batches) == 4
    assert shipper.stats.events_delivered == 2
    assert len([record for record in caplog.records if record.exc_info]) == 1


def test_stop_interrupts_backoff(tmp_path):
    numbered_spool(tmp_path, 2)
    shipper, destination = scripted_shipper(tmp_path, [raise_(TransientError("down"))] * 1000,
                                            retry_initial_seconds=600.0, retry_max_seconds=600.0)
    shipper.start()
    wait_for(lambda: len(destination.batches) >= 1, "first attempt")
    assert shipper.stop(timeout=5)
    assert destination.closed == 1
    closed = spool.list_closed(str(tmp_path / "spool"), "dev-message")
    assert shipper.progress.offset("dev-message", closed[0].name) == 0


def test_failure_log_rate_limits_repeats(caplog):
    caplog.set_level(logging.WARNING)
    now = [1000.0]
    failures = FailureLog("out", lambda: now[0])
    for attempt in range(1, 11):
        failures.failed(TransientError("down"), attempt, 1.0)
    assert len(caplog.records) == 3
    now[0] += 61.0
    failures.failed(TransientError("down"), 11, 1.0)
    assert len(caplog.records) == 4
    assert caplog.records[-1].suppressed == 7


def test_routed_devices_by_name_and_tag():
    def names(devices):
        return [device.name for device in routed_devices(OutputSettings(name="o", type="http", devices=devices),
                                                         DEVICES)]

    assert names(()) == ["dev-message", "dev-maillog", "dev-audit"]
    assert names(("dev-audit",)) == ["dev-audit"]
    assert names(("maillog", "dev-message")) == ["dev-message", "dev-maillog"]
    assert names(("nothing",)) == []


def test_scan_reports_backlog_and_lag(tmp_path):
    numbered_spool(tmp_path, 3)
    shipper, _ = scripted_shipper(tmp_path, [])
    closed = spool.list_closed(str(tmp_path / "spool"), "dev-message")[0]
    pending = shipper.scan(now=closed.closed_at + 42.0)
    assert [item.name for item in pending] == [closed.name]
    assert shipper.stats.backlog_files == 1
    assert shipper.stats.backlog_bytes == closed.size
    assert shipper.stats.lag_seconds == 42.0


def test_dead_letter_logs_rate_limited(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    now = [1000.0]
    settings = output_settings("file", {"path": str(tmp_path / "out" / "{device}.ndjson")})
    shipper = make_shipper(tmp_path, settings, clock=lambda: now[0])
    for index in range(10):
        shipper.dead_letter_events("dev", [({"guid": f"g{index}"}, "rejected", {"status": 400})])
    now[0] += 61
    shipper.dead_letter_events("dev", [({"guid": "late"}, "rejected", {"status": 400})])

    records = [r for r in caplog.records if getattr(r, "event", None) == "dead_lettered"]
    assert len(records) == 4
    assert records[-1].suppressed == 7
    assert "7 more earlier, not logged" in records[-1].getMessage()
    assert shipper.stats.events_rejected == 11
    assert len(dead_letters(tmp_path / "spool", "dev")) == 11


def test_progress_save_failure_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    write_all_samples(tmp_path / "spool")
    (tmp_path / "state").mkdir()
    blocker = tmp_path / "state" / "outputs"
    blocker.write_text("a file where the progress directory belongs")
    path = tmp_path / "delivered" / "{device}.ndjson"
    shipper = make_shipper(tmp_path, output_settings("file", {"path": str(path)}), Retention(tmp_path / "spool"),
                           poll_seconds=0.05)
    shipper.start()
    try:
        wait_for(lambda: any("saving the progress failed" in r.getMessage() for r in caplog.records),
                 "the failed progress save logged")
        blocker.unlink()
        wait_for(lambda: remaining_files(tmp_path / "spool") == [], "delivery after the state is writable")
    finally:
        shipper.stop(5)
    failures = [r for r in caplog.records if "saving the progress failed" in r.getMessage()]
    assert all(r.exc_info is None for r in failures)
    events = [json.loads(line) for device in DEVICES
              for line in (tmp_path / "delivered" / f"{device.name}.ndjson").read_text().splitlines()]
    assert set(canonical(events)) == set(expected_events())
