"""The base class of pipeline processors, their option specs and the values apply() returns.

Each processor class is built once from options that podspool.pipeconfig has
already validated and converted (field paths are key tuples), so `apply`
does no parsing. `apply(event, runner)` changes the event in place and
returns None, UNCHANGED when it left the event as it was, or DROP. It raises
ProcessorFailure, or FieldMissing for an absent or null field. The field path
rules are in podspool.fieldpath.
"""

from collections import namedtuple

# kind: "path" (dotted string), "paths" (one path or a list), "string", "any" (JSON value)
Option = namedtuple("Option", "kind required default")

UNSET = object()  # default of an option whose absence means something other than null
UNCHANGED = object()
DROP = object()


class OptionError(Exception):
    """An option that is invalid for reasons its type alone does not show."""

    def __init__(self, option, message, fix=None, value=None):
        super().__init__(message)
        self.option = option
        self.message = message
        self.fix = fix
        self.value = value


def describe(value, limit=80):
    """Return repr(VALUE) cut to LIMIT characters, for failure messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Processor:
    """Base of every processor; podspool.pipeconfig sets the common options after construction."""

    name = ""
    options = {}
    __slots__ = ("condition", "ignore_missing", "on_failure", "label")

    def __init__(self, options):
        """Store each option this processor declares under its own name."""
        for name in self.options:
            setattr(self, name, options[name])

    @classmethod
    def check(cls, options, *, check_files=True):
        """Raise OptionError for a rule that spans several options, or for a file that cannot be used."""

    def apply(self, event, runner):
        raise NotImplementedError
