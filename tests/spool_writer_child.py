"""Child process for the spool crash and file-size tests; run as `python3 spool_writer_child.py MODE ...`.

crash DIRECTORY POLICY COMPRESS SIDE_FILE
    Recover the spool, print `ready <next number>`, then write numbered events
    at full speed until killed. After each write call returns, the last number
    written goes to SIDE_FILE, so the parent can check what must survive a SIGKILL.
recover DIRECTORY
    Open (which recovers) and close the spool, then exit.
efbig DIRECTORY LIMIT_BYTES
    Write with RLIMIT_FSIZE at LIMIT_BYTES until the writer raises, lift the
    limit, write again, and print a JSON report.
"""

import json
import os
import random
import resource
import signal
import sys

from podspool.errors import SpoolFullError
from podspool.settings import SpoolSettings
from podspool.spool import SpoolWriter, list_closed, read_lines

DEVICE = "crashdev"


def make_writer(directory, policy="interval", compress="none", rotate_bytes=16 * 1024):
    settings = SpoolSettings(
        directory=directory, rotate_bytes=rotate_bytes, rotate_seconds=3600.0, fsync=policy,
        fsync_seconds=0.05, max_bytes=10**12, compress=compress,
    )
    writer = SpoolWriter(settings, DEVICE)
    writer.open()
    return writer


def next_number(directory):
    """Return one more than the number of the last event in the spool, or 0 for an empty spool."""
    files = list_closed(directory, DEVICE)
    if not files:
        return 0
    lines = read_lines(files[-1])
    return json.loads(lines[-1][0])["n"] + 1


def event_line(number):
    return json.dumps({"n": number, "pad": "x" * random.randint(0, 300)}, separators=(",", ":")).encode()


def run_crash(directory, policy, compress, side_file):
    writer = make_writer(directory, policy, compress)
    number = next_number(directory)
    side = os.open(side_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    print(f"ready {number}", flush=True)
    while True:
        batch = random.choice((1, 1, 1, 5, 20))
        lines = [event_line(number + index) for index in range(batch)]
        if batch == 1:
            writer.write(lines[0])
        else:
            writer.write_many(lines)
        number += batch
        os.pwrite(side, b"%012d" % (number - 1), 0)
        if number % 97 == 0:
            writer.tick()


def run_efbig(directory, limit_bytes):
    # Without this the kernel kills the process with SIGXFSZ instead of failing the write with EFBIG.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    writer = make_writer(directory, "always", rotate_bytes=10**9)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))
    report = {"written": 0}
    try:
        for number in range(10**6):
            line = event_line(number)
            writer.write(line)
            report["written"] = number + 1
    except SpoolFullError as exc:
        report["error"] = str(exc)
        report["errno"] = getattr(exc, "errno", None)
        report["rejected_line_bytes"] = len(line) + 1
    report["paused"] = writer.paused
    report["offset_at_failure"] = writer.position[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    writer.write(line)
    report["written"] += 1
    report["resumed"] = not writer.paused
    report["offset_after_resume"] = writer.position[1]
    writer.close()
    print(json.dumps(report), flush=True)


def main(argv):
    mode = argv[1]
    if mode == "crash":
        run_crash(argv[2], argv[3], argv[4], argv[5])
    elif mode == "recover":
        make_writer(argv[2]).close()
    elif mode == "efbig":
        run_efbig(argv[2], int(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
