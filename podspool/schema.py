"""Field tables and builders that turn raw YAML sections into settings objects.

Each table maps a key to (converter, default). REQUIRED as the default marks a
required key. Converters raise ValueError, and `convert_fields` turns that into
a ConfigError naming the file, the key path and the value. The value of a key
that contains a credential is never shown.
"""

import dataclasses
from dataclasses import dataclass

from podspool import convert
from podspool.errors import ConfigError
from podspool.settings import (
    DEVICE_PROPERTY_DEFAULTS,
    FSYNC_POLICIES,
    COMPRESSIONS,
    LOG_TYPES,
    OUTPUT_COMMON_DEFAULTS,
    SPOOL_DEFAULTS,
    DeviceSettings,
    OutputSettings,
)

REQUIRED = object()


def nested_section(value):
    """Pass a nested section through; its own fields are converted (and resolved) later."""
    return value


nested_section.nested = True
TOP_LEVEL_KEYS = (
    "spool", "state_directory", "shared_key_file", "secrets_directory",
    "log", "metrics", "pipelines", "outputs", "devices",
)
OUTPUT_TYPES = ("http", "splunk_hec", "elasticsearch", "syslog", "kafka", "file")
CREDENTIAL_KEYS = ("token", "api_key", "password", "proxy")


def _spec(defaults, converters):
    return {key: (converters[key], default) for key, (default, _) in defaults.items()}


SPOOL_FIELDS = _spec(SPOOL_DEFAULTS, {
    "directory": convert.to_str,
    "rotate_bytes": convert.to_bytes,
    "rotate_seconds": convert.to_positive_seconds,
    "fsync": convert.to_choice(FSYNC_POLICIES),
    "fsync_seconds": convert.to_positive_seconds,
    "max_bytes": convert.to_bytes,
    "compress": convert.to_choice(COMPRESSIONS),
})
LOG_FIELDS = {
    "format": (convert.to_choice(("json", "text")), "json"),
    "level": (convert.to_choice(("debug", "info", "warning", "error")), "info"),
}
METRICS_FIELDS = {
    "listen": (convert.to_listen_address, None),
    "unhealthy_after_seconds": (convert.to_positive_seconds, 300.0),
}
DEVICE_FIELDS = {
    "id": (lambda value: convert.to_int(value, minimum=0), REQUIRED),
    "name": (convert.to_name, REQUIRED),
    "description": (lambda value: value if isinstance(value, str) else convert.to_str(value), ""),
    "type": (convert.to_choice(("proofpoint",)), REQUIRED),
    "tags": (convert.to_str_list, ()),
    "pipelines": (convert.to_str_list, ()),
    "status": (convert.to_bool, True),
    "properties": (nested_section, REQUIRED),
}
PROPERTY_FIELDS = _spec(DEVICE_PROPERTY_DEFAULTS, {
    "endpoint": convert.to_url(("wss", "ws"), "wss://logstream.proofpoint.com:443/v1/stream"),
    "type": convert.to_choice(LOG_TYPES),
    "secure": convert.to_bool,
    "workers": lambda value: convert.to_int(value, minimum=1),
    "reuse": convert.to_bool,
    "ping_interval_seconds": convert.to_positive_seconds,
    "ping_timeout_seconds": convert.to_positive_seconds,
    "reconnect_initial_seconds": convert.to_positive_seconds,
    "reconnect_max_seconds": convert.to_positive_seconds,
    "resume_window_seconds": convert.to_seconds,
    "dedup_window_seconds": convert.to_positive_seconds,
    "max_event_bytes": convert.to_bytes,
    "since": lambda value: convert.to_instant(value).isoformat(),
    "replay_idle_seconds": convert.to_positive_seconds,
    "ca_file": convert.to_existing_file,
    "verify_tls": convert.to_bool,
    "proxy": convert.to_url(("http",), "http://proxy.example.com:3128"),
})
PROPERTY_FIELDS["cluster"] = (convert.to_str, REQUIRED)
PROPERTY_FIELDS["token"] = (convert.to_str, REQUIRED)
OUTPUT_FIELDS = _spec(OUTPUT_COMMON_DEFAULTS, {
    "batch_max_events": lambda value: convert.to_int(value, minimum=1),
    "batch_max_bytes": convert.to_bytes,
    "timeout_seconds": convert.to_positive_seconds,
    "verify_tls": convert.to_bool,
    "ca_file": convert.to_existing_file,
    "client_cert": convert.to_existing_file,
    "client_key": convert.to_existing_file,
    "retry_initial_seconds": convert.to_positive_seconds,
    "retry_max_seconds": convert.to_positive_seconds,
})


