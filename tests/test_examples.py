"""The shipped conf/ directory: the product page's six device examples load, check and run."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from mmdb_fixture import write_city_database
from podspool import config
from podspool.emulator import Emulator
from podspool.secrets import encrypt_token, generate_key, load_key
from podspool.service import Service

CONF = os.path.join(os.path.dirname(__file__), "..", "conf")
EXAMPLE_NAMES = ["proofpoint-pod", "proofpoint-secure", "proofpoint-maillog",
                 "proofpoint-highvolume", "proofpoint-custom", "proofpoint-pipeline"]
SECRET_FILES = ["proofpoint-pod-token", "proofpoint-maillog-token", "proofpoint-custom-token",
                "proofpoint-pipeline-token"]


def token_for(name):
    return f"SENTINEL-{name}-token"


@pytest.fixture
def installed_conf(tmp_path):
    """Copy conf/ as an operator would install it, with paths moved under TMP_PATH."""
    etc = tmp_path / "etc"
    var = tmp_path / "var"
    shutil.copytree(CONF, etc)
    for path in [etc / "podspool.yaml", *sorted((etc / "conf.d").iterdir())]:
        text = path.read_text().replace("/var/lib/podspool", str(var)).replace("/etc/podspool", str(etc))
        path.write_text(text)
    var.mkdir()
    write_city_database(str(var / "GeoLite2-City.mmdb"))
    (etc / "secrets").mkdir()
    for name in SECRET_FILES:
        (etc / "secrets" / name).write_text(token_for(name.removesuffix("-token")) + "\n")
    generate_key(str(etc / "shared.key"))
    ciphertext = encrypt_token(load_key(str(etc / "shared.key")), token_for("proofpoint-secure"))
    environ = {
        "PROOFPOINT_SECURE_TOKEN": ciphertext,
        "PROOFPOINT_HIGHVOLUME_TOKEN": token_for("proofpoint-highvolume"),
    }
    return etc / "podspool.yaml", environ


def test_examples_load_with_defaults(installed_conf):
    main_file, environ = installed_conf
    settings = config.load(str(main_file), environ=environ)
    devices = {device.name: device for device in settings.devices}
    assert sorted(devices) == sorted(EXAMPLE_NAMES)
    for name in EXAMPLE_NAMES:
        assert devices[name].token == token_for(name)
    assert devices["proofpoint-pod"].endpoint == "wss://logstream.proofpoint.com:443/v1/stream"
    assert devices["proofpoint-maillog"].type == "maillog"
    assert devices["proofpoint-highvolume"].workers == 4
    assert devices["proofpoint-custom"].endpoint == "wss://logstream-eu.proofpoint.com:443/v1/stream"
    assert devices["proofpoint-custom"].cluster == "eu-cluster-id"
    assert devices["proofpoint-pipeline"].pipelines == ("email_enrichment", "geo_lookup")
    assert devices["proofpoint-secure"].secure is True


@pytest.mark.integration
def test_check_passes_on_shipped_conf(installed_conf):
    main_file, environ = installed_conf
    result = subprocess.run([sys.executable, "-m", "podspool", "check", "-c", str(main_file)],
                            capture_output=True, text=True, env=dict(os.environ, **environ), timeout=60)
    assert result.returncode == 0, result.stderr
    for name in EXAMPLE_NAMES:
        assert f"  {name} (id " in result.stdout
        assert token_for(name) not in result.stdout + result.stderr
    assert "email_enrichment" in result.stdout
    assert "geo_lookup" in result.stdout


@pytest.mark.integration
def test_examples_run_against_emulators(installed_conf):
    """Point each example at its own emulator (one token each) and spool its events."""
    main_file, environ = installed_conf
    emulators = {}
    try:
        for path in sorted((main_file.parent / "conf.d").glob("0*.yaml")):
            devices = yaml.safe_load(path.read_text())
            for device in devices:
                name = device["name"]
                emulator = Emulator(host="127.0.0.1", port=0, token=token_for(name),
                                    cluster=device["properties"]["cluster"], once=True).start()
                emulators[name] = (emulator, device["properties"].get("type", "message"))
                device["properties"]["endpoint"] = emulator.url
            path.write_text(yaml.safe_dump(devices))
        old = dict(os.environ)
        os.environ.update(environ)
        try:
            service = Service(str(main_file), config.load(str(main_file))).start()
        finally:
            os.environ.clear()
            os.environ.update(old)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if all(service.devices[name].stats.events_spooled >= len(emulator.sent_lines(kind)) > 0
                       for name, (emulator, kind) in emulators.items()):
                    break
                time.sleep(0.1)
        finally:
            assert service.stop() == 0
    finally:
        for emulator, _ in emulators.values():
            emulator.stop()
    for name, (emulator, kind) in emulators.items():
        assert service.devices[name].stats.events_spooled == len(emulator.sent_lines(kind)), name
    pipeline_files = sorted((main_file.parent.parent / "var" / "spool" / "proofpoint-pipeline").glob("*.ndjson"))
    enriched = [json.loads(line) for path in pipeline_files for line in path.read_text().splitlines()]
    assert enriched
    assert all("@timestamp" in event for event in enriched)
    assert all(event["podspool"]["device"] == "proofpoint-pipeline" for event in enriched)
    assert any("geo" in event.get("connection", {}) for event in enriched)
