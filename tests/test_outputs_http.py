import datetime
import json
import logging
import threading
from pathlib import Path

import pytest
import responses
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import podspool
from podspool.errors import ConfigError
from podspool.events import dedup_key
from podspool.outputs import registry
from podspool.outputs.base import PermanentError, Record, TransientError
from podspool.outputs.elasticsearch import ElasticsearchDestination, document_id
from podspool.outputs.file import FileDestination
from podspool.outputs.http import HttpDestination, HttpStatusError, parse_retry_after, safe_url
from podspool.outputs.splunk import SplunkHecDestination, hec_time
from podspool.settings import OutputSettings
from http_server import TestHttpServer, free_port

SAMPLES = Path(podspool.__file__).parent / "samples"
SENTINEL = "SENTINEL-5d2a41-credential"


def settings(output_type, options, **common):
    values = {"timeout_seconds": 5.0}
    values.update(common)
    result = OutputSettings(name="out", type=output_type, options=dict(options), **values)
    registry.validate_options(result)
    return result


def records(log_type="message", count=None):
    lines = [line for line in (SAMPLES / f"{log_type}.ndjson").read_bytes().splitlines() if line.strip()]
    result = []
    for line in lines[:count]:
        event = json.loads(line)
        result.append(Record(device=f"dev-{log_type}", log_type=log_type, line=line, key=dedup_key(event, line)))
    return result


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """Write a self-signed certificate for 127.0.0.1 and its key; return (cert, key) paths."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# http

@pytest.mark.integration
@pytest.mark.parametrize("fmt, use_gzip", [("ndjson", False), ("json_array", False), ("ndjson", True)])
def test_http_body_formats(fmt, use_gzip):
    batch = records(count=3)
    with TestHttpServer() as server:
        destination = HttpDestination(settings("http", {"url": server.url + "/in", "format": fmt, "gzip": use_gzip,
                                                        "headers": {"X-Tenant": "a"}}))
        destination.send(batch)
        destination.close()
    request = server.state.requests[0]
    assert request.headers["x-tenant"] == "a"
    assert request.headers.get("content-encoding") == ("gzip" if use_gzip else None)
    if fmt == "json_array":
        assert request.headers["content-type"] == "application/json"
        assert request.body == b"[" + b",".join(record.line for record in batch) + b"]"
    else:
        assert request.headers["content-type"] == "application/x-ndjson"
        assert request.body == b"".join(record.line + b"\n" for record in batch)


@pytest.mark.integration
@pytest.mark.parametrize("status, kind, level", [
    (400, PermanentError, None), (413, PermanentError, None), (422, PermanentError, None),
    (401, HttpStatusError, logging.ERROR), (403, HttpStatusError, logging.ERROR),
    (404, HttpStatusError, logging.ERROR), (429, HttpStatusError, logging.WARNING),
    (500, HttpStatusError, logging.WARNING), (503, HttpStatusError, logging.WARNING),
])
def test_http_status_classification(status, kind, level):
    with TestHttpServer() as server:
        server.fail_next(1, status, retry_after="7")
        destination = HttpDestination(settings("http", {"url": server.url + "/in"}))
        with pytest.raises(kind) as raised:
            destination.send(records(count=1))
    assert f"HTTP {status}" in str(raised.value)
    if level is not None:
        assert raised.value.log_level == level
        assert raised.value.retry_after_seconds == 7.0
        assert raised.value.status_code == status


def test_http_connection_refused_is_transient():
    destination = HttpDestination(settings("http", {"url": f"http://user:{SENTINEL}@127.0.0.1:{free_port()}/in"}))
    with pytest.raises(TransientError) as raised:
        destination.send(records(count=1))
    assert "Connection refused" in str(raised.value)
    assert SENTINEL not in str(raised.value)
    assert raised.value.__cause__ is None


@pytest.mark.integration
def test_https_verifies_with_ca_file(tls_files):
    cert, key = tls_files
    with TestHttpServer(certfile=cert, keyfile=key) as server:
        trusted = HttpDestination(settings("http", {"url": server.url + "/in"}, ca_file=cert))
        trusted.send(records(count=2))
        untrusted = HttpDestination(settings("http", {"url": server.url + "/in"}))
        with pytest.raises(TransientError) as raised:
            untrusted.send(records(count=2))
    assert "SSLError" in str(raised.value)
    assert len(server.state.events) == 2


@pytest.mark.integration
def test_https_client_certificate_accepted(tls_files):
    cert, key = tls_files
    with TestHttpServer(certfile=cert, keyfile=key, client_ca=cert) as server:
        with_cert = HttpDestination(settings("http", {"url": server.url + "/in"}, ca_file=cert,
                                             client_cert=cert, client_key=key))
        with_cert.send(records(count=1))
        without = HttpDestination(settings("http", {"url": server.url + "/in"}, ca_file=cert))
        with pytest.raises(TransientError):
            without.send(records(count=1))
    assert len(server.state.events) == 1


def test_retry_after_forms():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_safe_url_drops_credentials():
    assert safe_url(f"https://user:{SENTINEL}@host:8088/a?token={SENTINEL}#x") == "https://host:8088/a"
    assert safe_url("http://[::1]:9200/_bulk") == "http://[::1]:9200/_bulk"


# splunk_hec

@pytest.mark.parametrize("ts, expected", [
    ("2024-05-22T12:10:03.058340-0700", "1716405003.058340"),
    ("2024-06-19T05:25:41.855197-07:00", "1718799941.855197"),
    ("2023-10-25T21:49:38.968838+0000", "1698270578.968838"),
    ("2023-10-25T21:49:38+0000", "1698270578.000000"),
    ("1969-12-31T23:59:59.500000+0000", "-0.500000"),
])
def test_hec_time_forms(ts, expected):
    assert hec_time({"ts": ts}) == expected


def test_hec_event_object_fields():
    destination = SplunkHecDestination(settings("splunk_hec", {"url": "http://127.0.0.1:1", "token": "t",
                                                               "index": "pod"}))
    record = records("maillog", count=1)[0]
    encoded = destination.encode_record(record)
    obj = json.loads(encoded)
    assert obj["index"] == "pod"
    assert obj["source"] == "podspool:dev-maillog"
    assert obj["sourcetype"] == "proofpoint:pod:maillog"
    assert obj["host"]
    assert encoded.endswith(b',"event":' + record.line + b"}")
    no_time = Record(device="d", log_type="audit", line=b'{"x":1}', key="k")
    assert "time" not in json.loads(destination.encode_record(no_time))


@pytest.mark.integration
@pytest.mark.parametrize("status, body, kind, level", [
    (400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0}, PermanentError, None),
    (400, {"text": "Incorrect index", "code": 7}, HttpStatusError, logging.ERROR),
    (403, {"text": "Invalid token", "code": 4}, HttpStatusError, logging.ERROR),
    (503, {"text": "Server is busy", "code": 9}, HttpStatusError, logging.WARNING),
    (429, {"text": "Too many requests", "code": 9}, HttpStatusError, logging.WARNING),
])
def test_hec_status_codes(status, body, kind, level):
    with TestHttpServer() as server:
        server.fail_next(1, status, retry_after="3", body=body)
        destination = SplunkHecDestination(settings("splunk_hec", {"url": server.url, "token": SENTINEL}))
        with pytest.raises(kind) as raised:
            destination.send(records(count=2))
    assert f"code {body['code']}" in str(raised.value)
    assert SENTINEL not in str(raised.value)
    if level is not None:
        assert raised.value.log_level == level
        assert raised.value.retry_after_seconds == 3.0


@pytest.mark.integration
def test_hec_ack_waits_for_true():
    with TestHttpServer(hec_token="tok") as server:
        server.state.ack_false_polls = 2
        destination = SplunkHecDestination(settings("splunk_hec", {"url": server.url + "/", "token": "tok",
                                                                   "ack": True, "ack_poll_seconds": 0.01}))
        destination.send(records(count=2))
    paths = server.paths()
    assert paths == ["/services/collector/event"] + ["/services/collector/ack"] * 3
    channels = {request.headers["x-splunk-request-channel"] for request in server.state.requests}
    assert channels == {destination.channel}


@pytest.mark.integration
def test_hec_ack_stop_ends_wait():
    with TestHttpServer(hec_token="tok") as server:
        server.state.ack_false_polls = 10**9
        destination = SplunkHecDestination(settings("splunk_hec", {"url": server.url, "token": "tok", "ack": True,
                                                                   "ack_poll_seconds": 0.05}))
        destination.stop_event = threading.Event()
        threading.Timer(0.3, destination.stop_event.set).start()
        with pytest.raises(TransientError, match="stopped while waiting"):
            destination.send(records(count=1))


@responses.activate
def test_hec_ack_missing_id_warns_once(caplog):
    responses.add(responses.POST, "http://hec.test/services/collector/event", json={"text": "Success", "code": 0})
    destination = SplunkHecDestination(settings("splunk_hec", {"url": "http://hec.test", "token": "t", "ack": True}))
    destination.send(records(count=1))
    destination.send(records(count=1))
    warnings = [record for record in caplog.records if "returned no ackId" in record.getMessage()]
    assert len(warnings) == 1


# elasticsearch

def test_document_id_from_dedup_key():
    assert document_id("abc|2024-05-22T12:10:03.058340-0700") == "abc|2024-05-22T12:10:03.058340-0700"
    long_key = "x" * 600
    assert len(document_id(long_key)) == 64
    assert document_id(long_key) == document_id(long_key)


def test_bulk_body_uses_create_and_index_template():
    destination = ElasticsearchDestination(settings("elasticsearch", {"url": "http://127.0.0.1:1",
                                                                      "index": "pod-{device}-{type}"}))
    batch = records("audit", count=2)
    lines = destination.encode(batch).decode().splitlines()
    assert len(lines) == 4
    action = json.loads(lines[0])
    assert action == {"create": {"_index": "pod-dev-audit-audit", "_id": document_id(batch[0].key)}}
    assert lines[1].encode() == batch[0].line


def bulk_item(status, error_type=None):
    item = {"_index": "i", "_id": "x", "status": status}
    if error_type:
        item["error"] = {"type": error_type, "reason": f"{error_type} happened"}
    return {"create": item}


@responses.activate
def test_bulk_items_classified():
    items = [bulk_item(201), bulk_item(409, "version_conflict_engine_exception"),
             bulk_item(429, "es_rejected_execution_exception"), bulk_item(503, "unavailable_shards_exception"),
             bulk_item(400, "mapper_parsing_exception"), {"create": {"_id": "x"}}]
    responses.add(responses.POST, "http://es.test/_bulk", json={"errors": True, "items": items})
    destination = ElasticsearchDestination(settings("elasticsearch", {"url": "http://es.test"}))
    result = destination.send(records(count=6))
    assert result.retry == [2, 3, 5]
    assert [rejection.index for rejection in result.rejected] == [4]
    assert "mapper_parsing_exception" in result.rejected[0].reason
    assert result.rejected[0].response["type"] == "mapper_parsing_exception"


@responses.activate
def test_bulk_errors_without_items_is_transient():
    responses.add(responses.POST, "http://es.test/_bulk", json={"errors": True, "items": [bulk_item(201)]})
    destination = ElasticsearchDestination(settings("elasticsearch", {"url": "http://es.test"}))
    with pytest.raises(TransientError, match="no item result"):
        destination.send(records(count=2))


@pytest.mark.integration
def test_bulk_rotates_to_next_url():
    with TestHttpServer(es_authorization=f"ApiKey {SENTINEL}") as server:
        dead = f"http://127.0.0.1:{free_port()}"
        destination = ElasticsearchDestination(settings("elasticsearch", {"url": [dead, server.url],
                                                                          "api_key": SENTINEL}))
        assert destination.send(records(count=3)).retry == []
        assert destination.send(records("maillog", count=2)).retry == []
    assert len(server.state.documents) == 5
    assert destination.bulk_urls[destination._next_url] == server.url + "/_bulk"


@pytest.mark.integration
def test_bulk_basic_auth_and_401():
    import base64
    token = base64.b64encode(f"podspool:{SENTINEL}".encode()).decode()
    with TestHttpServer(es_authorization=f"Basic {token}") as server:
        good = ElasticsearchDestination(settings("elasticsearch", {"url": server.url, "username": "podspool",
                                                                   "password": SENTINEL}))
        good.send(records(count=1))
        bad = ElasticsearchDestination(settings("elasticsearch", {"url": server.url, "username": "podspool",
                                                                  "password": "wrong"}))
        with pytest.raises(HttpStatusError) as raised:
            bad.send(records(count=1))
    assert raised.value.status_code == 401
    assert raised.value.log_level == logging.ERROR
    assert SENTINEL not in repr(good)


# file

def test_file_truncates_torn_line(tmp_path):
    target = tmp_path / "out" / "all.ndjson"
    target.parent.mkdir()
    target.write_bytes(b'{"a":1}\n{"b":')
    destination = FileDestination(settings("file", {"path": str(target)}))
    destination.send(records(count=2))
    lines = target.read_bytes().splitlines()
    assert lines[0] == b'{"a":1}'
    assert [json.loads(line) for line in lines[1:]] == [record.event for record in records(count=2)]


def test_file_path_placeholders_stay_inside(tmp_path):
    destination = FileDestination(settings("file", {"path": str(tmp_path / "{device}" / "{type}.ndjson")}))
    record = Record(device="../escape", log_type="message", line=b'{"x":1}', key="k")
    destination.send([record])
    assert (tmp_path / ".._escape" / "message.ndjson").read_bytes() == b'{"x":1}\n'


def test_file_write_error_is_transient(tmp_path):
    (tmp_path / "blocker").write_text("a file where a directory should be")
    destination = FileDestination(settings("file", {"path": str(tmp_path / "blocker" / "x.ndjson")}))
    with pytest.raises(TransientError):
        destination.send(records(count=1))


# registry

@pytest.mark.parametrize("output_type, options, message", [
    ("http", {"url": "http://h", "colour": "red"}, "unknown key"),
    ("http", {}, "missing required key"),
    ("http", {"url": "ftp://h"}, "http:// or https://"),
    ("http", {"url": "http://h", "format": "xml"}, "expected one of"),
    ("http", {"url": "http://h", "gzip": "yes"}, "expected true or false"),
    ("file", {"path": "/x/{host}.ndjson"}, "unknown placeholder {host}"),
    ("elasticsearch", {"url": "http://h", "api_key": "k", "username": "u", "password": "p"}, "exclusive"),
    ("elasticsearch", {"url": "http://h", "username": "u"}, "go together"),
    ("splunk_hec", {"url": "http://h"}, "missing required key"),
])
def test_registry_rejects_bad_options(output_type, options, message):
    bad = OutputSettings(name="o", type=output_type, options=dict(options), source_file="/etc/p.yaml")
    with pytest.raises(ConfigError, match=message) as raised:
        registry.validate_options(bad)
    assert "/etc/p.yaml" in str(raised.value)
    assert "outputs.o." in str(raised.value)


def test_registry_never_shows_secret_values():
    bad = OutputSettings(name="o", type="splunk_hec", options={"url": "http://h", "token": ["x", SENTINEL]})
    with pytest.raises(ConfigError) as raised:
        registry.validate_options(bad)
    assert SENTINEL not in str(raised.value)
    assert "token" in str(raised.value)


@pytest.mark.parametrize("output_type, options, expected", [
    ("http", {"url": "http://h"}, HttpDestination),
    ("splunk_hec", {"url": "http://h", "token": "t"}, SplunkHecDestination),
    ("elasticsearch", {"url": ["http://a", "http://b"]}, ElasticsearchDestination),
    ("file", {"path": "/tmp/x.ndjson"}, FileDestination),
])
def test_registry_builds_each_type(output_type, options, expected):
    output = OutputSettings(name="o", type=output_type, options=dict(options))
    assert isinstance(registry.build_destination(output), expected)
    registry.validate_options(output)  # converted values validate again


@pytest.mark.parametrize("output_type, options", [
    ("syslog", {"host": "127.0.0.1", "port": 5514}),
    ("kafka", {"bootstrap_servers": ["127.0.0.1:9092"]}),
])
def test_registry_delegates_syslog_and_kafka(output_type, options):
    output = OutputSettings(name="o", type=output_type, options=dict(options))
    destination = registry.build_destination(output)
    assert type(destination).__name__ == registry.DESTINATIONS[output_type][1]
    unknown = OutputSettings(name="o", type=output_type, options={**options, "colour": "red"})
    with pytest.raises(ConfigError, match="colour"):
        registry.validate_options(unknown)
