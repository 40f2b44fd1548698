"""The measured clients of the benchmark, each run in its own process so its peak RSS is its own.

`python bench/clients.py MODE JSON` runs one measurement and prints its
result as one JSON line on stdout. Modes:

- baseline: websocket-client's low-level WebSocket (skip_utf8_validation)
  appending each frame and a newline to a buffered file, with no podspool
  code; one fsync at the end. With "buffered", the socket reads 256 KiB per
  syscall.
- devices: podspool DeviceConnections with real SpoolWriters, one thread
  each, built by podspool.components.DeviceRunner as the service builds
  them. The time runs from the first connection until every expected event
  is spooled and fsynced.
- ship: a podspool Shipper with an http destination, delivering every closed
  file of a spool to the URL; timed until the last batch is confirmed.

Peak RSS is VmHWM of /proc/self/status, the resident high-water mark of the
process's own memory. getrusage's ru_maxrss is not used: Linux carries it
over from the parent through fork and exec, so a child would report at
least the benchmark driver's peak.
"""

import json
import logging
import os
import sys
import threading
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import websocket  # noqa: E402
from feed import exit_with_parent  # noqa: E402

from podspool.components import DeviceRunner  # noqa: E402
from podspool.pipelines import compile_pipelines  # noqa: E402
from podspool.settings import DeviceSettings, OutputSettings, SpoolSettings  # noqa: E402
from podspool.dedup import TimestampParser  # noqa: E402
from podspool.sink import format_micros  # noqa: E402
from podspool.spool import SpoolCapacity, list_closed  # noqa: E402

PIPELINES_FILE = os.path.join(ROOT, "conf", "conf.d", "10-pipelines.yaml")
POLL_SECONDS = 0.005
# Reading this much of a spool file's end finds its last line; bench events are a few KiB.
TAIL_BYTES = 256 * 1024
# A run that has not finished by then is reported as failed instead of hanging the benchmark.
RUN_TIMEOUT_SECONDS = 600.0


