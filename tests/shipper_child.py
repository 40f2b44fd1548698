"""Run one shipper in its own process until its backlog is empty; the test kills it with SIGKILL.

Usage: shipper_child.py SPOOL_ROOT STATE_DIRECTORY OUTPUT_TYPE URL BATCH_MAX_EVENTS DEVICE...
Each DEVICE is NAME:LOG_TYPE. Exits 0 once every routed closed file is delivered.
"""

import logging
import sys
import threading

from podspool.outputs.registry import build_destination
from podspool.settings import DeviceSettings, OutputSettings
from podspool.shipper import Shipper


def main(argv):
    spool_root, state_directory, output_type, url, batch_max_events, *device_specs = argv
    devices = []
    for number, spec in enumerate(device_specs, start=1):
        name, log_type = spec.split(":")
        devices.append(DeviceSettings(id=number, name=name, cluster="test", token="unused", type=log_type))
    settings = OutputSettings(name="out", type=output_type, batch_max_events=int(batch_max_events),
                              timeout_seconds=60.0, retry_initial_seconds=0.01, retry_max_seconds=0.1,
                              options={"url": url})
    shipper = Shipper(settings, build_destination(settings), spool_root=spool_root,
                      state_directory=state_directory, devices=devices, stop_event=threading.Event())
    try:
        while shipper.run_once():
            pass
    finally:
        shipper.close()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sys.exit(main(sys.argv[1:]))
