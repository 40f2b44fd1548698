"""Dotted field paths into events, and the errors a processor raises for one event.

A path such as `msg.header.subject` names nested JSON object keys. It is split
into a tuple of keys once, when the configuration is loaded. The rules:

- A field is missing when a key along the path is absent or its value is null.
- A path that crosses a list is a failure, even when the list contains objects,
  because no single element would be the obvious one to read or write.
  `msg.header.from` reads the whole list at that key, which is fine; the list
  may only be the last step.
- A path that crosses any other non-object value (a string, a number) is a
  failure too.
- Writing creates the missing objects along the path, and replaces a null.
"""


class ProcessorFailure(Exception):
    """A processor cannot handle one event; the pipeline's on_failure decides what follows."""


class FieldMissing(ProcessorFailure):
    """A field a processor reads is absent or null; `ignore_missing: true` turns this into a no-op.

    The message is built only when read, because with ignore_missing most of
    these are raised and dropped on every event.
    """

    def __init__(self, path, message=None):
        super().__init__(path)
        self.path = path
        self.message = message

    def __str__(self):
        return self.message or f"field {dotted(self.path)} is missing"


def parse_path(text):
    """Split a dotted path into its keys; raise ValueError for an empty path or an empty key."""
    if not isinstance(text, str) or not text:
        raise ValueError("a field path must be a non-empty string")
    keys = tuple(text.split("."))
    if "" in keys:
        raise ValueError("a field path cannot have an empty key (check for '..' or a leading or trailing dot)")
    return keys


def dotted(path):
    """Join a key tuple back into its dotted form, for messages."""
    return ".".join(path)


def _crossing_failure(path, depth, node):
    prefix = dotted(path[:depth])
    if isinstance(node, list):
        return ProcessorFailure(f"field {dotted(path)}: {prefix} is a list, and a field path cannot cross a list")
    kind = type(node).__name__
    return ProcessorFailure(f"field {dotted(path)}: {prefix} is a {kind}, not an object")


def get_value(event, path):
    """Return the value at PATH; raise FieldMissing or ProcessorFailure."""
    node = event
    for depth, key in enumerate(path):
        if not isinstance(node, dict):
            raise _crossing_failure(path, depth, node)
        node = node.get(key)
        if node is None:
            raise FieldMissing(path)
    return node


def _parent_for_write(event, path):
    node = event
    for depth, key in enumerate(path[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, dict):
            raise _crossing_failure(path, depth + 1, child)
        node = child
    return node


def set_value(event, path, value):
    """Store VALUE at PATH, creating the objects along it; raise ProcessorFailure when a list or scalar is in the way."""
    _parent_for_write(event, path)[path[-1]] = value


def _parent_for_read(event, path):
    if len(path) == 1:
        return event
    parent = get_value(event, path[:-1])
    if not isinstance(parent, dict):
        raise _crossing_failure(path, len(path) - 1, parent)
    return parent


def pop_value(event, path):
    """Remove and return the value at PATH; raise FieldMissing when it is absent or null."""
    parent = _parent_for_read(event, path)
    value = parent.get(path[-1])
    if value is None:
        raise FieldMissing(path)
    return parent.pop(path[-1])


def has_key(event, path):
    """Return True when the key at PATH exists, even with a null value; raise ProcessorFailure on a crossing."""
    try:
        parent = _parent_for_read(event, path)
    except FieldMissing:
        return False
    return path[-1] in parent


def delete_key(event, path):
    """Delete the key at PATH, null values included; raise FieldMissing when it is absent."""
    try:
        parent = _parent_for_read(event, path)
    except FieldMissing:
        raise FieldMissing(path) from None
    if path[-1] not in parent:
        raise FieldMissing(path)
    del parent[path[-1]]
