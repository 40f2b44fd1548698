"""Output types: each type's own `options` keys with converters, and the Destination class per type.

The configuration loader calls `validate_options`, which rejects unknown and
invalid keys and converts values in place. `build_destination` imports the
type's module on first use, so `syslog` and `kafka` (and confluent-kafka)
load only when configured.
"""

import importlib
import string
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from podspool import convert
from podspool.errors import ConfigError
from podspool.outputs.base import Destination

SECRET_OPTIONS = frozenset({"token", "api_key", "password"})


@dataclass(frozen=True)
class OptionSpec:
    convert: Callable[[Any], Any]
    default: Any = None
    description: str = ""
    required: bool = False


def to_url(value):
    """Accept an http or https URL with a host."""
    text = convert.to_str(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return text


def to_url_list(value):
    """Accept one URL or a non-empty list of URLs; return a tuple."""
    if isinstance(value, str):
        return (to_url(value),)
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a URL or a non-empty list of URLs")
    return tuple(to_url(item) for item in value)


def to_headers(value):
    """Accept a mapping of header names to string values."""
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(item, str) for key, item in value.items()):
        raise ValueError("expected a mapping of header names to strings")
    return dict(value)


def to_mapping(value):
    if not isinstance(value, dict):
        raise ValueError("expected a mapping")
    return dict(value)


def to_template(allowed):
    """Return a converter for a string whose `{placeholders}` are all in ALLOWED."""

    def check(value):
        text = convert.to_str(value)
        try:
            names = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
        except ValueError:
            raise ValueError("expected a template with balanced { and }") from None
        unknown = sorted(names - set(allowed))
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use "
                             + ", ".join("{" + name + "}" for name in allowed))
        return text

    return check


def to_port(value):
    port = convert.to_int(value, minimum=1)
    if port > 65535:
        raise ValueError("expected a port from 1 to 65535")
    return port


_str = convert.to_str
_bool = convert.to_bool

OPTION_SPECS = {
    "http": {
        "url": OptionSpec(to_url, required=True, description="URL that batches are POSTed to"),
        "format": OptionSpec(convert.to_choice(("ndjson", "json_array")), "ndjson",
                             "request body: one event per line, or one JSON array"),
        "gzip": OptionSpec(_bool, False, "compress request bodies with gzip"),
        "headers": OptionSpec(to_headers, {}, "extra request headers"),
    },
    "splunk_hec": {
        "url": OptionSpec(to_url, required=True,
                          description="HEC base URL; podspool adds /services/collector/event"),
        "token": OptionSpec(_str, required=True, description="HEC token"),
        "index": OptionSpec(_str, None, "Splunk index; the token's default index when unset"),
        "source": OptionSpec(_str, None, "event source; default podspool:<device>"),
        "sourcetype": OptionSpec(_str, None, "event sourcetype; default proofpoint:pod:<type>"),
        "host": OptionSpec(_str, None, "event host; default this machine's host name"),
        "ack": OptionSpec(_bool, False, "confirm delivery through indexer acknowledgement"),
        "ack_poll_seconds": OptionSpec(convert.to_positive_seconds, 1.0,
                                       "longest wait between two acknowledgement polls"),
        "ack_timeout_seconds": OptionSpec(convert.to_positive_seconds, 300.0,
                                          "time without acknowledgement after which a batch is sent again"),
    },
    "elasticsearch": {
        "url": OptionSpec(to_url_list, required=True,
                          description="base URL or list of URLs; podspool adds /_bulk"),
        "index": OptionSpec(to_template(("type", "device")), "logs-proofpoint_on_demand.{type}-default",
                            "index or data stream; {type} and {device} are replaced"),
        "api_key": OptionSpec(_str, None, "API key, sent as Authorization: ApiKey"),
        "username": OptionSpec(_str, None, "user for basic authentication"),
        "password": OptionSpec(_str, None, "password for basic authentication"),
    },
    "file": {
        "path": OptionSpec(to_template(("device", "type", "date")), required=True,
                           description="NDJSON file; {device}, {type} and {date} (UTC YYYY-MM-DD) are replaced"),
    },
    # syslog and kafka validate their own options (their modules' validate_options); these two
    # entries list the keys and defaults for documentation and for `podspool check`.
    "syslog": {
        "host": OptionSpec(_str, required=True, description="syslog receiver host"),
        "port": OptionSpec(to_port, None, "receiver port; default 514, or 6514 for tls"),
        "protocol": OptionSpec(convert.to_choice(("tcp", "tls", "udp")), "tcp", "transport"),
        "framing": OptionSpec(convert.to_choice(("octet-counting", "newline")), "octet-counting",
                              "TCP and TLS message framing (RFC 6587)"),
        "app_name": OptionSpec(_str, "podspool", "RFC 5424 APP-NAME"),
        "hostname": OptionSpec(_str, None, "RFC 5424 HOSTNAME; default this machine's host name"),
        "facility": OptionSpec(_str, "local0", "syslog facility name"),
        "severity": OptionSpec(_str, "info", "syslog severity name"),
        "max_message_bytes": OptionSpec(lambda value: convert.to_int(value, minimum=1), None,
                                        "largest message; larger events are rejected"),
    },
    "kafka": {
        "bootstrap_servers": OptionSpec(_str, required=True, description="host:port, a comma list or a YAML list"),
        "topic": OptionSpec(to_template(("type", "device")), "proofpoint-pod-{type}",
                            "topic; {type} and {device} are replaced"),
        "compression": OptionSpec(_str, None, "librdkafka compression.type"),
        "settings": OptionSpec(to_mapping, {}, "librdkafka settings, passed as they are"),
    },
}

