"""Validate the `pipelines:` configuration and build Pipeline objects from it.

Every error is a ConfigError that names the file, the key path
(`pipelines.geo_lookup[0].geoip.database_file`) and the fix.
"""

import datetime

import jmespath
import jmespath.exceptions

from podspool.errors import ConfigError
from podspool.fieldpath import parse_path
from podspool.processors import PROCESSORS, OptionError

COMMON_OPTIONS = ("if", "ignore_missing", "on_failure")
ON_FAILURE_VALUES = ("skip", "drop", "dead_letter")
_PROCESSOR_NAMES = ", ".join(sorted(PROCESSORS))
_JSON_SCALARS = (str, int, float, bool, type(None))


class Pipeline:
    """A named, compiled list of processors and the file that defined it."""

    __slots__ = ("name", "processors", "source")

    def __init__(self, name, processors, source=None):
        self.name = name
        self.processors = tuple(processors)
        self.source = source

    def __repr__(self):
        return f"Pipeline({self.name!r}, {len(self.processors)} processors)"


def compile_pipelines(raw, sources, *, used=None):
    """Validate RAW ({name: [processor mappings]}) and return {name: Pipeline}.

    SOURCES maps each pipeline name to the file that defined it. USED, when
    given, is the set of pipeline names some device lists: GeoIP database files
    are opened to check them only for those pipelines, so a shipped pipeline
    that no device uses does not need its database. Raises ConfigError.
    """
    sources = sources or {}
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"must be a mapping from pipeline name to a list of processors, not a {type(raw).__name__}",
            file=_first_source(sources),
            key="pipelines",
        )
    compiled = {}
    for name, steps in raw.items():
        check_files = used is None or name in used
        compiled[name] = _compile_pipeline(name, steps, sources.get(name), check_files)
    return compiled


def select_pipelines(compiled, names, *, file=None, key="pipelines"):
    """Return the Pipelines NAMES lists, in order; raise ConfigError for an unknown name.

    KEY is the key path of the device's list, such as `devices[0].pipelines`.
    """
    selected = []
    for index, name in enumerate(names or ()):
        pipeline = compiled.get(name) if isinstance(name, str) else None
        if pipeline is None:
            known = ", ".join(sorted(compiled)) or "none are defined"
            raise ConfigError(
                "unknown pipeline",
                file=file,
                key=f"{key}[{index}]",
                value=name,
                fix=f"define it under the top-level pipelines key or use a defined one ({known})",
            )
        selected.append(pipeline)
    return selected


def _first_source(sources):
    return next(iter(sources.values()), None)


def _compile_pipeline(name, steps, file, check_files):
    key = f"pipelines.{name}"
    if not isinstance(name, str) or not name:
        raise ConfigError("a pipeline name must be a non-empty string", file=file, key="pipelines", value=name)
    if not isinstance(steps, list):
        raise ConfigError(
            f"must be a list of processors, not a {type(steps).__name__}",
            file=file,
            key=key,
            fix="write each processor as a list item: `- set: {field: a, value: 1}`",
        )
    processors = [
        _compile_processor(step, f"{key}[{index}]", file, check_files) for index, step in enumerate(steps)
    ]
    return Pipeline(name, processors, file)


def _compile_processor(step, key, file, check_files):
    if not isinstance(step, dict) or len(step) != 1:
        raise ConfigError(
            "a processor must be a mapping with one key, the processor name",
            file=file,
            key=key,
            fix="write it as `- rename: {field: a.b, target_field: c}`",
        )
    ((name, options),) = step.items()

    cls = PROCESSORS.get(name)
    if cls is None:
        raise ConfigError(
            "unknown processor", file=file, key=key, value=name, fix=f"use one of: {_PROCESSOR_NAMES}"
        )
    key = f"{key}.{name}"
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError(
            f"processor options must be a mapping, not a {type(options).__name__}",
            file=file,
            key=key,
            fix=f"write `{name}: {{...}}`, or `{name}: {{}}` when it needs no options",
        )

    values = _processor_values(cls, options, key, file)
    _reject_key_field_changes(name, values, key, file)
    try:
        cls.check(values, check_files=check_files)
    except OptionError as exc:
        raise ConfigError(
            exc.message, file=file, key=f"{key}.{exc.option}", value=exc.value, fix=exc.fix
        ) from None

    processor = cls(values)
    processor.label = key
    processor.condition = _compile_condition(options.get("if"), f"{key}.if", file)
    processor.ignore_missing = _convert("bool", options.get("ignore_missing", False), f"{key}.ignore_missing", file)
    processor.on_failure = _convert("on_failure", options.get("on_failure", "skip"), f"{key}.on_failure", file)
    return processor


