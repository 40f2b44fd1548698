"""Each processor on the bundled PoD sample events, with and without `if:`."""

import copy
import json
import os

import pytest

from podspool.errors import ConfigError
from podspool.pipelines import PipelineRunner, compile_pipelines

SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "podspool", "samples")
CONTEXT = {"device": "pod-east", "cluster": "acme_hosted", "type": "message", "tags": ["prod", "mail"]}


def load_samples(log_type):
    with open(os.path.join(SAMPLES, f"{log_type}.ndjson"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


MESSAGES = load_samples("message")
MAILLOG = load_samples("maillog")
AUDIT = load_samples("audit")


def message(index):
    return copy.deepcopy(MESSAGES[index])


def make_runner(steps, context=CONTEXT):
    pipelines = compile_pipelines({"test": steps}, {"test": "/etc/podspool/conf.d/test.yaml"})
    return PipelineRunner([pipelines["test"]], context)


def apply(steps, event, context=CONTEXT):
    runner = make_runner(steps, context)
    try:
        return runner.apply(event)
    finally:
        runner.close()


# set


def test_set_writes_constant_value():
    outcome = apply([{"set": {"field": "labels.source", "value": "pod"}}], message(0))
    assert outcome.kind == "keep"
    assert outcome.event["labels"] == {"source": "pod"}


def test_set_copies_from_field():
    event = message(0)
    outcome = apply([{"set": {"field": "sender", "copy_from": "envelope.rcpts"}}], event)
    assert outcome.event["sender"] == ["pps@m0000123.ppops.net"]
    outcome.event["sender"].append("x@example.com")
    assert event["envelope"]["rcpts"] == ["pps@m0000123.ppops.net"]


def test_set_constant_list_not_shared():
    runner = make_runner([{"set": {"field": "labels", "value": ["a"]}}])
    first = runner.apply(message(0)).event
    second = runner.apply(message(1)).event
    first["labels"].append("b")
    assert second["labels"] == ["a"]


def test_set_respects_if_condition():
    steps = [{"set": {"field": "flagged", "value": True, "if": "filter.routeDirection == 'inbound'"}}]
    directions = [event["filter"]["routeDirection"] for event in MESSAGES]
    flagged = [apply(steps, copy.deepcopy(event)).event.get("flagged") for event in MESSAGES]
    assert flagged == [True if direction == "inbound" else None for direction in directions]
    assert True in flagged
    assert None in flagged


# rename


def test_rename_moves_nested_field():
    outcome = apply([{"rename": {"field": "connection.ip", "target_field": "source.ip"}}], message(1))
    assert outcome.event["source"] == {"ip": "192.0.2.11"}
    assert "ip" not in outcome.event["connection"]


def test_rename_respects_if_condition():
    steps = [{"rename": {"field": "filter", "target_field": "verdict", "if": "connection.ip == '127.0.0.1'"}}]
    assert "verdict" in apply(steps, message(0)).event
    assert "verdict" not in apply(steps, message(1)).event
    assert "filter" in apply(steps, message(1)).event


def test_rename_into_own_child():
    outcome = apply([{"rename": {"field": "envelope", "target_field": "envelope.original"}}], message(0))
    assert outcome.event["envelope"]["original"]["from"] == "pps@m0000123.ppops.net"


def test_rename_restores_field_on_failure():
    outcome = apply([{"rename": {"field": "filter", "target_field": "msgParts.filter", "on_failure": "dead_letter"}}],
                    message(0))
    assert outcome.kind == "dead_letter"
    assert outcome.event["filter"] == MESSAGES[0]["filter"]


# remove


def test_remove_single_and_list():
    outcome = apply([{"remove": {"field": "msgParts"}}, {"remove": {"field": ["msg.normalizedHeader", "metadata"]}}], message(15))
    assert "msgParts" not in outcome.event
    assert "normalizedHeader" not in outcome.event["msg"]
    assert "metadata" not in outcome.event


def test_remove_missing_field_fails():
    outcome = apply([{"remove": {"field": ["filter", "nope.absent"], "on_failure": "dead_letter"}}], message(0))
    assert outcome.kind == "dead_letter"
    assert "nope.absent is missing" in outcome.reason
    assert "filter" in outcome.event  # nothing removed when one field is missing


def test_remove_ignore_missing_removes_present():
    outcome = apply([{"remove": {"field": ["filter", "nope.absent"], "ignore_missing": True}}], message(0))
    assert outcome.kind == "keep"
    assert "filter" not in outcome.event


def test_remove_respects_if_condition():
    steps = [{"remove": {"field": "msgParts", "if": "length(msgParts) > `1`"}}]
    assert "msgParts" not in apply(steps, message(16)).event
    assert "msgParts" in apply(steps, message(15)).event


# lowercase and uppercase


def test_lowercase_string_and_list():
    steps = [
        {"lowercase": {"field": "connection.helo"}},
        {"lowercase": {"field": "msg.header.subject"}},
    ]
    event = apply(steps, message(15)).event
    assert event["connection"]["helo"] == "n35.mx.example.net"
    assert event["msg"]["header"]["subject"] == ["[wmoms] ctts"]
    event = apply([{"lowercase": {"field": "filter.qid"}}], message(0)).event
    assert event["filter"]["qid"] == "44abcdm0000123"


def test_uppercase_respects_if_condition():
    steps = [{"uppercase": {"field": "filter.disposition", "if": "filter.disposition == 'continue'"}}]
    assert apply(steps, message(15)).event["filter"]["disposition"] == "CONTINUE"
    assert apply(steps, message(0)).event["filter"]["disposition"] == "accept"


def test_lowercase_non_string_fails():
    outcome = apply([{"lowercase": {"field": "filter.msgSizeBytes", "on_failure": "dead_letter"}}], message(0))
    assert outcome.kind == "dead_letter"
    assert "is a int, not a string" in outcome.reason


# drop


def test_drop_without_condition():
    outcome = apply([{"drop": {}}, {"set": {"field": "after", "value": 1}}], message(0))
    assert outcome.kind == "drop"
    assert "after" not in outcome.event


def test_drop_by_spam_verdict():
    steps = [{"drop": {"if": "filter.modules.spam.scores.overall >= `90`"}}]
    runner = make_runner(steps)
    kinds = [runner.apply(copy.deepcopy(event)).kind for event in MESSAGES]
    dropped = [event["guid"] for event, kind in zip(MESSAGES, kinds) if kind == "drop"]
    assert dropped == [MESSAGES[16]["guid"]]  # the phish verdict, overall score 100
    assert kinds.count("keep") == len(MESSAGES) - 1


def test_drop_by_phish_classifier():
    steps = [{"drop": {"if": "filter.modules.spam.triggeredClassifier == 'phish'"}}]
    assert apply(steps, message(16)).kind == "drop"
    assert apply(steps, message(15)).kind == "keep"
    assert apply(steps, copy.deepcopy(MAILLOG[0])).kind == "keep"


# email_domain


def test_email_domain_envelope_string():
    outcome = apply([{"email_domain": {"field": "envelope.from", "target_field": "sender_domain"}}], message(15))
    assert outcome.event["sender_domain"] == "demo.example.com"


def test_email_domain_header_lists():
    steps = [{"email_domain": {"field": "msg.header.from", "target_field": "from_domains"}}]
    expected = {
        0: ["m0000123.ppops.net"],  # "(Cron Daemon)" <pps@m0000123.ppops.net>
        6: ["google.com"],  # G Suite Alerts <gsuite-alerts-noreply@google.com>
        9: ["m0072552.ppops.net"],  # root@m0072552.ppops.net (Cron Daemon)
        15: ["univ.example.org"],  # "User, Example" <user10@univ.example.org>
        16: ["phish.example.net"],
    }
    for index, domains in expected.items():
        assert apply(steps, message(index)).event["from_domains"] == domains, index


@pytest.mark.parametrize(
    "addresses, domains",
    [
        (['"Name" <User@Example.COM>'], ["example.com"]),
        (['"Doe, Jane" <jane@a.example>, bob@B.example'], ["a.example", "b.example"]),
        (["x@a.example", "<y@a.example>", "z@c.example."], ["a.example", "c.example"]),
        (["<user13@vogon.example.org>"], ["vogon.example.org"]),
        (["undisclosed-recipients:;", "ok@d.example"], ["d.example"]),
    ],
)
def test_email_domain_address_forms(addresses, domains):
    event = {"to": addresses}
    outcome = apply([{"email_domain": {"field": "to", "target_field": "to_domains"}}], event)
    assert outcome.event["to_domains"] == domains


def test_email_domain_null_sender_missing():
    steps = [{"email_domain": {"field": "envelope.from", "target_field": "d", "on_failure": "dead_letter"}}]
    outcome = apply(steps, {"envelope": {"from": "<>"}})
    assert outcome.kind == "dead_letter"
    assert "no email address with a domain" in outcome.reason
    ignored = [{"email_domain": {"field": "envelope.from", "target_field": "d", "ignore_missing": True}}]
    assert "d" not in apply(ignored, {"envelope": {"from": "<>"}}).event


def test_email_domain_non_string_item_fails():
    steps = [{"email_domain": {"field": "to", "target_field": "d", "on_failure": "dead_letter"}}]
    outcome = apply(steps, {"to": ["a@b.example", 7]})
    assert outcome.kind == "dead_letter"
    assert "item 1 is a int" in outcome.reason


def test_email_domain_respects_if_condition():
    steps = [{"email_domain": {"field": "envelope.rcpts", "target_field": "rcpt_domains", "if": "filter.routeDirection == 'outbound'"}}]
    assert apply(steps, message(17)).event["rcpt_domains"] == ["partner.example.com"]
    assert "rcpt_domains" not in apply(steps, message(16)).event


# geoip


def geo_steps(databases, **extra):
    options = {"field": "connection.ip", "target_field": "connection.geo", "database_file": databases["city"]}
    options.update(extra)
    return [{"geoip": options}]


def test_geoip_city_ipv4_sample(databases):
    event = apply(geo_steps(databases), message(15)).event
    assert event["connection"]["geo"] == {
        "country_iso_code": "DE",
        "country_name": "Germany",
        "city_name": "Berlin",
        "location": {"lat": 52.52, "lon": 13.405},
    }


def test_geoip_city_ipv6_address(databases):
    event = apply(geo_steps(databases), {"connection": {"ip": "2001:db8:cf40::1"}}).event
    assert event["connection"]["geo"]["country_iso_code"] == "NL"
    assert event["connection"]["geo"]["city_name"] == "Amsterdam"
    assert event["connection"]["geo"]["location"] == {"lat": 52.37, "lon": 4.89}


def test_geoip_country_only_record(databases):
    event = apply(geo_steps(databases), {"connection": {"ip": "203.0.113.7"}}).event
    assert event["connection"]["geo"] == {"country_iso_code": "JP", "country_name": "Japan"}


def test_geoip_unknown_address_writes_nothing(databases):
    outcome = apply(geo_steps(databases, on_failure="dead_letter"), message(0))  # 127.0.0.1
    assert outcome.kind == "keep"
    assert "geo" not in outcome.event["connection"]
    assert outcome.changed is False


def test_geoip_cached_fields_not_shared(databases):
    runner = make_runner(geo_steps(databases))
    first = runner.apply(message(15)).event["connection"]["geo"]
    first["location"]["lat"] = 0.0
    first["country_iso_code"] = "XX"
    second = runner.apply(message(15)).event["connection"]["geo"]
    runner.close()
    assert second["location"] == {"lat": 52.52, "lon": 13.405}
    assert second["country_iso_code"] == "DE"


def test_geoip_asn_merges_into_target(databases):
    steps = geo_steps(databases) + geo_steps({"city": databases["asn"]})
    geo = apply(steps, message(1)).event["connection"]["geo"]
    assert geo["country_iso_code"] == "US"
    assert geo["city_name"] == "Springfield"
    assert geo["asn"] == 64496
    assert geo["as_org"] == "Example Net A"


def test_geoip_ipv6_in_ipv4_database(databases):
    outcome = apply(geo_steps({"city": databases["asn"]}, on_failure="dead_letter"), {"connection": {"ip": "2001:db8::1"}})
    assert outcome.kind == "keep"
    assert outcome.event["connection"] == {"ip": "2001:db8::1"}


@pytest.mark.parametrize("value", ["[unknown]", "", "192.0.2.300", 12345])
def test_geoip_invalid_address_fails(databases, value):
    outcome = apply(geo_steps(databases, on_failure="dead_letter"), {"connection": {"ip": value}})
    assert outcome.kind == "dead_letter"
    assert "pipelines.test[0].geoip failed" in outcome.reason


def test_geoip_audit_user_address(databases):
    steps = [{"geoip": {"field": "audit.user.ipAddress", "target_field": "audit.user.geo", "database_file": databases["city"]}}]
    event = apply(steps, copy.deepcopy(AUDIT[0])).event
    assert event["audit"]["user"]["geo"]["country_iso_code"] == "US"


def test_geoip_respects_if_condition(databases):
    steps = geo_steps(databases, **{"if": "filter.routeDirection == 'internal'"})
    assert "geo" in apply(steps, message(16)).event["connection"]
    assert "geo" not in apply(steps, message(15)).event["connection"]


# timestamp


def test_timestamp_normalises_sample_ts():
    event = apply([{"timestamp": {}}], message(0)).event
    assert event["@timestamp"] == "2024-05-22T19:10:03.058340Z"


@pytest.mark.parametrize(
    "ts, expected",
    [
        ("2024-06-19T05:25:41.855197-07:00", "2024-06-19T12:25:41.855197Z"),
        ("2023-10-25T21:49:38.968838+0000", "2023-10-25T21:49:38.968838Z"),
        ("2024-02-15T05:25:41-0700", "2024-02-15T12:25:41.000000Z"),
    ],
)
def test_timestamp_offset_forms(ts, expected):
    event = apply([{"timestamp": {"field": "when", "target_field": "event.created"}}], {"when": ts}).event
    assert event["event"]["created"] == expected


def test_timestamp_invalid_value_fails():
    outcome = apply([{"timestamp": {"on_failure": "dead_letter"}}], {"ts": "yesterday"})
    assert outcome.kind == "dead_letter"
    assert "'yesterday'" in outcome.reason


def test_timestamp_respects_if_condition():
    steps = [{"timestamp": {"if": "guid"}}]
    assert "@timestamp" in apply(steps, copy.deepcopy(AUDIT[0])).event
    assert "@timestamp" not in apply(steps, copy.deepcopy(MAILLOG[0])).event


# add_metadata


def test_add_metadata_writes_context():
    event = apply([{"add_metadata": None}], message(0)).event
    assert event["podspool"] == {"device": "pod-east", "cluster": "acme_hosted", "type": "message", "tags": ["prod", "mail"]}


def test_add_metadata_target_and_if():
    steps = [{"add_metadata": {"target_field": "labels.collector", "if": "audit"}}]
    assert apply(steps, copy.deepcopy(AUDIT[0])).event["labels"]["collector"]["device"] == "pod-east"
    assert "labels" not in apply(steps, message(0)).event


# field paths and conditions


def test_path_crossing_list_fails():
    outcome = apply([{"set": {"field": "x", "copy_from": "msgParts.md5", "on_failure": "dead_letter"}}], message(15))
    assert outcome.kind == "dead_letter"
    assert "msgParts is a list" in outcome.reason


def test_path_crossing_string_fails():
    outcome = apply([{"set": {"field": "guid.part", "value": 1, "on_failure": "dead_letter"}}], message(0))
    assert outcome.kind == "dead_letter"
    assert "guid is a str, not an object" in outcome.reason


def test_null_field_counts_as_missing():
    steps = [{"uppercase": {"field": "a.b", "ignore_missing": True}}]
    outcome = apply(steps, {"a": {"b": None}})
    assert outcome.kind == "keep"
    assert outcome.event == {"a": {"b": None}}


def test_condition_zero_is_truthy():
    steps = [{"set": {"field": "scored", "value": True, "if": "filter.modules.spam.scores.overall"}}]
    assert apply(steps, message(15)).event["scored"] is True  # overall is 0
    assert "scored" not in apply(steps, message(0)).event


def test_condition_empty_list_is_false():
    steps = [{"set": {"field": "has_parts", "value": True, "if": "msgParts"}}]
    assert "has_parts" not in apply(steps, message(0)).event
    assert apply(steps, message(15)).event["has_parts"] is True


@pytest.mark.parametrize("step", [
    {"lowercase": {"field": "guid"}},
    {"rename": {"field": "id", "target_field": "other"}},
    {"rename": {"field": "other", "target_field": "ts"}},
    {"remove": {"field": ["msgParts", "ts"]}},
    {"timestamp": {"target_field": "ts"}},
    {"set": {"field": "guid", "value": "x"}},
])
def test_key_fields_cannot_change(step):
    with pytest.raises(ConfigError) as caught:
        compile_pipelines({"p": [step]}, {"p": "pipes.yaml"})
    assert "pipes.yaml" in str(caught.value)
    assert "make the dedup key" in str(caught.value)


def test_key_fields_may_be_read():
    compiled = compile_pipelines({"p": [{"set": {"field": "my_guid", "copy_from": "guid"}},
                                        {"email_domain": {"field": "envelope.from", "target_field": "d"}}]},
                                 {"p": "pipes.yaml"})
    assert "p" in compiled
