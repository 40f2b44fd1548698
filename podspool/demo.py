"""`podspool demo`: the whole product on this machine with the bundled sample events.

It starts the emulator on a free loopback port and writes a configuration
with one device per log type and a `file` output into the demo directory.
Then it runs the service in this process and shows a progress line until
every sample event is delivered, or until Ctrl-C.
"""

import importlib.resources
import os
import secrets
import shutil
import signal
import sys
import threading
import time

from podspool import config
from podspool.emulator import Emulator
from podspool.errors import UsageError
from podspool.settings import LOG_TYPES

DEMO_MARKER = "podspool.yaml"
TIME_LIMIT_SECONDS = 120.0

CONFIG_TEMPLATE = """\
# Written by `podspool demo`; run it again with
#   python3 -m podspool run -c {directory}/podspool.yaml
# while an emulator listens on the endpoint below.
spool:
  directory: {directory}/spool
  rotate_seconds: 1
  fsync: interval
state_directory: {directory}/state
secrets_directory: {directory}/secrets
log: {{format: text, level: warning}}
outputs:
  - name: delivered
    type: file
    path: "{directory}/delivered/{{device}}.ndjson"
devices:
{devices}"""

DEVICE_TEMPLATE = """\
  - id: {number}
    name: demo-{log_type}
    type: proofpoint
    tags: [demo]
    properties:
      endpoint: "{endpoint}"
      cluster: demo_hosted
      token: "$secret{{emulator-token}}"
      type: {log_type}
      reconnect_initial_seconds: 0.2
"""


def sample_count():
    """Return the number of bundled sample events of each log type."""
    counts = {}
    for log_type in LOG_TYPES:
        text = importlib.resources.files("podspool.samples").joinpath(f"{log_type}.ndjson").read_text("utf-8")
        counts[log_type] = sum(1 for line in text.splitlines() if line.strip())
    return counts


def prepare_directory(directory):
    """Empty the demo directory of an earlier run (only one the demo wrote) and create it."""
    directory = os.path.abspath(directory)
    if os.path.isdir(directory) and os.listdir(directory):
        if not os.path.exists(os.path.join(directory, DEMO_MARKER)):
            raise UsageError(f"{directory} exists and was not written by podspool demo; "
                             "choose another with --directory")
        shutil.rmtree(directory)
    os.makedirs(os.path.join(directory, "secrets"), mode=0o750, exist_ok=True)
    return directory


def write_config(directory, endpoint, token):
    token_file = os.path.join(directory, "secrets", "emulator-token")
    with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(token + "\n")
    devices = "".join(DEVICE_TEMPLATE.format(number=i + 1, log_type=log_type, endpoint=endpoint)
                      for i, log_type in enumerate(LOG_TYPES))
    path = os.path.join(directory, DEMO_MARKER)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(CONFIG_TEMPLATE.format(directory=directory, devices=devices))
    return path


def progress_line(service, started):
    received = sum(runner.stats.events_received for runner in service.devices.values())
    spooled = sum(runner.stats.events_spooled for runner in service.devices.values())
    delivered = sum(runner.stats.events_delivered for runner in service.outputs.values())
    elapsed = max(time.monotonic() - started, 1e-6)
    return (received, spooled, delivered,
            f"received {received}  spooled {spooled}  delivered {delivered}  "
            f"({delivered / elapsed:.0f} events/s delivered)")


def main(directory):
    """Run the demo; return 0 once every sample event is delivered or on Ctrl-C, 1 on time-out."""
    from podspool.service import Service

    directory = prepare_directory(directory)
    expected = sum(sample_count().values())
    token = secrets.token_urlsafe(24)
    emulator = Emulator(host="127.0.0.1", port=0, token=token, cluster="demo_hosted", once=True).start()
    interrupted = threading.Event()
    previous_handler = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    service = None
    try:
        config_file = write_config(directory, emulator.url, token)
        print(f"podspool demo: emulator on {emulator.url}, configuration {config_file}")
        service = Service(config_file, config.load(config_file)).start()
        status = wait_for_delivery(service, expected, interrupted)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        if service is not None:
            service.stop()
        emulator.stop()
    print(f"spool:     {directory}/spool/<device>/  (closed files are removed once delivered)")
    print(f"delivered: {directory}/delivered/<device>.ndjson")
    print(f"state:     {directory}/state/  (checkpoints, dedup keys, status.json)")
    return status


def wait_for_delivery(service, expected, interrupted):
    started = time.monotonic()
    line = ""
    while not interrupted.is_set():
        received, spooled, delivered, line = progress_line(service, started)
        sys.stdout.write("\r" + line.ljust(79) if sys.stdout.isatty() else "")
        sys.stdout.flush()
        if delivered >= expected:
            print(("\n" if sys.stdout.isatty() else "") + f"all {expected} sample events delivered: {line}")
            return 0
        if time.monotonic() - started > TIME_LIMIT_SECONDS:
            print(f"\ntimed out after {TIME_LIMIT_SECONDS:.0f} s: {line}; see the log lines above")
            return 1
        interrupted.wait(0.25)
    print(f"\ninterrupted: {line}")
    return 0
