"""Pipeline configuration errors, ordering, on_failure, logging and the shipped pipelines."""

import copy
import json
import logging
import os

import pytest
import yaml

from mmdb_fixture import write_city_database
from podspool import geoip
from podspool.errors import ConfigError
from podspool.pipelines import Outcome, PipelineRunner, compile_pipelines, select_pipelines

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
SHIPPED = os.path.join(ROOT, "conf", "conf.d", "10-pipelines.yaml")
SOURCE = "/etc/podspool/conf.d/20-local.yaml"
CONTEXT = {"device": "pod-east", "cluster": "acme_hosted", "type": "message", "tags": ["prod"]}
SENTINEL = "SENTINEL-TOKEN-7f3a9c"


def load_samples(log_type):
    path = os.path.join(ROOT, "podspool", "samples", f"{log_type}.ndjson")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


MESSAGES = load_samples("message")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def compile_one(steps):
    return compile_pipelines({"local": steps}, {"local": SOURCE})


def config_error(raw):
    with pytest.raises(ConfigError) as caught:
        compile_pipelines(raw, {name: SOURCE for name in raw} if isinstance(raw, dict) else {"x": SOURCE})
    return str(caught.value)


# configuration errors: each names the file, the key path and the fix

CONFIG_ERRORS = [
    ("unknown processor", {"p": [{"grok": {"field": "a"}}]}, "pipelines.p[0]", "use one of:"),
    ("unknown option", {"p": [{"rename": {"field": "a", "target": "b"}}]}, "pipelines.p[0].rename.target", "rename takes: field, target_field"),
    ("missing required option", {"p": [{"email_domain": {"field": "a"}}]}, "pipelines.p[0].email_domain.target_field", "add `target_field:`"),
    ("wrong type", {"p": [{"set": {"field": 5, "value": 1}}]}, "pipelines.p[0].set.field", "dotted field path"),
    ("wrong type", {"p": [{"drop": {"ignore_missing": "yes"}}]}, "pipelines.p[0].drop.ignore_missing", "true or false"),
    ("wrong type", {"p": [{"remove": {"field": []}}]}, "pipelines.p[0].remove.field", "non-empty list"),
    ("invalid field path", {"p": [{"lowercase": {"field": "a..b"}}]}, "pipelines.p[0].lowercase.field", "empty key"),
    ("invalid JMESPath expression", {"p": [{"drop": {"if": "filter.modules."}}]}, "pipelines.p[0].drop.if", "column"),
    ("invalid JMESPath expression", {"p": [{"drop": {"if": "verdict(filter)"}}]}, "pipelines.p[0].drop.if", "Unknown function"),
    ("invalid on_failure value", {"p": [{"drop": {"on_failure": "retry"}}]}, "pipelines.p[0].drop.on_failure", "skip, drop, dead_letter"),
    ("one key", {"p": [{"set": {"field": "a", "value": 1}, "drop": {}}]}, "pipelines.p[0]", "- rename:"),
    ("one key", {"p": ["drop"]}, "pipelines.p[0]", "- rename:"),
    ("options must be a mapping", {"p": [{"drop": ["x"]}]}, "pipelines.p[0].drop", "`drop: {}`"),
    ("must be a list of processors", {"p": {"drop": {}}}, "pipelines.p", "list item"),
    ("exactly one of value and copy_from", {"p": [{"set": {"field": "a"}}]}, "pipelines.p[0].set.value", "set one of them"),
    ("quote it", {"p": [{"set": {"field": "a", "value": __import__("datetime").date(2024, 1, 2)}}]}, "pipelines.p[0].set.value", "JSON value"),
]


@pytest.mark.parametrize("kind, raw, key, fix", CONFIG_ERRORS, ids=[f"{index}-{row[0]}" for index, row in enumerate(CONFIG_ERRORS)])
def test_config_error_names_file_key(kind, raw, key, fix):
    message = config_error(raw)
    assert message.startswith(f"{SOURCE}: {key}: "), message
    assert kind in message
    assert fix in message


def test_config_error_pipelines_not_mapping():
    with pytest.raises(ConfigError) as caught:
        compile_pipelines(["email_enrichment"], {"email_enrichment": SOURCE})
    assert str(caught.value).startswith(f"{SOURCE}: pipelines: must be a mapping")


