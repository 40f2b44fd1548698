"""File-system helpers that give every directory 0750 and every file 0640, whatever the umask."""

import json
import os

DIR_MODE = 0o750
FILE_MODE = 0o640


def ensure_dir(path):
    """Create PATH and missing parents with mode 0750; leave existing directories alone."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(os.path.abspath(path))
    if parent and not os.path.isdir(parent):
        ensure_dir(parent)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return path
    # mkdir applies the umask; chmod sets the documented mode exactly.
    os.chmod(path, DIR_MODE)
    return path


def open_fd(path, flags):
    """Open PATH with os.open and, when it creates the file, give it mode 0640."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    if flags & os.O_CREAT:
        os.fchmod(fd, FILE_MODE)
    return fd


def fsync_dir(path):
    """Make a rename or create inside PATH durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, *, fsync=True):
    """Replace PATH with DATA (bytes) so readers see the old or the new content, never a mix."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
    fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(directory)


def write_json_atomic(path, obj, *, fsync=True):
    """Write OBJ as JSON to PATH through write_atomic."""
    write_atomic(path, json.dumps(obj, separators=(",", ":"), sort_keys=True).encode(), fsync=fsync)


def read_json(path, default=None):
    """Return the JSON document in PATH, or DEFAULT when the file does not exist."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return default
