"""Start-up recovery of a device directory after a crash or a power failure."""

import logging
import os

from podspool.spool_files import (
    COMPRESSION_SUFFIXES,
    close_into_place,
    is_temporary_name,
    parse_spool_name,
    spool_file_name,
)

log = logging.getLogger(__name__)

_SCAN_CHUNK_BYTES = 64 * 1024


def whole_lines_size(fd, size):
    """Return the length of the longest prefix of the file FD (SIZE bytes) that ends with a newline."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN_CHUNK_BYTES)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


def recover_directory(directory, device, *, compress):
    """Close active files a crash left behind, remove temporary files, and return the highest sequence seen.

    Returns -1 when the directory contains no spool file.
    """
    highest = -1
    leftovers = []
    for name in sorted(os.listdir(directory)):
        if is_temporary_name(name):
            os.unlink(os.path.join(directory, name))
            log.info("removed temporary file %s left by an earlier run of device %s", name, device, extra={"device": device})
            continue
        parsed = parse_spool_name(name)
        if parsed is None:
            continue
        highest = max(highest, parsed.sequence)
        if parsed.kind == "active":
            leftovers.append(parsed)
    for parsed in leftovers:
        close_leftover(directory, device, parsed, compress=compress)
    return highest


def close_leftover(directory, device, parsed, *, compress):
    """Truncate a torn last line of a leftover active file and close it, or remove it when empty."""
    sequence, opened_at = parsed.sequence, parsed.opened_at
    path = os.path.join(directory, spool_file_name(sequence, opened_at, kind="active"))

    # A compressed copy in place means the crash came after closing finished.
    for compressed in ("gzip", "zstd"):
        closed = spool_file_name(sequence, opened_at) + COMPRESSION_SUFFIXES[compressed]
        if os.path.exists(os.path.join(directory, closed)):
            os.unlink(path)
            log.info("removed active file %s of device %s, already closed as %s", path, device, closed, extra={"device": device})
            return

    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        keep = whole_lines_size(fd, size)
        if keep < size:
            log.warning(
                "truncated a torn last line of %d bytes from %s of device %s",
                size - keep, path, device, extra={"device": device, "torn_bytes": size - keep},
            )
            os.ftruncate(fd, keep)
        if keep > 0:
            os.fsync(fd)
    finally:
        os.close(fd)

    if keep == 0:
        os.unlink(path)
        log.info("removed empty active file %s left by an earlier run of device %s", path, device, extra={"device": device})
        return
    final = close_into_place(directory, sequence, opened_at, compress=compress, sync=True, device=device)
    log.info("closed %s left active by an earlier run of device %s", final, device, extra={"device": device})
