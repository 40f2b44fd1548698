"""Crash and file-size tests that run the spool writer in a child process (tests/spool_writer_child.py)."""

import json
import os
import random
import select
import subprocess
import sys
import time

import pytest

from podspool.spool import list_closed, read_lines

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spool_writer_child.py")
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE = "crashdev"
READY_TIMEOUT_SECONDS = 20.0


def start_child(*args):
    env = dict(os.environ, PYTHONPATH=REPOSITORY)
    return subprocess.Popen([sys.executable, CHILD, *args], stdout=subprocess.PIPE, env=env, cwd=REPOSITORY)


def wait_ready(process):
    """Return the number the child starts writing at, from its `ready N` line."""
    readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_SECONDS)
    if not readable:
        process.kill()
        process.wait()
        raise AssertionError("the writer child printed no ready line")
    line = process.stdout.readline().decode()
    assert line.startswith("ready "), line
    return int(line.split()[1])


def spooled_events(root):
    """Parse every closed file line by line and return the event numbers in spool order."""
    numbers = []
    for closed in list_closed(root, DEVICE):
        for line, _ in read_lines(closed):
            numbers.append(json.loads(line)["n"])
    return numbers


@pytest.mark.integration
def test_sigkill_loses_no_returned_write(tmp_path):
    root = str(tmp_path / "spool")
    side_file = str(tmp_path / "last-returned")
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    policies = ["always", "interval", "never"]
    compressions = ["none", "gzip", "zstd"]
    last_returned = -1

    for round_number in range(7):
        policy = policies[round_number % 3]
        compress = compressions[(round_number // 3 + round_number) % 3]
        process = start_child("crash", root, policy, compress, side_file)
        start = wait_ready(process)
        # Everything a killed child saw returned from write is still there after recovery.
        assert start >= last_returned + 1, f"seed {seed}, round {round_number}: lost events after {start - 1}"

        numbers = spooled_events(root)
        assert numbers == list(range(len(numbers))), f"seed {seed}, round {round_number}"

        time.sleep(rng.uniform(0.05, 0.6))
        process.kill()
        process.wait()
        with open(side_file, "rb") as handle:
            recorded = handle.read()
        last_returned = int(recorded) if recorded else last_returned

    recovery = start_child("recover", root)
    assert recovery.wait(timeout=READY_TIMEOUT_SECONDS) == 0
    numbers = spooled_events(root)
    assert numbers == list(range(len(numbers))), f"seed {seed}: events missing, repeated or out of order"
    assert len(numbers) >= last_returned + 1
    assert last_returned > 1000
    leftovers = [name for name in os.listdir(os.path.join(root, DEVICE)) if name.endswith((".open", ".tmp"))]
    assert leftovers == []


@pytest.mark.integration
def test_file_size_limit_pauses_writer(tmp_path):
    root = str(tmp_path / "spool")
    process = start_child("efbig", root, "50000")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    report = json.loads(output)
    assert report["errno"] == 27  # EFBIG
    assert "EFBIG" in report["error"]
    assert report["paused"] is True
    assert report["resumed"] is True

    numbers = spooled_events(root)
    assert numbers == list(range(report["written"]))
    # The rejected line would have crossed the limit, and the same line fits once it is lifted.
    assert report["offset_at_failure"] <= 50000
    assert report["offset_at_failure"] + report["rejected_line_bytes"] > 50000
    (closed,) = list_closed(root, DEVICE)
    assert closed.size == report["offset_after_resume"] == report["offset_at_failure"] + report["rejected_line_bytes"]
