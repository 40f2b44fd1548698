"""The pipeline processors: one class per processor name, with its options table.

The contract every class follows is in podspool.processor_base; the geoip
processor lives in podspool.geoip beside its database readers.
"""

import copy

from podspool.emaildomain import domains_of, unique_domains
from podspool.events import format_rfc3339, parse_ts
from podspool.fieldpath import (
    FieldMissing,
    ProcessorFailure,
    delete_key,
    dotted,
    get_value,
    has_key,
    pop_value,
    set_value,
)
from podspool.geoip import GeoIPProcessor
from podspool.processor_base import DROP, UNCHANGED, UNSET, Option, OptionError, Processor, describe


class SetProcessor(Processor):
    name = "set"
    options = {
        "field": Option("path", True, None),
        "value": Option("any", False, UNSET),
        "copy_from": Option("path", False, None),
    }
    __slots__ = ("field", "value", "copy_from")

    @classmethod
    def check(cls, options, *, check_files=True):
        if (options["value"] is UNSET) == (options["copy_from"] is None):
            raise OptionError("value", "exactly one of value and copy_from is required", "set one of them")

    def apply(self, event, runner):
        value = self.value if self.copy_from is None else get_value(event, self.copy_from)
        if isinstance(value, (dict, list)):
            # Each event gets its own copy, so a later processor never changes two places at once.
            value = copy.deepcopy(value)
        set_value(event, self.field, value)


class RenameProcessor(Processor):
    name = "rename"
    options = {"field": Option("path", True, None), "target_field": Option("path", True, None)}
    __slots__ = ("field", "target_field")

    def apply(self, event, runner):
        # Pop before writing so that renaming `a` to `a.b` nests the old value instead of looping.
        value = pop_value(event, self.field)
        try:
            set_value(event, self.target_field, value)
        except ProcessorFailure:
            set_value(event, self.field, value)
            raise


class RemoveProcessor(Processor):
    """Remove every listed key; a key with a null value counts as present."""

    name = "remove"
    options = {"field": Option("paths", True, None)}
    __slots__ = ("fields",)

    def __init__(self, options):
        self.fields = options["field"]

    def apply(self, event, runner):
        present = [path for path in self.fields if has_key(event, path)]
        if len(present) < len(self.fields) and not self.ignore_missing:
            missing = next(path for path in self.fields if path not in present)
            raise FieldMissing(missing)
        if not present:
            return UNCHANGED
        for path in present:
            try:
                delete_key(event, path)
            except FieldMissing:
                pass  # an earlier path in the list removed its parent
        return None


class _CaseProcessor(Processor):
    """Change the case of a string, or of every string in a list of strings."""

    options = {"field": Option("path", True, None)}
    __slots__ = ("field",)

    def apply(self, event, runner):
        value = get_value(event, self.field)
        if isinstance(value, str):
            set_value(event, self.field, self.convert(value))
            return None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            set_value(event, self.field, [self.convert(item) for item in value])
            return None
        raise ProcessorFailure(
            f"field {dotted(self.field)} is a {type(value).__name__}, not a string or a list of strings"
        )


class LowercaseProcessor(_CaseProcessor):
    name = "lowercase"
    __slots__ = ()
    convert = staticmethod(str.lower)


class UppercaseProcessor(_CaseProcessor):
    name = "uppercase"
    __slots__ = ()
    convert = staticmethod(str.upper)


class DropProcessor(Processor):
    name = "drop"
    options = {}
    __slots__ = ()

    def apply(self, event, runner):
        return DROP


class EmailDomainProcessor(Processor):
    """Write the domain of an address string, or the unique domains of a list of them.

    A string yields the domain of its first address. A value with no domain
    at all (the null sender `<>`, an empty list) counts as missing.
    """

    name = "email_domain"
    options = {"field": Option("path", True, None), "target_field": Option("path", True, None)}
    __slots__ = ("field", "target_field")

    def apply(self, event, runner):
        value = get_value(event, self.field)
        if isinstance(value, str):
            domains = domains_of(value)
            result = domains[0] if domains else None
        elif isinstance(value, list):
            try:
                result = unique_domains(value)
            except TypeError as exc:
                raise ProcessorFailure(f"field {dotted(self.field)}: {exc}") from None
        else:
            raise ProcessorFailure(
                f"field {dotted(self.field)} is a {type(value).__name__}, not a string or a list of strings"
            )
        if not result:
            raise FieldMissing(self.field, f"field {dotted(self.field)} contains no email address with a domain: {describe(value)}")
        set_value(event, self.target_field, result)


class TimestampProcessor(Processor):
    """Write the event time as RFC 3339 UTC with microseconds (2024-05-22T19:10:03.058340Z)."""

    name = "timestamp"
    options = {
        "field": Option("path", False, ("ts",)),
        "target_field": Option("path", False, ("@timestamp",)),
    }
    __slots__ = ("field", "target_field")

    def apply(self, event, runner):
        value = get_value(event, self.field)
        try:
            moment = parse_ts(value)
        except ValueError:
            raise ProcessorFailure(f"field {dotted(self.field)} is not an ISO 8601 time: {describe(value)}") from None
        set_value(event, self.target_field, format_rfc3339(moment))


class AddMetadataProcessor(Processor):
    """Write the device's name, cluster id, log type and tags."""

    name = "add_metadata"
    options = {"target_field": Option("path", False, ("podspool",))}
    __slots__ = ("target_field",)

    def apply(self, event, runner):
        set_value(event, self.target_field, runner.metadata())


PROCESSORS = {
    cls.name: cls
    for cls in (
        SetProcessor,
        RenameProcessor,
        RemoveProcessor,
        LowercaseProcessor,
        UppercaseProcessor,
        DropProcessor,
        EmailDomainProcessor,
        GeoIPProcessor,
        TimestampProcessor,
        AddMetadataProcessor,
    )
}
