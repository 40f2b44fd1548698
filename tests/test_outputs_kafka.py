"""The Kafka output against a real Kafka-protocol broker (Tansu) on loopback."""

import json
import logging
from pathlib import Path

import pytest

from kafka_broker import KafkaBroker, free_port
from podspool.errors import ConfigError
from podspool.events import dedup_key
from podspool.outputs.base import Record, TransientError
from podspool.outputs.kafka import KafkaDestination, redact, topic_for, validate_options
from podspool.settings import OutputSettings

SAMPLES = Path(__file__).resolve().parent.parent / "podspool" / "samples"
SENTINEL = "sentinel-kafka-password-7f3a9c"


def sample_records(device="edge-1"):
    records = []
    for log_type in ("message", "maillog", "audit"):
        for line in (SAMPLES / f"{log_type}.ndjson").read_bytes().splitlines():
            if line.strip():
                records.append(Record(device, log_type, line, dedup_key(json.loads(line), line)))
    return records


def numbered_records(start, stop):
    records = []
    for number in range(start, stop):
        line = json.dumps({"guid": f"g{number}", "ts": "2024-05-22T12:10:03.058340-0700", "n": number})
        records.append(Record("edge-1", "message", line.encode(), f"g{number}|2024-05-22T12:10:03.058340-0700"))
    return records


def output(options, timeout_seconds=10.0):
    return OutputSettings(name="bus", type="kafka", options=dict(options), timeout_seconds=timeout_seconds)


# Options, no broker


def test_topic_fills_type_and_device():
    record = Record("edge 1/eu", "maillog", b"{}", "k")

    assert topic_for("proofpoint-pod-{type}", record) == "proofpoint-pod-maillog"
    assert topic_for("pod.{device}.{type}", record) == "pod.edge_1_eu.maillog"


@pytest.mark.parametrize("options, key", [
    ({}, "bootstrap_servers"),
    ({"bootstrap_servers": "b:9092", "topic": "pod-{cluster}"}, "topic"),
    ({"bootstrap_servers": "b:9092", "topic": "pod topic"}, "topic"),
    ({"bootstrap_servers": "b:9092", "compression": "brotli"}, "compression"),
    ({"bootstrap_servers": "b:9092", "settings": ["acks=1"]}, "settings"),
    ({"bootstrap_servers": "b:9092", "partitions": 3}, "partitions"),
])
def test_options_reject_invalid_key(options, key):
    with pytest.raises(ConfigError) as caught:
        validate_options(output(options), file="podspool.yaml", path="outputs[1]")

    assert f"outputs[1].{key}" in str(caught.value)


def test_client_config_defaults_and_overrides():
    destination = KafkaDestination(output({
        "bootstrap_servers": ["k1:9092", "k2:9092"],
        "settings": {"linger.ms": 50, "compression.type": "lz4"},
    }, timeout_seconds=12.5))

    config = destination.client_config()

    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["message.timeout.ms"] == 12500
    assert config["linger.ms"] == 50
    assert config["compression.type"] == "lz4"
    assert destination.options.compression == "zstd"
    assert destination.producer is None


def test_redact_masks_credentials():
    settings = {"sasl.password": SENTINEL, "ssl.key.password": "k3y", "client.id": "podspool"}

    text = redact(f"bad {SENTINEL} and k3y for podspool", settings)

    assert text == "bad *** and *** for podspool"


# Delivery to a real broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    server = KafkaBroker(tmp_path_factory.mktemp("tansu"))
    server.start()
    yield server
    server.stop()


@pytest.mark.integration
def test_every_sample_delivered_with_key(broker):
    records = sample_records(device="edge 1")
    destination = KafkaDestination(output({"bootstrap_servers": broker.bootstrap_servers,
                                           "topic": "samples.{device}.{type}"}))

    result = destination.send(records)
    destination.close()

    assert result.rejected == []
    assert result.retry == []
    topics = {f"samples.edge_1.{t}" for t in ("message", "maillog", "audit")}
    consumed = broker.consume(topics, len(records))
    expected = sorted((f"samples.edge_1.{r.log_type}", r.key.encode(), r.line) for r in records)
    assert sorted(consumed) == expected


@pytest.mark.integration
def test_default_topic_is_per_type(broker):
    records = [r for r in sample_records(device="default-topic") if r.log_type == "audit"]
    destination = KafkaDestination(output({"bootstrap_servers": broker.bootstrap_servers,
                                           "compression": "lz4"}))

    destination.send(records)
    destination.close()

    consumed = broker.consume(["proofpoint-pod-audit"], len(records))
    assert {value for _, _, value in consumed} >= {r.line for r in records}


