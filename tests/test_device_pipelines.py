"""A device with pipelines against the emulator: the spool holds exactly the transformed events."""

import json
import os
import threading
import time

import pytest

from podspool.device import DeviceConnection
from podspool.pipelines import PipelineRunner, compile_pipelines
from podspool.settings import DeviceSettings, SpoolSettings
from podspool.spool import SpoolWriter
from podspool.stats import DeviceStats

pytestmark = pytest.mark.integration

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "podspool", "samples")

PIPELINES = {
    # Drop phishing verdicts, keep the subject at the top level, lower-case the sender.
    "triage": [
        {"drop": {"if": "filter.modules.spam.triggeredClassifier == 'phish'"}},
        {"rename": {"field": "msg.normalizedHeader.subject", "target_field": "subject",
                    "ignore_missing": True}},
        {"lowercase": {"field": "envelope.from", "ignore_missing": True}},
    ],
    # Fails on events without pps (13 of the 18 samples); those go to dead-letter.
    "strict": [
        {"set": {"field": "agent", "copy_from": "pps.agent", "on_failure": "dead_letter"}},
    ],
}


def expected_events(lines):
    """Apply the two pipelines by hand, independently of the processors."""
    kept, dead = [], []
    for line in lines:
        event = json.loads(line)
        spam = event.get("filter", {}).get("modules", {}).get("spam", {})
        if spam.get("triggeredClassifier") == "phish":
            continue
        subject = event.get("msg", {}).get("normalizedHeader", {}).pop("subject", None)
        if subject is not None:
            event["subject"] = subject
        if isinstance(event.get("envelope", {}).get("from"), str):
            event["envelope"]["from"] = event["envelope"]["from"].lower()
        agent = event.get("pps", {}).get("agent")
        if agent is None:
            dead.append(line)
            continue
        event["agent"] = agent
        kept.append(event)
    return kept, dead


def test_device_spools_transformed_events(make_emulator, sentinel_token, tmp_path):
    emulator = make_emulator(once=True)
    compiled = compile_pipelines(PIPELINES, {name: "test" for name in PIPELINES})
    runner = PipelineRunner([compiled["triage"], compiled["strict"]],
                            context={"device": "dev", "cluster": "example_hosted", "type": "message", "tags": []})
    settings = DeviceSettings(id=1, name="dev", cluster="example_hosted", token=sentinel_token,
                              endpoint=emulator.url, pipelines=("triage", "strict"))
    spool = SpoolSettings(directory=str(tmp_path / "spool"), rotate_bytes=1 << 30, rotate_seconds=3600.0,
                          fsync="interval", fsync_seconds=0.2, max_bytes=1 << 36)
    writer = SpoolWriter(spool, "dev")
    stop = threading.Event()
    stats = DeviceStats()
    device = DeviceConnection(settings, writer, state_directory=str(tmp_path / "state"),
                              stop_event=stop, stats=stats, pipeline=runner)
    with open(os.path.join(SAMPLES, "message.ndjson"), encoding="utf-8") as handle:
        samples = [line for line in handle.read().splitlines() if line]
    kept, dead = expected_events(samples)

    device.start()
    deadline = time.monotonic() + 20
    while stats.events_received < len(samples) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    assert device.join(5)
    writer.close()

    spool_dir = tmp_path / "spool" / "dev"
    spooled = [json.loads(line) for path in sorted(spool_dir.glob("*.ndjson"))
               for line in path.read_text().splitlines()]
    dead_records = [json.loads(line) for path in sorted((spool_dir / "dead-letter").glob("frames-*.ndjson"))
                    for line in path.read_text().splitlines()]
    assert len(kept) + len(dead) < len(samples), "the samples must contain a phishing verdict"
    assert dead, "the samples must contain an event without pps"
    assert spooled == kept
    assert [record["raw"] for record in dead_records] == dead
    assert all("strict" in record["reason"] for record in dead_records)
    assert stats.events_dropped_by_pipeline == len(samples) - len(kept) - len(dead)
    assert stats.events_spooled == len(kept)
