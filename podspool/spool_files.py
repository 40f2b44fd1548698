"""Spool file names, the listing and reading of closed files, and the step that closes a file.

A device directory contains closed files `000000000041-20250102T103000Z.ndjson`
(optionally `.gz` or `.zst`), at most one hidden active file
`.000000000041-20250102T103000Z.ndjson.open`, and hidden temporary files
ending in `.tmp`. Readers list only closed files, and a closed file never
changes: a compressed copy is written under a temporary name and renamed into
place, so a file's final name never shows partial content.
"""

import calendar
import gzip
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Optional

import zstandard

from podspool import fsutil
from podspool.errors import SpoolError

log = logging.getLogger(__name__)

COMPRESSION_SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}
SEQUENCE_LIMIT = 10**12  # twelve digits keep names sorting in sequence order
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
READ_CHUNK_BYTES = 1024 * 1024
GZIP_LEVEL = 6  # the gzip tool's default
ZSTD_LEVEL = 3  # the zstd tool's default

_NAME = re.compile(r"^(\.?)(\d{12})-(\d{8}T\d{6}Z)\.ndjson(\.gz|\.zst|\.open)?$")


@dataclass(frozen=True)
class SpoolName:
    """The parts of a spool file name."""

    sequence: int
    opened_at: float  # epoch seconds, whole seconds as the name stores them
    kind: str  # "closed" or "active"
    compress: str  # "none", "gzip" or "zstd"


@dataclass(frozen=True)
class ClosedFile:
    """A closed spool file: complete, never changed again, safe to read."""

    path: str
    device: str
    sequence: int
    name: str  # base name, compression suffix included; a closed file is never renamed
    size: int  # bytes on disk (compressed size for a compressed file)
    closed_at: float  # modification time, epoch seconds


def spool_file_name(sequence, opened_at, *, kind="closed", compress="none"):
    """Build the name of a spool file. No other code builds these names.

    KIND "closed" gives `<12-digit sequence>-<UTC open time>.ndjson` plus the
    suffix of COMPRESS, "active" the hidden `.<closed name>.open`, and "temp"
    the hidden `.<closed name>.tmp` used while compressing.
    """
    if not 0 <= sequence < SEQUENCE_LIMIT:
        raise SpoolError(f"spool file sequence out of range: {sequence}")
    stamp = time.strftime(STAMP_FORMAT, time.gmtime(opened_at))
    stem = f"{sequence:012d}-{stamp}.ndjson"
    if kind == "active":
        return f".{stem}.open"
    closed = stem + COMPRESSION_SUFFIXES[compress]
    if kind == "temp":
        return f".{closed}.tmp"
    if kind != "closed":
        raise ValueError(f"unknown spool file kind: {kind!r}")
    return closed


def parse_spool_name(name) -> Optional[SpoolName]:
    """Return the parts of a closed or active spool file NAME, or None for any other name."""
    match = _NAME.match(name)
    if match is None:
        return None
    hidden, sequence, stamp, suffix = match.groups()
    if bool(hidden) != (suffix == ".open"):
        return None
    opened_at = float(calendar.timegm(time.strptime(stamp, STAMP_FORMAT)))
    if suffix == ".open":
        return SpoolName(int(sequence), opened_at, "active", "none")
    compress = {None: "none", ".gz": "gzip", ".zst": "zstd"}[suffix]
    return SpoolName(int(sequence), opened_at, "closed", compress)


def is_temporary_name(name):
    """Return True for the hidden temporary files that a crash may leave behind."""
    return name.startswith(".") and name.endswith(".tmp")


def list_closed(spool_root, device):
    """Return the closed files of DEVICE, oldest first; never the active file or temporary files."""
    directory = os.path.join(spool_root, device)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    files = []
    for name in names:
        parsed = parse_spool_name(name)
        if parsed is None or parsed.kind != "closed":
            continue
        path = os.path.join(directory, name)
        try:
            status = os.stat(path)
        except FileNotFoundError:
            continue  # removed by a shipper or another tool since listdir
        files.append(ClosedFile(path, device, parsed.sequence, name, status.st_size, status.st_mtime))
    files.sort(key=lambda closed: (closed.sequence, closed.name))
    return files


