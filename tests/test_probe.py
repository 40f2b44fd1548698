"""`podspool test-connection`: one handshake against the emulator, the result in plain words."""

import io
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import websocket

from podspool.errors import UsageError
from podspool.probe import test_connection as probe_device
from podspool.settings import DeviceSettings

pytestmark = pytest.mark.integration

SAMPLES = pathlib.Path(__file__).parent.parent / "podspool" / "samples"


class Settings:
    def __init__(self, *devices):
        self.devices = devices


def device(url, token, **extra):
    return DeviceSettings(id=1, name="pod", cluster="example_hosted", token=token, endpoint=url,
                          type="message", **extra)


def run_probe(settings, name="pod"):
    out = io.StringIO()
    status = probe_device(settings, name, out=out)
    return status, out.getvalue()


def test_probe_connects_and_keeps_live_position(make_emulator, sentinel_token):
    emulator = make_emulator(once=True)
    status, text = run_probe(Settings(device(emulator.url, sentinel_token)))
    assert status == 0
    assert "connected: the server accepted the token" in text
    assert "HTTP 409" in text
    assert sentinel_token not in text
    probe = emulator.sessions[-1]
    assert "sinceTime" in probe.params
    assert "toTime" in probe.params

    live = websocket.create_connection(emulator.url + "?cid=example_hosted&type=message",
                                       header=[f"Authorization: Bearer {sentinel_token}"], timeout=5)
    first = live.recv()
    live.close()
    assert first == emulator.sent_lines("message")[0]
    with open(SAMPLES / "message.ndjson", encoding="utf-8") as handle:
        assert first == handle.readline().rstrip("\n")


def test_probe_wrong_token(make_emulator, sentinel_token):
    emulator = make_emulator(once=True)
    status, text = run_probe(Settings(device(emulator.url, "wrong-" + sentinel_token)))
    assert status == 1
    assert "failed: HTTP 401: the token was rejected" in text
    assert sentinel_token not in text


def test_probe_conflict_with_running_session(make_emulator, sentinel_token):
    emulator = make_emulator(once=True)
    holder = websocket.create_connection(emulator.url + "?cid=example_hosted&type=message",
                                         header=[f"Authorization: Bearer {sentinel_token}"], timeout=5)
    try:
        status, text = run_probe(Settings(device(emulator.url, sentinel_token)))
    finally:
        holder.close()
    assert status == 1
    assert "failed: HTTP 409: another session already uses this token" in text


def test_probe_wrong_path(make_emulator, sentinel_token):
    emulator = make_emulator(once=True)
    status, text = run_probe(Settings(device(emulator.url.replace("/v1/stream", "/v2/stream"), sentinel_token)))
    assert status == 1
    assert "failed: HTTP 404" in text


def test_probe_connection_refused(sentinel_token):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status, text = run_probe(Settings(device(f"ws://127.0.0.1:{port}/v1/stream", sentinel_token)))
    assert status == 1
    assert "failed (refused): connection to 127.0.0.1:" in text


def test_probe_tls_without_ca(make_emulator, sentinel_token, tls_ca):
    ca_file, cert_file, key_file = tls_ca
    emulator = make_emulator(once=True, tls_cert=cert_file, tls_key=key_file)
    status, text = run_probe(Settings(device(emulator.url, sentinel_token)))
    assert status == 1
    assert "failed (tls): TLS certificate verification" in text
    status, text = run_probe(Settings(device(emulator.url, sentinel_token, ca_file=ca_file)))
    assert status == 0, text


def test_probe_unknown_device(sentinel_token):
    with pytest.raises(UsageError) as caught:
        run_probe(Settings(device("ws://127.0.0.1:1/v1/stream", sentinel_token)), name="other")
    assert "no device named 'other' (devices: pod)" in str(caught.value)


def test_cli_test_connection_exit_status(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(once=True)
    config_file = tmp_path / "podspool.yaml"
    config_file.write_text(f"""\
spool: {{directory: {tmp_path}/spool}}
state_directory: {tmp_path}/state
devices:
  - id: 1
    name: pod
    type: proofpoint
    properties: {{endpoint: "{emulator.url}", cluster: example_hosted, token: "${{POD_TOKEN}}"}}
""")
    command = [sys.executable, "-m", "podspool", "test-connection", "pod", "-c", str(config_file)]
    good = subprocess.run(command, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, POD_TOKEN=sentinel_token))
    bad = subprocess.run(command, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, POD_TOKEN="wrong"))
    unknown = subprocess.run(command[:4] + ["nope"] + command[5:], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, POD_TOKEN=sentinel_token))
    assert good.returncode == 0, good.stdout + good.stderr
    assert bad.returncode == 1
    assert "HTTP 401" in bad.stdout
    assert unknown.returncode == 2
    assert "no device named 'nope'" in unknown.stderr
    assert sentinel_token not in good.stdout + good.stderr + bad.stdout + bad.stderr