# type -> (module, class). Modules are imported on first use.
DESTINATIONS = {
    "http": ("podspool.outputs.http", "HttpDestination"),
    "splunk_hec": ("podspool.outputs.splunk", "SplunkHecDestination"),
    "elasticsearch": ("podspool.outputs.elasticsearch", "ElasticsearchDestination"),
    "file": ("podspool.outputs.file", "FileDestination"),
    "syslog": ("podspool.outputs.syslog", "SyslogDestination"),
    "kafka": ("podspool.outputs.kafka", "KafkaDestination"),
}

# Types whose module checks its own options and keeps the raw mapping as it is.
SELF_VALIDATING = frozenset({"syslog", "kafka"})


def validate_options(settings, *, file=None, path=None):
    """Check SETTINGS.options against the type's OptionSpecs and convert the values in place.

    Raises ConfigError naming the file and key for an unknown key, a missing
    required key or an invalid value. The error never shows a credential's value.
    """
    file = file or settings.source_file
    path = path or f"outputs.{settings.name}"
    specs = OPTION_SPECS.get(settings.type)
    if specs is None:
        raise ConfigError("unknown output type", file=file, key=f"{path}.type", value=settings.type,
                          fix="use one of " + ", ".join(OPTION_SPECS))
    if settings.type in SELF_VALIDATING:
        module = importlib.import_module(DESTINATIONS[settings.type][0])
        module.validate_options(settings, file=file, path=path)
        return
    options = settings.options
    for key in sorted(options):
        if key not in specs:
            raise ConfigError(f"unknown key for a {settings.type} output", file=file, key=f"{path}.{key}",
                              fix="use one of " + ", ".join(sorted(specs)))
    for key, spec in specs.items():
        if options.get(key) is None:
            if spec.required:
                raise ConfigError("missing required key", file=file, key=f"{path}.{key}",
                                  fix=f"add {key}: ({spec.description})")
            continue
        try:
            options[key] = spec.convert(options[key])
        except ValueError as exc:
            shown = None if key in SECRET_OPTIONS else options[key]
            raise ConfigError(f"invalid value: {exc}", file=file, key=f"{path}.{key}", value=shown) from None
    _check_combinations(settings, file=file, path=path)


def _check_combinations(settings, *, file, path):
    options = settings.options
    if settings.type == "elasticsearch":
        if options.get("api_key") and (options.get("username") or options.get("password")):
            raise ConfigError("api_key and username/password are exclusive", file=file, key=f"{path}.api_key",
                              fix="keep one authentication method")
        if bool(options.get("username")) != bool(options.get("password")):
            raise ConfigError("username and password go together", file=file, key=f"{path}.username",
                              fix="set both, or use api_key")


def destination_class(output_type):
    """Import and return the Destination class of OUTPUT_TYPE."""
    try:
        module_name, class_name = DESTINATIONS[output_type]
    except KeyError:
        raise ConfigError("unknown output type", value=output_type,
                          fix="use one of " + ", ".join(DESTINATIONS)) from None
    module = importlib.import_module(module_name)
    found = getattr(module, class_name, None)
    if found is None:
        # Accept the module's single Destination subclass whatever its name.
        candidates = [value for value in vars(module).values()
                      if isinstance(value, type) and issubclass(value, Destination)
                      and value is not Destination and value.__module__ == module_name]
        if len(candidates) != 1:
            raise ImportError(f"{module_name} defines no {class_name}")
        found = candidates[0]
    return found


def build_destination(settings):
    """Validate SETTINGS.options and return the Destination for SETTINGS.type; no I/O happens yet."""
    validate_options(settings)
    return destination_class(settings.type)(settings)