def _open_uncompressed(path):
    """Open PATH for reading its uncompressed bytes; the result has read(n) and close()."""
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    raw = open(path, "rb")
    if path.endswith(".zst"):
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def _skip(reader, path, offset):
    # NOTE: a compressed file is decompressed from its start on every call, so reading
    # one in many small batches costs time quadratic in its size.
    if not path.endswith((".gz", ".zst")):
        reader.seek(offset)
        return
    remaining = offset
    while remaining > 0:
        chunk = reader.read(min(remaining, READ_CHUNK_BYTES))
        if not chunk:
            return
        remaining -= len(chunk)


def iter_lines(path, offset=0, end=None):
    """Yield (line without newline, offset after it) for each whole line of PATH from OFFSET.

    Offsets count uncompressed bytes. A final fragment without a newline is
    not yielded, and neither is anything past END when END is given.
    """
    reader = _open_uncompressed(path)
    try:
        _skip(reader, path, offset)
        position = offset
        consumed = 0
        pending = b""
        while True:
            want = READ_CHUNK_BYTES if end is None else min(READ_CHUNK_BYTES, end - offset - consumed)
            if want <= 0:
                return
            chunk = reader.read(want)
            if not chunk:
                return
            consumed += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                position += len(line) + 1
                yield line, position
    finally:
        reader.close()


def read_lines(closed_file, offset=0, max_lines=None, max_bytes=None):
    """Return up to MAX_LINES (line, offset after it) pairs of CLOSED_FILE from OFFSET.

    MAX_BYTES bounds the sum of the line lengths, except that the first line
    is always returned so that a reader makes progress past a long line.
    """
    result = []
    total = 0
    for line, after in iter_lines(closed_file.path, offset):
        if max_lines is not None and len(result) >= max_lines:
            break
        if max_bytes is not None and result and total + len(line) > max_bytes:
            break
        result.append((line, after))
        total += len(line)
    return result


def closed_lines_after(spool_root, device, position):
    """Yield the lines of DEVICE's closed files that come after POSITION, a (sequence, offset) pair."""
    sequence, offset = position
    for closed in list_closed(spool_root, device):
        if closed.sequence >= sequence:
            start = offset if closed.sequence == sequence else 0
            for line, _ in iter_lines(closed.path, start):
                yield line


def compress_file(source, target, compress, *, sync):
    """Write SOURCE compressed with COMPRESS ("gzip" or "zstd") to the new file TARGET."""
    fd = fsutil.open_fd(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with open(source, "rb") as source_file, os.fdopen(fd, "wb") as target_file:
        if compress == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=target_file, compresslevel=GZIP_LEVEL, mtime=0) as packed:
                shutil.copyfileobj(source_file, packed, READ_CHUNK_BYTES)
        else:
            zstandard.ZstdCompressor(level=ZSTD_LEVEL).copy_stream(source_file, target_file)
        target_file.flush()
        if sync:
            os.fsync(target_file.fileno())


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def close_into_place(directory, sequence, opened_at, *, compress, sync, device):
    """Give the hidden active file its final name, compressed first unless COMPRESS is "none", and return that path.

    Raises OSError only when the file still has its active name, so the
    caller can try again. When compression fails (a full disk, say) the file
    is closed uncompressed. A crash after the compressed copy is in place but
    before the active file is removed leaves both; recovery then removes the
    active file.
    """
    active = os.path.join(directory, spool_file_name(sequence, opened_at, kind="active"))
    # NOTE: compression runs in the caller's thread, so a device stops reading while a
    # large file is compressed (an estimated second or more for 64 MiB with gzip).
    if compress != "none":
        final = os.path.join(directory, spool_file_name(sequence, opened_at, compress=compress))
        temp = os.path.join(directory, spool_file_name(sequence, opened_at, kind="temp", compress=compress))
        try:
            compress_file(active, temp, compress, sync=sync)
            os.rename(temp, final)
        except OSError as exc:
            _unlink_quietly(temp)
            log.warning(
                "compressing spool file %s of device %s failed, closing it uncompressed: %s",
                active, device, exc, extra={"device": device},
            )
        else:
            _finish(directory, sync, device)
            _unlink_quietly(active)
            return final
    final = os.path.join(directory, spool_file_name(sequence, opened_at))
    os.rename(active, final)
    _finish(directory, sync, device)
    return final


def _finish(directory, sync, device):
    """Make the rename durable. A failure is only logged, because the rename itself already happened."""
    if not sync:
        return
    try:
        fsutil.fsync_dir(directory)
    except OSError as exc:
        log.error("fsync of spool directory %s of device %s failed: %s", directory, device, exc, extra={"device": device})