def test_config_error_missing_database(tmp_path):
    missing = str(tmp_path / "GeoLite2-City.mmdb")
    message = config_error({"geo": [{"geoip": {"field": "ip", "target_field": "geo", "database_file": missing}}]})
    assert message.startswith(f"{SOURCE}: pipelines.geo[0].geoip.database_file: database file not found")
    assert repr(missing) in message
    assert "put a GeoLite2/GeoIP2" in message


def test_config_error_unreadable_database(tmp_path):
    message = config_error({"geo": [{"geoip": {"field": "ip", "target_field": "geo", "database_file": str(tmp_path)}}]})
    assert message.startswith(f"{SOURCE}: pipelines.geo[0].geoip.database_file: database file cannot be read")


def test_config_error_not_mmdb_file(tmp_path):
    path = tmp_path / "city.mmdb"
    path.write_text("not a database\n")
    message = config_error({"geo": [{"geoip": {"field": "ip", "target_field": "geo", "database_file": str(path)}}]})
    assert message.startswith(f"{SOURCE}: pipelines.geo[0].geoip.database_file: database file is not a MaxMind DB")


def test_unused_pipeline_skips_database(tmp_path):
    raw = {"geo": [{"geoip": {"field": "ip", "target_field": "geo", "database_file": str(tmp_path / "absent.mmdb")}}]}
    compiled = compile_pipelines(raw, {"geo": SOURCE}, used=set())
    assert list(compiled) == ["geo"]
    with pytest.raises(ConfigError):
        compile_pipelines(raw, {"geo": SOURCE}, used={"geo"})


def test_unknown_pipeline_names_device_key():
    compiled = compile_one([{"drop": {}}])
    with pytest.raises(ConfigError) as caught:
        select_pipelines(compiled, ["local", "geo_lookup"], file=SOURCE, key="devices[0].pipelines")
    message = str(caught.value)
    assert message.startswith(f"{SOURCE}: devices[0].pipelines[1]: unknown pipeline (got 'geo_lookup')")
    assert "(local)" in message


def test_config_error_hides_set_value():
    message = config_error({"p": [{"set": {"field": "a", "value": SENTINEL, "copy_from": "b"}}]})
    assert "exactly one of value and copy_from" in message
    assert SENTINEL not in message


# order and outcomes


def test_pipelines_apply_in_listed_order():
    compiled = compile_pipelines(
        {
            "tag_inbound": [{"set": {"field": "labels.class", "value": "inbound", "if": "filter.routeDirection == 'inbound'"}}],
            "tag_default": [{"set": {"field": "labels.class", "value": "other"}}],
        },
        {},
    )
    event = MESSAGES[6]
    assert event["filter"]["routeDirection"] == "inbound"
    first = PipelineRunner(select_pipelines(compiled, ["tag_inbound", "tag_default"]), CONTEXT)
    second = PipelineRunner(select_pipelines(compiled, ["tag_default", "tag_inbound"]), CONTEXT)
    assert first.apply(copy.deepcopy(event)).event["labels"]["class"] == "other"
    assert second.apply(copy.deepcopy(event)).event["labels"]["class"] == "inbound"


def test_processors_apply_in_listed_order():
    compiled = compile_pipelines(
        {
            "rename_then_lower": [
                {"rename": {"field": "filter.qid", "target_field": "qid"}},
                {"lowercase": {"field": "qid"}},
            ]
        },
        {},
    )
    event = PipelineRunner([compiled["rename_then_lower"]], CONTEXT).apply(copy.deepcopy(MESSAGES[0])).event
    assert event["qid"] == "44abcdm0000123"


def test_runner_without_pipelines_inactive():
    runner = PipelineRunner([], CONTEXT)
    assert runner.active is False
    event = copy.deepcopy(MESSAGES[0])
    outcome = runner.apply(event)
    assert outcome.kind == "keep"
    assert outcome.changed is False
    assert event == MESSAGES[0]
    empty = compile_pipelines({"empty": []}, {})
    assert PipelineRunner([empty["empty"]], CONTEXT).active is False