# `guid`, `id` and `ts` make the dedup key. After a crash the device rebuilds the keys of
# recent events from the spooled lines, so a pipeline that changed these fields would let
# the replayed original of such an event through a second time.
KEY_FIELDS = {("guid",), ("id",), ("ts",)}
# Processors whose `field` option is changed in place (or removed), not only read.
CHANGES_FIELD = {"set", "rename", "remove", "lowercase", "uppercase"}


def _reject_key_field_changes(name, values, key, file):
    options = ["target_field"] + (["field"] if name in CHANGES_FIELD else [])
    for option in options:
        value = values.get(option)
        paths = value if isinstance(value, (list, tuple)) and value and isinstance(value[0], tuple) else [value]
        for path in paths:
            if path in KEY_FIELDS:
                raise ConfigError(
                    f"a pipeline cannot change the top-level {path[0]!r} field, because guid, id and ts "
                    "make the dedup key of an event",
                    file=file, key=f"{key}.{option}",
                    fix=f"copy it elsewhere with `set: {{field: my_{path[0]}, copy_from: {path[0]}}}`",
                )


def _processor_values(cls, options, key, file):
    allowed = list(cls.options) + list(COMMON_OPTIONS)
    for option in options:
        if option not in allowed:
            raise ConfigError(
                "unknown option",
                file=file,
                key=f"{key}.{option}",
                fix=f"{cls.name} takes: {', '.join(allowed)}",
            )
    values = {}
    for option, spec in cls.options.items():
        if option in options:
            values[option] = _convert(spec.kind, options[option], f"{key}.{option}", file)
        elif spec.required:
            raise ConfigError(
                "missing required option", file=file, key=f"{key}.{option}", fix=f"add `{option}:` to {cls.name}"
            )
        else:
            values[option] = spec.default
    return values


def _type_error(expected, value, key, file, fix=None):
    scalar_value = value if isinstance(value, _JSON_SCALARS) else None
    return ConfigError(
        f"wrong type: expected {expected}, not {type(value).__name__}", file=file, key=key, value=scalar_value, fix=fix
    )


def _convert_path(value, key, file):
    if not isinstance(value, str):
        raise _type_error("a dotted field path string", value, key, file)
    try:
        return parse_path(value)
    except ValueError as exc:
        raise ConfigError(f"invalid field path: {exc}", file=file, key=key, value=value) from None


def _convert(kind, value, key, file):
    if kind == "path":
        return _convert_path(value, key, file)
    if kind == "paths":
        if isinstance(value, list) and value:
            return tuple(_convert_path(item, f"{key}[{index}]", file) for index, item in enumerate(value))
        if isinstance(value, str):
            return (_convert_path(value, key, file),)
        raise _type_error("a field path or a non-empty list of them", value, key, file)
    if kind == "string":
        if isinstance(value, str) and value:
            return value
        raise _type_error("a non-empty string", value, key, file)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise _type_error("true or false", value, key, file)
    if kind == "on_failure":
        if value in ON_FAILURE_VALUES:
            return value
        raise ConfigError(
            "invalid on_failure value", file=file, key=key, value=value, fix=f"use one of: {', '.join(ON_FAILURE_VALUES)}"
        )
    if kind == "any":
        _check_json_value(value, key, file)
        return value
    raise ValueError(f"unknown option kind {kind!r}")


def _check_json_value(value, key, file):
    """Reject values YAML can produce but JSON cannot hold, such as an unquoted date."""
    if isinstance(value, _JSON_SCALARS):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{key}[{index}]", file)
        return
    if isinstance(value, dict):
        for item_key, item in value.items():
            if not isinstance(item_key, str):
                raise _type_error("string object keys", item_key, f"{key}", file, fix="quote the key")
            _check_json_value(item, f"{key}.{item_key}", file)
        return
    fix = "quote it to keep it as a string" if isinstance(value, (datetime.date, datetime.time)) else None
    raise _type_error("a JSON value (string, number, boolean, null, list or mapping)", value, key, file, fix)


def _compile_condition(expression, key, file):
    if expression is None:
        return None
    if not isinstance(expression, str) or not expression.strip():
        raise _type_error("a JMESPath expression string", expression, key, file)
    try:
        compiled = jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ConfigError(
            f"invalid JMESPath expression: {_jmespath_message(exc)}", file=file, key=key, value=expression
        ) from None
    try:
        # Unknown function names only surface when the expression runs.
        compiled.search({})
    except jmespath.exceptions.UnknownFunctionError as exc:
        raise ConfigError(f"invalid JMESPath expression: {exc}", file=file, key=key, value=expression) from None
    except jmespath.exceptions.JMESPathError:
        pass  # a type error on the empty object proves nothing about real events
    return compiled


def _jmespath_message(exc):
    if isinstance(exc, jmespath.exceptions.LexerError):
        return f"{exc.message} at column {exc.lexer_position}"
    if isinstance(exc, jmespath.exceptions.ParseError):
        return f"{exc.msg} at column {exc.lex_position}"
    return str(exc).splitlines()[0]
