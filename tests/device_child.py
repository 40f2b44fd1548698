"""Run one device in its own process until SIGTERM, for the crash tests.

Usage: python device_child.py URL SPOOL_DIRECTORY STATE_DIRECTORY
The token comes from the PODSPOOL_TEST_TOKEN environment variable, so it is not
on the command line. Prints "running" once the device thread starts.
"""

import logging
import os
import signal
import sys
import threading

from podspool.device import DeviceConnection
from podspool.settings import DeviceSettings, SpoolSettings
from podspool.spool import SpoolWriter
from podspool.stats import DeviceStats


def main(argv):
    url, spool_directory, state_directory = argv
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    settings = DeviceSettings(
        id=1, name="crash", cluster="example_hosted", token=os.environ["PODSPOOL_TEST_TOKEN"],
        type="message", endpoint=url, reconnect_initial_seconds=0.05, reconnect_max_seconds=0.5,
        replay_idle_seconds=5.0,
    )
    spool = SpoolSettings(directory=spool_directory, rotate_bytes=256 * 1024, rotate_seconds=60.0,
                          fsync="interval", fsync_seconds=0.2, max_bytes=1 << 34)
    writer = SpoolWriter(spool, settings.name)
    device = DeviceConnection(settings, writer, state_directory=state_directory, stop_event=stop,
                              stats=DeviceStats())
    device.start()
    print("running", flush=True)
    device.join()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