def test_unchanged_when_conditions_false():
    compiled = compile_one([{"set": {"field": "x", "value": 1, "if": "`false`"}}])
    runner = PipelineRunner([compiled["local"]], CONTEXT)
    assert runner.active is True
    outcome = runner.apply(copy.deepcopy(MESSAGES[0]))
    assert outcome.changed is False
    assert outcome.kind == "keep"


# on_failure


def failing_runner(on_failure, clock=None):
    steps = [
        {"set": {"field": "before", "value": 1}},
        {"timestamp": {"field": "filter.qid", "target_field": "t", "on_failure": on_failure}},
        {"set": {"field": "after", "value": 2}},
    ]
    compiled = compile_one(steps)
    return PipelineRunner([compiled["local"]], CONTEXT, clock=clock or FakeClock())


def test_on_failure_skip_continues(caplog):
    caplog.set_level(logging.WARNING, logger="podspool.pipelines")
    runner = failing_runner("skip")
    outcome = runner.apply(copy.deepcopy(MESSAGES[0]))
    assert outcome.kind == "keep"
    assert outcome.event["before"] == 1
    assert outcome.event["after"] == 2
    assert "t" not in outcome.event
    assert runner.failures == {"pipelines.local[1].timestamp": 1}
    assert len(caplog.records) == 1
    assert caplog.records[0].device == "pod-east"
    assert "pipelines.local[1].timestamp failed (on_failure: skip)" in caplog.records[0].getMessage()


def test_on_failure_drop_stops():
    outcome = failing_runner("drop").apply(copy.deepcopy(MESSAGES[0]))
    assert outcome.kind == "drop"
    assert "after" not in outcome.event
    assert outcome.reason.startswith("pipelines.local[1].timestamp failed: field filter.qid is not an ISO 8601 time")


def test_on_failure_dead_letter_reason():
    outcome = failing_runner("dead_letter").apply(copy.deepcopy(MESSAGES[0]))
    assert outcome.kind == "dead_letter"
    assert outcome.event["before"] == 1
    assert "after" not in outcome.event
    assert outcome.reason == (
        "pipelines.local[1].timestamp failed: field filter.qid is not an ISO 8601 time: '44ABCDm0000123'"
    )
    json.dumps(outcome.event)


def test_missing_field_is_failure():
    compiled = compile_one([{"uppercase": {"field": "msg.header.cc", "on_failure": "dead_letter"}}])
    outcome = PipelineRunner([compiled["local"]], CONTEXT).apply(copy.deepcopy(MESSAGES[0]))
    assert outcome.kind == "dead_letter"
    assert outcome.reason.endswith("field msg.header.cc is missing")


def test_runtime_condition_error_is_failure():
    compiled = compile_one([{"drop": {"if": "length(filter.msgSizeBytes) > `1`", "on_failure": "dead_letter"}}])
    outcome = PipelineRunner([compiled["local"]], CONTEXT).apply(copy.deepcopy(MESSAGES[0]))
    assert outcome.kind == "dead_letter"
    assert "if condition failed" in outcome.reason


def test_failure_logging_is_rate_limited(caplog):
    caplog.set_level(logging.WARNING, logger="podspool.pipelines")
    clock = FakeClock()
    runner = failing_runner("skip", clock)
    for _ in range(5):
        runner.apply(copy.deepcopy(MESSAGES[0]))
    assert len(caplog.records) == 1
    clock.now += 61
    runner.apply(copy.deepcopy(MESSAGES[0]))
    assert len(caplog.records) == 2
    assert caplog.records[1].suppressed == 4
    assert "4 more failures in the last 61 s were not logged" in caplog.records[1].getMessage()
    assert runner.failures["pipelines.local[1].timestamp"] == 6


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"envelope": "not an object", "connection": ["a"], "ts": 5},
        {"envelope": {"from": None, "rcpts": [None, 3]}, "msg": {"header": {"from": {"x": 1}}}},
        {"connection": {"ip": {"v": 4}}, "audit": {"user": []}},
    ],
)
def test_odd_events_never_raise(databases, event):
    raw, _ = shipped_raw(databases["city"])
    compiled = compile_pipelines(raw, {})
    for name in compiled:
        for proc in compiled[name].processors:
            proc.ignore_missing = False
    runner = PipelineRunner(select_pipelines(compiled, ["email_enrichment", "geo_lookup"]), CONTEXT)
    outcome = runner.apply(event)
    assert isinstance(outcome, Outcome)
    assert outcome.kind == "keep"
    assert sum(runner.failures.values()) >= 1
    runner.close()