@dataclass
class Context:
    resolver: object
    main_file: str


def is_credential(key):
    """Tell whether a key's value must never be shown."""
    lowered = key.lower()
    return lowered in CREDENTIAL_KEYS or any(word in lowered for word in ("password", "secret", "token"))


def check_keys(mapping, allowed, *, file, path):
    """Reject keys that are not in ALLOWED, listing the valid ones."""
    for key in mapping:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                "unknown key", file=file, key=where,
                fix="valid keys here are " + ", ".join(sorted(allowed)),
            )


def resolve_tree(value, context, *, file, path, sensitive=False):
    """Resolve references in every string of a nested value."""
    if isinstance(value, str):
        return context.resolver.resolve(value, file=file, key=path, sensitive=sensitive)
    if isinstance(value, list):
        return [resolve_tree(item, context, file=file, path=f"{path}[{i}]", sensitive=sensitive)
                for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: resolve_tree(item, context, file=file, path=f"{path}.{key}",
                                  sensitive=sensitive or is_credential(str(key)))
                for key, item in value.items()}
    return value


def convert_fields(raw, fields, context, *, path, file=None):
    """Check keys, resolve references and convert each value; return a dict of results."""
    file = file or context.main_file
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping", file=file, key=path, value=type(raw).__name__)
    check_keys(raw, fields, file=file, path=path)
    values = {}
    for key, (converter, default) in fields.items():
        where = f"{path}.{key}" if path else key
        if key not in raw or raw[key] is None:
            if default is REQUIRED:
                raise ConfigError("missing required key", file=file, key=where,
                                  fix=f"add {key}: to this section")
            values[key] = default
            continue
        secret = is_credential(key)
        if getattr(converter, "nested", False):
            values[key] = raw[key]
            continue
        value = resolve_tree(raw[key], context, file=file, path=where, sensitive=secret)
        try:
            values[key] = converter(value)
        except ValueError as exc:
            # A value that came from ${...} or $secret{...} is shown as written, not resolved.
            shown = value
            if secret:
                shown = None
            elif _has_reference(raw[key]):
                shown = raw[key]
            raise ConfigError(f"invalid value: {exc}", file=file, key=where, value=shown) from None
    return values


def _has_reference(value):
    return isinstance(value, str) and "$" in value


def reject_duplicates(entries, label):
    """Raise when two ENTRIES (name, file, path) share a name, naming both files."""
    seen = {}
    for name, file, path in entries:
        if name in seen:
            first_file, first_path = seen[name]
            raise ConfigError(
                f"{label} {name!r} is defined twice, first at {first_file}: {first_path}",
                file=file, key=path, fix=f"rename or remove one of the two {label}s",
            )
        seen[name] = (file, path)


def pipeline_names(entries):
    """Return the names of the pipelines defined in all files; a name defined twice is an error."""
    reject_duplicates([(name, file, path) for file, path, name, _ in entries], "pipeline")
    return {name for _, _, name, _ in entries}