@pytest.mark.integration
def test_oversize_message_is_rejected(broker):
    records = numbered_records(0, 3)
    big_line = json.dumps({"guid": "big", "pad": "x" * 1_100_000}).encode()
    batch = records[:1] + [Record("edge-1", "message", big_line, "big|")] + records[1:]
    destination = KafkaDestination(output({"bootstrap_servers": broker.bootstrap_servers,
                                           "topic": "oversize"}))

    result = destination.send(batch)
    destination.close()

    assert [rejection.index for rejection in result.rejected] == [1]
    assert "too large" in result.rejected[0].reason
    assert result.retry == []
    consumed = broker.consume(["oversize"], len(records))
    assert sorted(value for _, _, value in consumed) == sorted(r.line for r in records)


@pytest.mark.integration
def test_unreachable_broker_raises_transient():
    destination = KafkaDestination(output({"bootstrap_servers": f"127.0.0.1:{free_port()}"},
                                          timeout_seconds=1.0))

    with pytest.raises(TransientError, match="delivered none of 2"):
        destination.send(numbered_records(0, 2))
    destination.close()
    destination.close()


def send_until_delivered(destination, batch, attempts=5):
    """Send BATCH as the shipper would, again after each TransientError; return the failures seen."""
    failures = 0
    for _ in range(attempts):
        try:
            result = destination.send(batch)
        except TransientError:
            failures += 1
            continue
        assert result.rejected == []
        assert result.retry == []
        return failures
    raise AssertionError(f"batch not delivered after {attempts} attempts")


@pytest.mark.integration
def test_broker_restart_loses_nothing(tmp_path):
    server = KafkaBroker(tmp_path)
    server.start()
    destination = KafkaDestination(output({"bootstrap_servers": server.bootstrap_servers,
                                           "topic": "restart"}, timeout_seconds=2.0))
    try:
        send_until_delivered(destination, numbered_records(0, 10))

        server.stop()
        with pytest.raises(TransientError):
            destination.send(numbered_records(10, 20))

        # The broker keeps records in memory only: what it contains after the
        # restart must be exactly the rest of the stream, from the failed batch on.
        server.start()
        failures = send_until_delivered(destination, numbered_records(10, 20))
        send_until_delivered(destination, numbered_records(20, 30))
        consumed = server.consume(["restart"], 20)
    finally:
        destination.close()
        server.stop()

    numbers = sorted(json.loads(value)["n"] for _, _, value in consumed)
    assert sorted(set(numbers)) == list(range(10, 30))
    keys = {key for _, key, _ in consumed}
    assert keys == {r.key.encode() for r in numbered_records(10, 30)}
    print(f"broker restart: {failures} failed attempts after restart, {len(numbers) - 20} duplicates")


@pytest.mark.integration
def test_sentinel_password_never_shown(broker, caplog):
    caplog.set_level(logging.DEBUG)
    settings = {"security.protocol": "PLAINTEXT", "sasl.username": "podspool",
                "sasl.password": SENTINEL, "debug": "generic,broker,conf,security"}
    working = KafkaDestination(output({"bootstrap_servers": broker.bootstrap_servers,
                                       "topic": "sentinel", "settings": settings}))
    down = KafkaDestination(output({"bootstrap_servers": f"127.0.0.1:{free_port()}",
                                    "settings": settings}, timeout_seconds=1.0))
    invalid = KafkaDestination(output({"bootstrap_servers": broker.bootstrap_servers,
                                       "settings": {**settings, "linger.ms": SENTINEL}}))

    working.send(numbered_records(0, 2))
    working.close()
    with pytest.raises(TransientError) as transient:
        down.send(numbered_records(0, 1))
    down.close()
    with pytest.raises(ConfigError) as config_error:
        invalid.send(numbered_records(0, 1))

    assert any("[redacted]" in record.getMessage() for record in caplog.records)
    assert SENTINEL not in caplog.text
    assert SENTINEL not in str(transient.value)
    assert SENTINEL not in str(config_error.value)
    assert SENTINEL not in repr(working.options) + repr(working.settings)


@pytest.mark.integration
def test_shipper_delivers_spool_file(broker, tmp_path):
    from podspool.settings import DeviceSettings
    from podspool.shipper import Shipper
    from podspool.spool import spool_file_name

    device = DeviceSettings(id=1, name="edge-2", cluster="example_hosted", token="unused", type="maillog")
    lines = (SAMPLES / "maillog.ndjson").read_bytes()
    (tmp_path / "spool" / "edge-2").mkdir(parents=True)
    (tmp_path / "spool" / "edge-2" / spool_file_name(1, 1_700_000_000)).write_bytes(lines)
    settings = output({"bootstrap_servers": broker.bootstrap_servers, "topic": "shipped-{device}"})
    shipper = Shipper(settings, KafkaDestination(settings), spool_root=str(tmp_path / "spool"),
                      state_directory=str(tmp_path / "state"), devices=[device])

    shipped = shipper.run_once()
    shipper.close()

    expected = sorted((dedup_key(json.loads(line), line).encode(), line) for line in lines.splitlines())
    consumed = broker.consume(["shipped-edge-2"], len(expected))
    assert shipped is True
    assert sorted((key, value) for _, key, value in consumed) == expected
    assert shipper.stats.events_delivered == len(expected)
