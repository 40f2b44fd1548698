"""Configuration loading: merge rules, defaults and one test per error kind."""

import textwrap

import pytest

from podspool import config
from podspool.cli import main
from podspool.errors import ConfigError

SENTINEL = "SENTINEL-TOKEN-5d1e0c7a"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def device_yaml(device_id=1, name="pod", token=SENTINEL, extra_properties="", extra=""):
    return f"""\
    - id: {device_id}
      name: {name}
      type: proofpoint
      {extra}
      properties:
        cluster: example_hosted
        token: "{token}"
        {extra_properties}
    """


@pytest.fixture
def main_file(tmp_path):
    return write(tmp_path / "podspool.yaml", f"""\
    spool:
      directory: {tmp_path}/spool
    state_directory: {tmp_path}/state
    secrets_directory: {tmp_path}/secrets
    """)


def load_error(main_file, environ=None):
    with pytest.raises(ConfigError) as caught:
        config.load(str(main_file), environ=environ or {})
    return str(caught.value)


def assert_names(message, *parts):
    for part in parts:
        assert part in message, f"{part!r} missing from: {message}"
    assert SENTINEL not in message


def test_config_bare_device_list_drop_in(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml())
    settings = config.load(str(main_file), environ={})
    device = settings.devices[0]
    assert device.name == "pod"
    assert device.token == SENTINEL
    assert device.type == "message"
    assert device.endpoint == "wss://logstream.proofpoint.com:443/v1/stream"
    assert device.workers == 1
    assert device.reuse is True
    assert device.status is True
    assert device.secure is False
    assert settings.files[-1].endswith("10-pod.yaml")


def test_config_drop_ins_read_in_name_order(main_file):
    write(main_file.parent / "conf.d" / "20-b.yml", device_yaml(2, "second"))
    write(main_file.parent / "conf.d" / "10-a.yaml", "devices:\n" + textwrap.indent(
        textwrap.dedent(device_yaml(1, "first")), "  "))
    settings = config.load(str(main_file), environ={})
    assert [d.name for d in settings.devices] == ["first", "second"]


def test_config_missing_conf_d_is_fine(main_file):
    settings = config.load(str(main_file), environ={})
    assert settings.devices == ()
    assert settings.spool.rotate_bytes == 64 * 1024 * 1024
    assert settings.spool.fsync == "interval"


def test_config_sizes_and_durations(main_file):
    write(main_file, main_file.read_text() + textwrap.dedent("""\
    """))
    text = main_file.read_text().replace("spool:\n", "spool:\n  rotate_bytes: 1GiB\n  rotate_seconds: 0.5\n"
                                         "  max_bytes: 500kB\n")
    main_file.write_text(text)
    settings = config.load(str(main_file), environ={})
    assert settings.spool.rotate_bytes == 1024**3
    assert settings.spool.rotate_seconds == 0.5
    assert settings.spool.max_bytes == 500_000