def build_pipelines(entries, used):
    """Compile the pipelines of all files; USED names those an enabled device applies."""
    if not entries:
        return {}
    from podspool.pipelines import compile_pipelines

    raw = {name: item for _, _, name, item in entries}
    sources = {name: file for file, _, name, _ in entries}
    return compile_pipelines(raw, sources, used=used)


def build_devices(entries, context, pipeline_names):
    """Validate every device; ids and names must be unique and pipelines defined."""
    devices = []
    for file, path, _, raw in entries:
        top = convert_fields(raw, DEVICE_FIELDS, context, path=path, file=file)
        properties = convert_fields(top.pop("properties"), PROPERTY_FIELDS, context,
                                    path=f"{path}.properties", file=file)
        # The device-level `type` is always "proofpoint"; DeviceSettings.type is the log type.
        top.pop("type")
        for index, name in enumerate(top["pipelines"]):
            if name not in pipeline_names:
                raise ConfigError(
                    f"unknown pipeline {name!r}", file=file, key=f"{path}.pipelines[{index}]",
                    fix="define it under pipelines: in the main file or a drop-in"
                    + (" (defined: " + ", ".join(sorted(pipeline_names)) + ")" if pipeline_names else ""),
                )
        if properties["workers"] > 1 and not properties["reuse"]:
            raise ConfigError(
                "workers above 1 need reuse: true, because PoD allows one session per token "
                "and type, so the workers must share the device's one session",
                file=file, key=f"{path}.properties.workers", value=properties["workers"],
                fix="set reuse: true or workers: 1",
            )
        devices.append(DeviceSettings(source_file=file, **top, **properties))

    reject_duplicates([(d.name, d.source_file, p) for d, (_, p, _, _) in zip(devices, entries)], "device name")
    reject_duplicates([(d.id, d.source_file, p) for d, (_, p, _, _) in zip(devices, entries)], "device id")
    return devices


def build_outputs(entries, context):
    """Validate every output's common settings; the type's own keys go to `options`."""
    outputs = []
    for file, path, _, raw in entries:
        if not isinstance(raw, dict):
            raise ConfigError("an output must be a mapping", file=file, key=path, value=type(raw).__name__)
        raw = dict(raw)
        name = _required_string(raw.pop("name", None), file=file, key=f"{path}.name")
        kind = _required_string(raw.pop("type", None), file=file, key=f"{path}.type")
        if kind not in OUTPUT_TYPES:
            raise ConfigError("unknown output type", file=file, key=f"{path}.type", value=kind,
                              fix="use one of " + ", ".join(OUTPUT_TYPES))
        devices = ()
        if raw.get("devices") is not None:
            try:
                devices = convert.to_str_list(raw.pop("devices"))
            except ValueError as exc:
                raise ConfigError(str(exc), file=file, key=f"{path}.devices") from None
        raw.pop("devices", None)
        common = {key: raw.pop(key) for key in list(raw) if key in OUTPUT_FIELDS}
        values = convert_fields(common, OUTPUT_FIELDS, context, path=path, file=file)
        options = resolve_tree(raw, context, file=file, path=path)
        settings = OutputSettings(name=name, type=kind, devices=devices, options=options,
                                  source_file=file, **values)
        _validate_output_options(settings, file=file, path=path)
        outputs.append(settings)
    reject_duplicates([(o.name, o.source_file, p) for o, (_, p, _, _) in zip(outputs, entries)], "output")
    return outputs


def _validate_output_options(settings, *, file, path):
    from podspool.outputs import registry

    registry.validate_options(settings, file=file, path=path)


def _required_string(value, *, file, key):
    if value is None:
        raise ConfigError("missing required key", file=file, key=key, fix=f"add {key.rsplit('.', 1)[-1]}:")
    try:
        return convert.to_str(value)
    except ValueError as exc:
        raise ConfigError(f"invalid value: {exc}", file=file, key=key, value=value) from None


def replace_token(device, token):
    """Return DEVICE with its token replaced (after decryption)."""
    return dataclasses.replace(device, token=token)
