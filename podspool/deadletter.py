"""Dead-letter files: frames that are not events, and events a destination rejected for good.

Files live in `<spool>/<device>/dead-letter/` and are named
`frames-YYYYMMDD.ndjson` and `output-<output>-YYYYMMDD.ndjson` by the UTC
date of the record. Each record is one JSON object on one line, appended with
a single os.write on an O_APPEND descriptor, so a reader sees whole lines
only. There is no hidden phase and no shipper reads these files.
"""

import base64
import errno
import json
import os
import time
from datetime import datetime, timezone

from podspool import fsutil
from podspool.events import format_rfc3339
from podspool.spool_capacity import spool_error

DEAD_LETTER_DIRECTORY = "dead-letter"


def _record_time(now):
    return format_rfc3339(datetime.fromtimestamp(now, timezone.utc))


def frame_record(device, reason, raw, now):
    """Build the record of a frame that could not be stored as an event.

    The frame goes in `raw` as text when it is valid UTF-8 and in
    `raw_base64` otherwise.
    """
    record = {"time": _record_time(now), "device": device, "reason": reason}
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    try:
        record["raw"] = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        record["raw_base64"] = base64.b64encode(raw).decode("ascii")
    return record


def output_record(device, output, event, reason, response, now):
    """Build the record of an event that OUTPUT's destination rejected, with its RESPONSE."""
    return {
        "time": _record_time(now),
        "device": device,
        "output": output,
        "reason": reason,
        "event": event,
        "response": response,
    }


def encode_record(record):
    """Return RECORD as one compact UTF-8 JSON line with its newline."""
    # default=str keeps an unusual destination response (bytes, an exception) from losing the record.
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


def frames_file_name(now):
    """Return the name of the file that takes frame records written at NOW (epoch seconds)."""
    return f"frames-{time.strftime('%Y%m%d', time.gmtime(now))}.ndjson"


def check_output_name(output):
    """Raise ValueError when OUTPUT cannot be part of a file name."""
    if not output or os.sep in output or output.startswith(".") or "\0" in output:
        raise ValueError(f"output name cannot be used in a file name: {output!r}")


def append_line(directory, file_name, line, *, sync):
    """Append LINE to DIRECTORY/FILE_NAME in one os.write, or leave the file as it was and raise OSError."""
    fsutil.ensure_dir(directory)
    fd = fsutil.open_fd(os.path.join(directory, file_name), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write to a dead-letter file")
            if sync:
                os.fsync(fd)
        except OSError:
            # Remove a partial line so the file contains whole lines only. Each file has one writer, so the size read above is still the end.
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    return os.path.join(directory, file_name)


def dead_letter_directory(spool_root, device):
    """Return the dead-letter directory of DEVICE."""
    return os.path.join(spool_root, device, DEAD_LETTER_DIRECTORY)


def dead_letter_output(spool_root, device, output, event, reason, response, now=None, *, sync=True):
    """Append the record of EVENT, which OUTPUT's destination rejected for REASON, and return the file path.

    The spool cap does not apply here: the shipper must be able to set a
    rejected event aside to finish a file, and finishing files is what frees
    the spool. Raises SpoolFullError when the disk refuses the write.
    """
    check_output_name(output)
    now = time.time() if now is None else now
    record = output_record(device, output, event, reason, response, now)
    file_name = f"output-{output}-{time.strftime('%Y%m%d', time.gmtime(now))}.ndjson"
    try:
        return append_line(dead_letter_directory(spool_root, device), file_name, encode_record(record), sync=sync)
    except OSError as exc:
        raise spool_error(exc, "dead-letter write", device) from exc