# GeoIP readers


def test_runners_share_and_close_readers(databases):
    before = geoip.open_count()
    compiled = compile_one([{"geoip": {"field": "connection.ip", "target_field": "geo", "database_file": databases["city"]}}])
    first = PipelineRunner([compiled["local"]], CONTEXT)
    second = PipelineRunner([compiled["local"]], CONTEXT)
    assert geoip.open_count() == before + 1
    assert first.databases[databases["city"]] is second.databases[databases["city"]]
    first.close()
    first.close()
    assert second.apply(copy.deepcopy(MESSAGES[1])).event["geo"]["country_iso_code"] == "US"
    second.close()
    assert geoip.open_count() == before


def test_runner_missing_database_raises(databases, tmp_path):
    path = tmp_path / "city.mmdb"
    write_city_database(path)
    compiled = compile_one([{"geoip": {"field": "connection.ip", "target_field": "geo", "database_file": str(path)}}])
    path.unlink()
    with pytest.raises(ConfigError) as caught:
        PipelineRunner([compiled["local"]], CONTEXT)
    assert "device pod-east: GeoIP database" in str(caught.value)


# the shipped pipelines


def shipped_raw(database_file):
    with open(SHIPPED, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)["pipelines"]
    for step in raw["geo_lookup"]:
        step["geoip"]["database_file"] = database_file
    return raw, {name: SHIPPED for name in raw}


def test_shipped_config_compiles_unused():
    with open(SHIPPED, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert set(document) == {"pipelines"}
    compiled = compile_pipelines(document["pipelines"], {}, used={"email_enrichment"})
    assert sorted(compiled) == ["email_enrichment", "geo_lookup"]


def test_shipped_missing_database_error(tmp_path):
    raw, sources = shipped_raw(str(tmp_path / "GeoLite2-City.mmdb"))
    with pytest.raises(ConfigError) as caught:
        compile_pipelines(raw, sources)
    assert str(caught.value).startswith(f"{SHIPPED}: pipelines.geo_lookup[0].geoip.database_file: database file not found")


@pytest.mark.parametrize("log_type", ["message", "maillog", "audit"])
def test_shipped_pipelines_on_samples(databases, log_type):
    raw, sources = shipped_raw(databases["city"])
    compiled = compile_pipelines(raw, sources)
    context = dict(CONTEXT, type=log_type)
    runner = PipelineRunner(select_pipelines(compiled, ["email_enrichment", "geo_lookup"]), context)
    events = load_samples(log_type)
    outcomes = [runner.apply(event) for event in events]
    runner.close()
    assert runner.failures == {}
    assert [outcome.kind for outcome in outcomes] == ["keep"] * len(events)
    for outcome in outcomes:
        assert outcome.event["podspool"]["type"] == log_type
        assert outcome.event["@timestamp"].endswith("Z")
        json.dumps(outcome.event)


def test_shipped_pipelines_message_fields(databases):
    raw, sources = shipped_raw(databases["city"])
    compiled = compile_pipelines(raw, sources)
    runner = PipelineRunner(select_pipelines(compiled, ["email_enrichment", "geo_lookup"]), CONTEXT)
    event = runner.apply(copy.deepcopy(MESSAGES[15])).event
    assert event["envelope"]["from_domain"] == "demo.example.com"
    assert event["envelope"]["rcpts_domains"] == ["rcpt.example.com"]
    assert event["msg"]["from_domains"] == ["univ.example.org"]
    assert event["connection"]["geo"]["city_name"] == "Berlin"
    assert event["@timestamp"] == "2022-08-26T00:25:21.071953Z"
    audit = runner.apply(load_samples("audit")[0]).event
    assert audit["audit"]["user"]["geo"]["country_iso_code"] == "US"
    runner.close()