def peak_rss_mb():
    """Return the process's peak resident set size in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM missing from /proc/self/status")


class BufferedWebSocket(websocket.WebSocket):
    """A WebSocket that reads up to 256 KiB per recv syscall and serves websocket-client's small reads from it.

    websocket-client's frame parser requests 2 header bytes, then the length,
    then the payload, one recv syscall each.
    """

    def __init__(self, **options):
        super().__init__(**options)
        self._buffer = b""
        self._offset = 0

    def _recv(self, bufsize):
        if self._offset >= len(self._buffer):
            self._buffer = super()._recv(max(bufsize, 256 * 1024))
            self._offset = 0
        end = self._offset + bufsize
        chunk = self._buffer[self._offset:end]
        self._offset = end
        return chunk


def run_baseline(config):
    """Receive config["count"] frames with the low-level WebSocket and append them to a file."""
    socket_class = BufferedWebSocket if config.get("buffered") else websocket.WebSocket
    ws = socket_class(skip_utf8_validation=True)
    ws.connect(config["url"], header=[f"Authorization: Bearer {config['token']}"])
    count, size = config["count"], 0
    with open(config["output"], "wb", buffering=1 << 20) as out:
        start = time.perf_counter()
        for _ in range(count):
            opcode, data = ws.recv_data()
            if opcode != websocket.ABNF.OPCODE_TEXT:
                raise RuntimeError(f"unexpected opcode {opcode}")
            out.write(data)
            out.write(b"\n")
            size += len(data) + 1
        out.flush()
        os.fsync(out.fileno())
        seconds = time.perf_counter() - start
    ws.close()
    return {"events": count, "bytes": size, "seconds": seconds}


def load_pipelines(database_file):
    """Compile the shipped pipelines with DATABASE_FILE in place of the GeoLite2 path."""
    with open(PIPELINES_FILE, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)["pipelines"]
    for step in raw["geo_lookup"]:
        step["geoip"]["database_file"] = database_file
    return compile_pipelines(raw, {name: PIPELINES_FILE for name in raw})


def build_runners(config):
    """Return one DeviceRunner per entry of config["devices"], sharing one spool and one cap."""
    spool = SpoolSettings(directory=config["spool"], rotate_bytes=64 * 1024 * 1024, rotate_seconds=60.0,
                          fsync="interval", fsync_seconds=1.0, max_bytes=100 * 1024**3)
    capacity = SpoolCapacity(spool.directory, spool.max_bytes)
    pipelines = load_pipelines(config["geoip_database"]) if config.get("pipelines") else {}
    runners = []
    for index, device in enumerate(config["devices"]):
        settings = DeviceSettings(
            id=index + 1, name=f"bench{index}", cluster="example_hosted", token=config["token"],
            type=device["type"], endpoint=device["url"], workers=config.get("workers", 1),
            pipelines=tuple(config.get("pipelines") or ()),
        )
        runners.append(DeviceRunner(settings, spool, config["state"], pipelines, capacity))
    return runners


def run_devices(config):
    """Run the devices until each has spooled its expected events durably; return the totals."""
    runners = build_runners(config)
    for runner in runners:
        runner.start()
    seconds, durable = time_until_spooled(runners, [device["count"] for device in config["devices"]])
    for runner in runners:
        runner.request_stop()
    for runner in runners:
        runner.join(10.0)
        runner.close()

    # Read after the clean stop, whose commit covers every event.
    stats = [runner.stats.as_dict() for runner in runners]
    size = sum(os.path.getsize(os.path.join(directory, name))
               for directory, _, names in os.walk(config["spool"]) for name in names if name.endswith(".ndjson"))
    return {
        "events": sum(item["events_spooled"] for item in stats),
        "bytes": size,
        "seconds": seconds,
        "durable": durable,
        "dead_lettered": sum(item["dead_lettered"] for item in stats),
        "duplicates_dropped": sum(item["duplicates_dropped"] for item in stats),
        "checkpoints_match_last_event": all(
            item["checkpoint"] == last_event_time(config["spool"], runner.settings.name)
            for item, runner in zip(stats, runners)
        ),
    }


def time_until_spooled(runners, expected):
    """Return (seconds from the first connection until RUNNERS spooled EXPECTED events and fsynced, durable)."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while not any(runner.stats.connected or runner.stats.events_received for runner in runners):
        if time.monotonic() > deadline:
            raise RuntimeError("no device connected")
        time.sleep(POLL_SECONDS)
    start = time.perf_counter()

    while any(runner.stats.events_spooled < count for runner, count in zip(runners, expected)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"devices did not spool every event: {[r.stats.as_dict() for r in runners]}")
        time.sleep(POLL_SECONDS)
    durable = all(runner.writer.sync() for runner in runners)
    return time.perf_counter() - start, durable


def last_event_time(spool_root, device):
    """Return the `ts` of the last line spooled for DEVICE as RFC 3339 UTC, the checkpoint it must have.

    The emulator stamps events with strictly increasing times, so the last
    event is also the newest.
    """
    path = list_closed(spool_root, device)[-1].path
    with open(path, "rb") as spooled:
        spooled.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
        last_line = spooled.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return format_micros(TimestampParser().micros(json.loads(last_line)["ts"]))


def run_ship(config):
    """Deliver every closed file of config["spool"] to an http output at config["url"]."""
    from podspool.outputs.registry import build_destination
    from podspool.shipper import Shipper

    devices = [DeviceSettings(id=index + 1, name=name, cluster="example_hosted", token=config["token"],
                              type=config["type"])
               for index, name in enumerate(config["device_names"])]
    output = OutputSettings(name="bench-http", type="http", options={"url": config["url"]})
    shipper = Shipper(output, build_destination(output), spool_root=config["spool"],
                      state_directory=config["state"], devices=devices)
    start = time.perf_counter()
    while shipper.run_once():
        pass
    seconds = time.perf_counter() - start
    shipper.close()
    return {"events": shipper.stats.events_delivered, "seconds": seconds,
            "batches": shipper.stats.batches_sent, "rejected": shipper.stats.events_rejected}


MODES = {"baseline": run_baseline, "devices": run_devices, "ship": run_ship}


def main():
    exit_with_parent()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    mode, config = sys.argv[1], json.loads(sys.argv[2])
    result = MODES[mode](config)
    result["peak_rss_mb"] = peak_rss_mb()
    result["threads_at_end"] = threading.active_count()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
