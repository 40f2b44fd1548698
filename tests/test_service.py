"""`podspool run` as a subprocess against the emulator: stop, reload, notify, metrics, status."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from podspool.emulator import Emulator

pytestmark = pytest.mark.integration

SENTINEL = "SENTINEL-TOKEN-31c0ffee"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def device_entry(number, name, url, log_type="message", extra=""):
    return textwrap.indent(textwrap.dedent(f"""\
        - id: {number}
          name: {name}
          type: proofpoint
          properties:
            endpoint: "{url}"
            cluster: example_hosted
            token: "${{POD_TOKEN}}"
            type: {log_type}
            reconnect_initial_seconds: 0.2
            reconnect_max_seconds: 1
            {extra}
        """), "  ")


def write_config(directory, devices, metrics_port=None, outputs=True):
    metrics = f'metrics: {{listen: "127.0.0.1:{metrics_port}", unhealthy_after_seconds: 1}}\n' if metrics_port else ""
    output = textwrap.dedent(f"""\
        outputs:
          - name: archive
            type: file
            path: "{directory}/delivered/{{device}}.ndjson"
        """) if outputs else ""
    path = directory / "podspool.yaml"
    path.write_text(textwrap.dedent(f"""\
        spool:
          directory: {directory}/spool
          rotate_seconds: 0.5
        state_directory: {directory}/state
        secrets_directory: {directory}/secrets
        log: {{format: json, level: info}}
        """) + metrics + output + "devices:\n" + "".join(devices))
    return path


RUNNING = []


@pytest.fixture(autouse=True)
def kill_leftover_runs():
    """Kill the `podspool run` processes a failed test left behind."""
    yield
    while RUNNING:
        process = RUNNING.pop()
        if process.poll() is None:
            process.kill()
            process.wait(10)


class Run:
    """A `podspool run` subprocess whose stderr is collected in a file."""

    def __init__(self, config_file, directory, environ=None):
        self.stderr_path = directory / f"stderr-{time.monotonic_ns()}.log"
        env = dict(os.environ, POD_TOKEN=SENTINEL)
        env.update(environ or {})
        self.stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "podspool", "run", "-c", str(config_file)],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env,
        )
        RUNNING.append(self.process)

    def records(self):
        records = []
        for line in self.stderr_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                records.append({"message": line})
        return records

    def wait_for(self, predicate, timeout=30.0, what="condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            assert self.process.poll() is None, f"podspool exited early: {self.stderr_path.read_text()}"
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {self.stderr_path.read_text()[-3000:]}")

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        self.process.send_signal(sig)
        started = time.monotonic()
        status = self.process.wait(timeout)
        self.stderr.close()
        return status, time.monotonic() - started


def spooled_lines(directory, device):
    lines = []
    root = directory / "spool" / device
    if root.is_dir():
        for name in sorted(os.listdir(root)):
            if name.endswith(".ndjson"):
                lines += (root / name).read_text().splitlines()
    delivered = directory / "delivered" / f"{device}.ndjson"
    if delivered.exists():
        lines += delivered.read_text().splitlines()
    return lines


def status_document(directory):
    path = directory / "state" / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def emulator():
    server = Emulator(host="127.0.0.1", port=0, token=SENTINEL, cluster="example_hosted",
                      rate=2000, count=None).start()
    yield server
    server.stop()


def test_run_sigterm_mid_stream_loses_nothing(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("events_spooled", 0) > 500,
                 what="500 events spooled")
    status, seconds = run.stop()
    records = run.records()

    assert status == 0
    assert seconds < 10
    assert records[-1].get("event") == "stopped"
    spooled = spooled_lines(tmp_path, "pod")
    received = status_document(tmp_path)["devices"]["pod"]["events_received"]
    assert len(spooled) == len(set(spooled))
    assert len(spooled) == received
    assert not [name for name in os.listdir(tmp_path / "spool" / "pod") if name.endswith(".open")]
    sent = emulator.sent_lines("message")
    assert spooled == sent[:len(spooled)]


def test_run_second_signal_stops_at_once(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("connected"),
                 what="connected")
    run.process.send_signal(signal.SIGTERM)
    run.process.send_signal(signal.SIGTERM)
    status, seconds = run.stop(signal.SIGTERM, timeout=10)
    assert seconds < 5
    assert status in (0, 1)


def test_run_reload_adds_removes_changes(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "keep", emulator.url),
                                          device_entry(2, "drop", emulator.url, "maillog")])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: len([s for s in emulator.sessions if s.status == 101]) >= 2, what="two sessions")
    sessions_before = len(emulator.sessions)

    write_config(tmp_path, [device_entry(1, "keep", emulator.url),
                            device_entry(3, "added", emulator.url, "audit")])
    run.process.send_signal(signal.SIGHUP)
    run.wait_for(lambda: any(r.get("event") == "config_reloaded" for r in run.records()), what="reload")
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("added", {}).get("connected"),
                 what="added device connected")
    reloaded = [r for r in run.records() if r.get("event") == "config_reloaded"][-1]
    assert "device drop stopped" in reloaded["message"]
    assert "device added started" in reloaded["message"]
    assert "device keep" not in reloaded["message"]
    new_sessions = emulator.sessions[sessions_before:]
    assert [s.params.get("type") for s in new_sessions if s.status == 101] == ["audit"]

    write_config(tmp_path, [device_entry(1, "keep", emulator.url, extra="replay_idle_seconds: 5"),
                            device_entry(3, "added", emulator.url, "audit")])
    run.process.send_signal(signal.SIGHUP)
    run.wait_for(lambda: len([r for r in run.records() if r.get("event") == "config_reloaded"]) >= 2,
                 what="second reload")
    second = [r for r in run.records() if r.get("event") == "config_reloaded"][-1]
    assert "device keep stopped" in second["message"]
    assert "device keep started" in second["message"]
    assert "device added" not in second["message"]
    status, _ = run.stop()
    assert status == 0


def test_run_invalid_reload_keeps_running(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("connected"),
                 what="connected")
    config_file.write_text(config_file.read_text() + "bogus_key: 1\n")
    run.process.send_signal(signal.SIGHUP)
    run.wait_for(lambda: any(r.get("event") == "config_reload_failed" for r in run.records()), what="failure")
    failed = [r for r in run.records() if r.get("event") == "config_reload_failed"][0]
    assert failed["level"] == "ERROR"
    assert "bogus_key" in failed["error"]
    before = status_document(tmp_path)["devices"]["pod"]["events_spooled"]
    run.wait_for(lambda: status_document(tmp_path)["devices"]["pod"]["events_spooled"] > before + 100,
                 what="events still flowing")
    status, _ = run.stop()
    assert status == 0


def test_run_notify_socket_messages(tmp_path, emulator):
    notify_path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(notify_path)
    receiver.settimeout(0.2)
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path, {"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"})
    messages = []

    def collect():
        try:
            while True:
                messages.append(receiver.recv(4096).decode())
        except socket.timeout:
            pass
        return any("WATCHDOG=1" in m for m in messages) and any("STATUS=" in m for m in messages[1:])

    run.wait_for(collect, what="READY, STATUS and WATCHDOG")
    status, _ = run.stop()
    collect()
    receiver.close()
    assert status == 0
    assert "READY=1" in messages[0]
    assert any(m.startswith("STATUS=") and "devices connected" in m for m in messages)
    assert any("WATCHDOG=1" in m for m in messages)
    assert any("STOPPING=1" in m for m in messages)
    assert not any(SENTINEL in m for m in messages)


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_run_metrics_and_health(tmp_path):
    server = Emulator(host="127.0.0.1", port=0, token=SENTINEL, cluster="example_hosted", once=True).start()
    port = free_port()
    try:
        config_file = write_config(tmp_path, [device_entry(1, "pod", server.url)], metrics_port=port)
        run = Run(config_file, tmp_path)
        expected = len(server.sent_lines("message")) or 18
        run.wait_for(lambda: status_document(tmp_path).get("outputs", {}).get("archive", {})
                     .get("events_delivered", 0) >= 18, what="samples delivered")
        status, metrics = fetch(f"http://127.0.0.1:{port}/metrics")
        health_status, health_text = fetch(f"http://127.0.0.1:{port}/healthz")
        run.stop()
    finally:
        server.stop()
    assert status == 200
    assert 'podspool_device_events_spooled_total{device="pod"} 18.0' in metrics
    assert 'podspool_device_connected{device="pod"} 1.0' in metrics
    assert 'podspool_output_events_delivered_total{output="archive"} 18.0' in metrics
    assert "podspool_output_backlog_files" in metrics
    assert SENTINEL not in metrics
    assert health_status == 200
    assert health_text.strip() == "ok"
    assert expected >= 18


def test_run_health_and_status_when_failing(tmp_path, emulator):
    port = free_port()
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)], metrics_port=port)
    run = Run(config_file, tmp_path, {"POD_TOKEN": "wrong-" + SENTINEL})
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("last_handshake_status")
                 == 401, what="401 recorded")
    health_status, health_text = fetch(f"http://127.0.0.1:{port}/healthz")
    result = subprocess.run([sys.executable, "-m", "podspool", "status", "-c", str(config_file)],
                            capture_output=True, text=True, env=dict(os.environ, POD_TOKEN="x"), timeout=30)
    run.stop()
    assert health_status == 503
    assert "401" in health_text
    assert result.returncode == 1
    assert "pod" in result.stdout
    assert "401" in result.stderr
    assert SENTINEL not in result.stdout + result.stderr + run.stderr_path.read_text()


def test_status_json_healthy(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("connected"),
                 what="connected")
    run.wait_for(lambda: status_document(tmp_path)["devices"]["pod"]["events_spooled"] > 0, what="events")
    result = subprocess.run([sys.executable, "-m", "podspool", "status", "--json", "-c", str(config_file)],
                            capture_output=True, text=True, env=dict(os.environ, POD_TOKEN=SENTINEL), timeout=30)
    run.stop()
    document = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert set(document) == {"devices", "outputs"}
    assert set(document["devices"]["pod"]) == {"connected", "last_event_time", "checkpoint", "events_spooled",
                                               "duplicates_dropped", "dead_lettered", "reconnects", "last_error"}
    assert set(document["outputs"]["archive"]) == {"backlog_files", "backlog_bytes", "events_delivered",
                                                   "lag_seconds", "last_error"}
    assert document["devices"]["pod"]["connected"] is True
    assert document["devices"]["pod"]["last_event_time"].endswith("Z")
    assert SENTINEL not in result.stdout + result.stderr


def test_systemd_unit_verifies(tmp_path):
    unit = (os.path.dirname(__file__) + "/../systemd/podspool.service")
    text = open(unit).read().replace("/usr/local/bin/podspool", f"{sys.executable} -m podspool")
    copy = tmp_path / "podspool.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Type=notify" in text
    assert "RestartPreventExitStatus=2" in text
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("Type=notify", "Type=notifyy"))
    result = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "notifyy" in result.stderr


def test_second_run_on_same_directories_rejected(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("events_spooled", 0) > 100,
                 what="events spooled")
    second = subprocess.run([sys.executable, "-m", "podspool", "run", "-c", str(config_file)],
                            capture_output=True, text=True, timeout=30, env=dict(os.environ, POD_TOKEN=SENTINEL))
    before = status_document(tmp_path)["outputs"]["archive"]["events_delivered"]
    run.wait_for(lambda: status_document(tmp_path)["outputs"]["archive"]["events_delivered"] > before + 100,
                 what="delivery goes on")
    status, _ = run.stop()
    assert second.returncode == 1
    assert "is in use by another podspool process" in second.stderr
    assert "Traceback" not in second.stderr
    assert status == 0
    spooled = spooled_lines(tmp_path, "pod")
    assert len(spooled) == len(set(spooled))
    assert spooled == emulator.sent_lines("message")[:len(spooled)]
    assert len(spooled) == status_document(tmp_path)["devices"]["pod"]["events_received"]


def test_reload_removed_device_files_delivered(tmp_path, emulator):
    # Files rotate after 30 s only, so the removed device's events are all in its active
    # file, which closes only when the reload stops the device.
    config_file = write_config(tmp_path, [device_entry(1, "keep", emulator.url),
                                          device_entry(2, "gone", emulator.url, "maillog")])
    config_file.write_text(config_file.read_text().replace("rotate_seconds: 0.5", "rotate_seconds: 30"))
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("gone", {}).get("events_spooled", 0) > 50,
                 what="events of the device to remove")
    write_config(tmp_path, [device_entry(1, "keep", emulator.url)])
    config_file.write_text(config_file.read_text().replace("rotate_seconds: 0.5", "rotate_seconds: 30"))
    run.process.send_signal(signal.SIGHUP)
    run.wait_for(lambda: any(r.get("event") == "config_reloaded" for r in run.records()), what="reload")
    gone_dir = tmp_path / "spool" / "gone"
    run.wait_for(lambda: not [n for n in os.listdir(gone_dir) if n.endswith(".ndjson")],
                 what="the removed device's files delivered")
    status, _ = run.stop()
    assert status == 0
    delivered = (tmp_path / "delivered" / "gone.ndjson").read_text().splitlines()
    assert len(delivered) == len(set(delivered))
    assert delivered == emulator.sent_lines("maillog")[:len(delivered)]
    assert len(delivered) == status_document(tmp_path)["devices"].get("gone", {}).get(
        "events_spooled", len(delivered))


def test_reload_spool_directory_change_rejected(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("outputs", {}).get("archive", {})
                 .get("events_delivered", 0) > 100, what="delivery")
    config_file.write_text(config_file.read_text().replace(f"{tmp_path}/spool", f"{tmp_path}/spool2"))
    run.process.send_signal(signal.SIGHUP)
    run.wait_for(lambda: any(r.get("event") == "config_reload_failed" for r in run.records()), what="rejection")
    failed = [r for r in run.records() if r.get("event") == "config_reload_failed"][-1]
    before = status_document(tmp_path)["outputs"]["archive"]["events_delivered"]
    run.wait_for(lambda: status_document(tmp_path)["outputs"]["archive"]["events_delivered"] > before + 100,
                 what="delivery from the old spool goes on")
    status, _ = run.stop()
    assert failed["level"] == "ERROR"
    assert "podspool.yaml: spool.directory: cannot change on reload" in failed["message"]
    assert not (tmp_path / "spool2").exists()
    assert status == 0


def test_reload_keeps_counters(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("events_spooled", 0) > 200,
                 what="events")
    write_config(tmp_path, [device_entry(1, "pod", emulator.url, extra="replay_idle_seconds: 7")])
    before = status_document(tmp_path)["devices"]["pod"]["events_spooled"]
    run.process.send_signal(signal.SIGHUP)
    run.wait_for(lambda: any(r.get("event") == "config_reloaded" for r in run.records()), what="reload")
    time.sleep(1.5)
    after = status_document(tmp_path)["devices"]["pod"]["events_spooled"]
    run.stop()
    assert after >= before


def test_status_unhealthy_when_never_connected(tmp_path):
    url = f"ws://127.0.0.1:{free_port()}/v1/stream"
    config_file = write_config(tmp_path, [device_entry(1, "pod", url)], metrics_port=free_port())
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("reconnects", 0) >= 2,
                 what="failed reconnects")
    time.sleep(1.2)
    result = subprocess.run([sys.executable, "-m", "podspool", "status", "-c", str(config_file)],
                            capture_output=True, text=True, timeout=30, env=dict(os.environ))
    run.stop()
    assert result.returncode == 1
    assert "device pod has had no session for" in result.stderr


def test_status_damaged_file(tmp_path):
    config_file = write_config(tmp_path, [device_entry(1, "pod", "ws://127.0.0.1:1/v1/stream")])
    (tmp_path / "state").mkdir()
    for content in ["{", "[]", '{"updated_epoch": "soon", "devices": {}, "outputs": {}}',
                    '{"updated_epoch": 1, "devices": {"pod": 3}, "outputs": {}}']:
        (tmp_path / "state" / "status.json").write_text(content)
        result = subprocess.run([sys.executable, "-m", "podspool", "status", "-c", str(config_file)],
                                capture_output=True, text=True, timeout=30, env=dict(os.environ))
        assert result.returncode == 1, content
        assert "Traceback" not in result.stderr, content
        assert "status file" in result.stderr, content


def test_run_metrics_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config_file = write_config(tmp_path, [device_entry(1, "pod", "ws://127.0.0.1:1/v1/stream")],
                                   metrics_port=port)
        result = subprocess.run([sys.executable, "-m", "podspool", "run", "-c", str(config_file)],
                                capture_output=True, text=True, timeout=30,
                                env=dict(os.environ, POD_TOKEN=SENTINEL))
    assert result.returncode == 1
    assert f"metrics.listen 127.0.0.1:{port} cannot be used" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigkill_while_paused_by_cap_no_duplicates(tmp_path):
    """Kill the service while the spool cap pauses it; after restarts, each event is delivered once.

    A file that the outputs delivered and removed while the device was paused
    must not come back through the replay after the crash, so the spool keeps
    delivered files until the device has saved the dedup keys of their events.
    """
    server = Emulator(host="127.0.0.1", port=0, token=SENTINEL, cluster="example_hosted",
                      rate=1500, count=6000).start()
    batch = 50
    try:
        config_file = write_config(tmp_path, [device_entry(1, "pod", server.url)])
        text = config_file.read_text().replace("  rotate_seconds: 0.5\n",
                                               "  rotate_seconds: 0.3\n  max_bytes: 1MiB\n")
        config_file.write_text(text.replace("    type: file\n", f"    type: file\n    batch_max_events: {batch}\n"))
        kills = 0
        for _ in range(4):
            run = Run(config_file, tmp_path)
            run.wait_for(lambda: any(r.get("event") == "spool_paused" for r in run.records()), timeout=30,
                         what="the spool cap pausing the device")
            time.sleep(0.7)
            run.process.kill()
            run.process.wait(10)
            kills += 1
        run = Run(config_file, tmp_path)
        delivered_file = tmp_path / "delivered" / "pod.ndjson"
        run.wait_for(lambda: delivered_file.exists() and len({line for line in delivered_file.read_text()
                                                              .splitlines()}) >= 6000,
                     timeout=120, what="all 6000 events delivered")
        status, _ = run.stop()
    finally:
        server.stop()
    delivered = delivered_file.read_text().splitlines()
    sent = set(server.sent_lines("message"))
    assert status == 0
    assert set(delivered) == sent
    assert len(delivered) - len(sent) <= kills * batch, f"{len(delivered) - len(sent)} repeated events"


def test_run_log_fields_and_text_format(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: any(r.get("event") == "connected" for r in run.records()), what="connected")
    run.stop()
    connected = [r for r in run.records() if r.get("event") == "connected"][0]
    assert connected["device"] == "pod"
    assert connected["cluster"] == "example_hosted"
    assert connected["type"] == "message"
    assert connected["level"] == "INFO"
    delivered = [r for r in run.records() if r.get("output") == "archive"]
    assert delivered

    config_file.write_text(config_file.read_text().replace("log: {format: json, level: info}",
                                                           "log: {format: text, level: info}"))
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: "device pod: connected" in run.stderr_path.read_text(), what="text log line")
    run.stop()
    lines = run.stderr_path.read_text().splitlines()
    assert lines
    assert not any(line.startswith("{") for line in lines)
    assert any(" INFO podspool.device: device pod: connected" in line for line in lines)


def test_status_right_after_stop_not_running(tmp_path, emulator):
    config_file = write_config(tmp_path, [device_entry(1, "pod", emulator.url)])
    run = Run(config_file, tmp_path)
    run.wait_for(lambda: status_document(tmp_path).get("devices", {}).get("pod", {}).get("connected"),
                 what="connected")
    command = [sys.executable, "-m", "podspool", "status", "-c", str(config_file)]
    running = subprocess.run(command, capture_output=True, text=True, timeout=30, env=dict(os.environ))
    status, _ = run.stop()
    stopped = subprocess.run(command, capture_output=True, text=True, timeout=30, env=dict(os.environ))
    assert status == 0
    assert running.returncode == 0, running.stderr
    assert stopped.returncode == 1
    assert "the service is not running" in stopped.stderr
    assert "pod" in stopped.stdout