def test_config_unknown_key(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="colour: blue"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.colour", "unknown key", "valid keys here are")


def test_config_unknown_top_level_key(main_file):
    main_file.write_text(main_file.read_text() + "spoool: {}\n")
    message = load_error(main_file)
    assert_names(message, "podspool.yaml", "spoool", "unknown key")


def test_config_wrong_type(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="workers: four"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.workers", "expected an integer", "'four'")


def test_config_wrong_size(main_file):
    main_file.write_text(main_file.read_text().replace("spool:\n", "spool:\n  rotate_bytes: 64 potatoes\n"))
    message = load_error(main_file)
    assert_names(message, "podspool.yaml", "spool.rotate_bytes", "64MiB", "'64 potatoes'")


def test_config_missing_required_field(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", """\
    - id: 1
      name: pod
      type: proofpoint
      properties:
        token: "SENTINEL-TOKEN-5d1e0c7a"
    """)
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.cluster", "missing required key", "add cluster:")


def test_config_device_type_not_proofpoint(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml().replace("type: proofpoint", "type: tap"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].type", "proofpoint", "'tap'")


def test_config_log_type_invalid(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="type: mail"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.type", "message, maillog, audit", "'mail'")


def test_config_audit_type_accepted(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="type: audit"))
    assert config.load(str(main_file), environ={}).devices[0].type == "audit"


@pytest.mark.parametrize("field,first,second,label", [
    ("id", (1, "a"), (1, "b"), "device id"),
    ("name", (1, "same"), (2, "same"), "device name"),
])
def test_config_duplicate_device_names_both_files(main_file, field, first, second, label):
    write(main_file.parent / "conf.d" / "10-a.yaml", device_yaml(*first))
    write(main_file.parent / "conf.d" / "20-b.yaml", device_yaml(*second))
    message = load_error(main_file)
    assert_names(message, "10-a.yaml", "20-b.yaml", label, "defined twice", "rename or remove")


def test_config_duplicate_output_names(main_file):
    output = """\
    outputs:
      - name: archive
        type: file
        path: /tmp/x/{device}.ndjson
    """
    write(main_file.parent / "conf.d" / "10-a.yaml", output)
    write(main_file.parent / "conf.d" / "20-b.yaml", output)
    message = load_error(main_file)
    assert_names(message, "10-a.yaml", "20-b.yaml", "output 'archive'", "defined twice")


def test_config_duplicate_pipeline_names(main_file):
    pipeline = """\
    pipelines:
      tidy:
        - lowercase: {field: envelope.from}
    """
    write(main_file.parent / "conf.d" / "10-a.yaml", pipeline)
    write(main_file.parent / "conf.d" / "20-b.yaml", pipeline)
    message = load_error(main_file)
    assert_names(message, "10-a.yaml", "20-b.yaml", "pipeline 'tidy'", "defined twice")


def test_config_unknown_pipeline_reference(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra="pipelines: [nowhere]"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].pipelines[0]", "unknown pipeline 'nowhere'", "define it under pipelines:")


def test_config_workers_below_one(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="workers: 0"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.workers", "at least 1")


def test_config_workers_without_reuse(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml",
          device_yaml(extra_properties="workers: 4\n        reuse: false"))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.workers", "reuse: true", "one session per token")


def test_config_yaml_syntax_error(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", "- id: 1\n  name: [unclosed\n")
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "line", "fix the YAML syntax")


def test_config_error_never_shows_token(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="verify_tls: maybe"))
    message = load_error(main_file)
    assert_names(message, "[0].properties.verify_tls")


def test_config_invalid_token_value_hidden(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(token="   "))
    message = load_error(main_file)
    assert_names(message, "[0].properties.token", "non-empty")
    assert "got" not in message


@pytest.mark.parametrize("kind", ["unknown_key", "duplicate", "workers"])
def test_cli_check_exits_two_on_errors(main_file, capsys, kind):
    if kind == "unknown_key":
        write(main_file.parent / "conf.d" / "10.yaml", device_yaml(extra_properties="colour: blue"))
    elif kind == "duplicate":
        write(main_file.parent / "conf.d" / "10.yaml", device_yaml(1, "a"))
        write(main_file.parent / "conf.d" / "20.yaml", device_yaml(1, "b"))
    else:
        write(main_file.parent / "conf.d" / "10.yaml", device_yaml(extra_properties="workers: 0"))
    status = main(["check", "-c", str(main_file)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("error: ")
    assert "10.yaml" in captured.err
    assert "Traceback" not in captured.err
    assert SENTINEL not in captured.err + captured.out


def test_cli_check_prints_summary_without_token(main_file, capsys):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra="tags: [eu]"))
    status = main(["check", "-c", str(main_file)])
    captured = capsys.readouterr()
    assert status == 0
    assert "pod (id 1): cluster example_hosted, type message" in captured.out
    assert SENTINEL not in captured.out + captured.err
    assert (main_file.parent / "spool").is_dir()
    assert (main_file.parent / "state").is_dir()


def test_cli_check_unwritable_directory(main_file, capsys, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    main_file.write_text(main_file.read_text().replace(f"{tmp_path}/spool", f"{blocker}/spool"))
    status = main(["check", "-c", str(main_file)])
    captured = capsys.readouterr()
    assert status == 2
    assert "spool.directory" in captured.err
    assert "cannot be created or written" in captured.err


def test_cli_check_missing_main_file(tmp_path, capsys):
    status = main(["check", "-c", str(tmp_path / "absent.yaml")])
    assert status == 2
    assert "absent.yaml: file not found" in capsys.readouterr().err


def test_config_missing_geoip_database_only_when_used(main_file, tmp_path):
    write(main_file.parent / "conf.d" / "10-pipelines.yaml", f"""\
    pipelines:
      geo:
        - geoip: {{field: connection.ip, target_field: geo, database_file: {tmp_path}/absent.mmdb}}
    """)
    write(main_file.parent / "conf.d" / "20-pod.yaml", device_yaml())
    assert config.load(str(main_file), environ={}).devices[0].pipelines == ()

    write(main_file.parent / "conf.d" / "20-pod.yaml", device_yaml(extra="pipelines: [geo]"))
    message = load_error(main_file)
    assert_names(message, "10-pipelines.yaml", "database_file", "absent.mmdb")


def test_config_duplicate_yaml_key(main_file):
    main_file.write_text(main_file.read_text() + "devices: []\ndevices: []\n")
    message = load_error(main_file)
    assert_names(message, "podspool.yaml", "line", "'devices' is given twice")


def test_config_yaml_error_hides_token(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(token="x").replace(
        '"x"', "!" + SENTINEL))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "line", "quote values")


def test_config_directory_instead_of_file(main_file):
    (main_file.parent / "conf.d" / "10-dir.yaml").mkdir(parents=True)
    message = load_error(main_file)
    assert_names(message, "10-dir.yaml", "is a directory")


@pytest.mark.parametrize("name", ["a/b", "..", ".hidden", "dead-letter"])
def test_config_device_name_not_directory(main_file, name):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(name=f'"{name}"'))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].name", "spool directory")


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:1/v1/stream", "ws://[::1", "wss:///v1/stream"])
def test_config_endpoint_must_be_websocket(main_file, endpoint):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties=f'endpoint: "{endpoint}"'))
    message = load_error(main_file)
    assert_names(message, "10-pod.yaml", "[0].properties.endpoint", "wss://")


@pytest.mark.parametrize("value", [".nan", ".inf", "-1"])
def test_config_seconds_must_be_finite(main_file, value):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties=f"ping_interval_seconds: {value}"))
    message = load_error(main_file)
    assert_names(message, "[0].properties.ping_interval_seconds")


def test_config_since_accepts_yaml_date(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(extra_properties="since: 2024-01-01"))
    device = config.load(str(main_file), environ={}).devices[0]
    assert device.since == "2024-01-01T00:00:00+00:00"


def test_config_missing_ca_file(main_file, tmp_path):
    write(main_file.parent / "conf.d" / "10-pod.yaml",
          device_yaml(extra_properties=f"ca_file: {tmp_path}/absent.pem"))
    message = load_error(main_file)
    assert_names(message, "[0].properties.ca_file", "cannot be read")


def test_config_reference_shown_unresolved(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml",
          device_yaml(extra_properties='workers: "${WORKERS}"'))
    message = load_error(main_file, environ={"WORKERS": "many-" + SENTINEL})
    assert_names(message, "[0].properties.workers", "${WORKERS}")


def test_config_status_loads_without_secrets(main_file):
    write(main_file.parent / "conf.d" / "10-pod.yaml", device_yaml(token="${ABSENT}"))
    settings = config.load(str(main_file), environ={}, resolve_secrets=False)
    assert settings.devices[0].name == "pod"
    assert settings.devices[0].token == "(unresolved)"
    with pytest.raises(ConfigError):
        config.load(str(main_file), environ={})
