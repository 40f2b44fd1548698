"""Measure podspool's receive, spool and ship throughput and memory against a plain websocket-client loop.

Usage: python bench/run.py [--quick] [--events N] [--rounds N] [--output FILE]

Every event comes from `podspool emulate`, run in its own process. The
benchmark records what the emulator sends for each log type once, and
another process plays the recording back at wire speed (bench/feed.py), so
every measured client reads the same bytes. Each client runs in its own
process (bench/clients.py), so it shares no GIL with the server and its
peak RSS is its own. Measurements:

1. baseline: websocket-client's low-level WebSocket with
   skip_utf8_validation, appending each frame to a buffered file; no
   podspool code. Also the same on a socket read 256 KiB per syscall.
2. end to end: one podspool device (DeviceConnection and SpoolWriter as the
   service builds them), no pipelines, fsync interval, dedup on. The time
   runs from the connection to the last event spooled and fsynced.
3. the same with the email_enrichment and geo_lookup pipelines;
4. workers 1, 2 and 4 with those pipelines;
5. shipping the spool of (2) to an http output on a loopback collector;
6. ten devices at once, each with its own spool and state, all reading
   one recording of fewer events from one replay server.

A full run also measures (1) and (2) against a live emulator process. It
prints a table with each figure's ratio to the baseline, checks the
targets, and writes bench/results.json. With --quick it runs only (1) and
(2) on message events and prints `end_to_end/baseline = X.XX` last.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import feed  # noqa: E402
from report import evaluate_targets, format_row, header, machine_info, median_of  # noqa: E402

PIPELINES = ["email_enrichment", "geo_lookup"]
CHILD_TIMEOUT_SECONDS = 900
MIB = 1024 * 1024


def run_child(mode, config):
    """Run one measurement in bench/clients.py and return its result dict."""
    command = [sys.executable, os.path.join(BENCH, "clients.py"), mode, json.dumps(config)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} measurement failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


class Bench:
    """One benchmark run: a work directory, the recordings and the replay servers."""

    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.rows = []
        self.checks = {}  # check name -> True when it passed in every run
        self.processes = []
        self.counter = 0

    def fresh_dirs(self, name):
        """Return new, empty spool and state directories for measurement NAME."""
        self.counter += 1
        base = os.path.join(self.workdir, f"{self.counter:02d}-{name}")
        return os.path.join(base, "spool"), os.path.join(base, "state")

    def start(self, started):
        process, url = started
        self.processes.append(process)
        return url

    def stop_all(self):
        for process in self.processes:
            feed.stop_process(process)

    # -- measurements -------------------------------------------------

    def baseline(self, url, log_type, count, buffered):
        output = os.path.join(self.workdir, "baseline.ndjson")
        result = run_child("baseline", {"url": feed.stream_url(url, log_type), "token": feed.TOKEN,
                                        "count": count, "output": output, "buffered": buffered})
        os.unlink(output)
        self.check(f"baseline {log_type} received every event", result["events"] == count)
        return result

    def devices(self, name, devices, *, pipelines=False, workers=1, keep=False):
        spool, state = self.fresh_dirs(name)
        config = {"token": feed.TOKEN, "spool": spool, "state": state, "devices": devices,
                  "workers": workers}
        if pipelines:
            config["pipelines"] = PIPELINES
            config["geoip_database"] = self.geoip_database
        result = run_child("devices", config)
        expected = sum(device["count"] for device in devices)
        self.check(f"{name}: every event spooled once", result["events"] == expected)
        self.check(f"{name}: spool durable at the end", result["durable"])
        self.check(f"{name}: no dead letter, no duplicate",
                   result["dead_lettered"] == 0 and result["duplicates_dropped"] == 0)
        self.check(f"{name}: each checkpoint is the newest event's time", result["checkpoints_match_last_event"])
        result["spool"] = spool
        if not keep:
            shutil.rmtree(os.path.dirname(spool))
        return result

    def check(self, name, passed):
        self.checks[name] = self.checks.get(name, True) and bool(passed)

    def rounds(self, measure):
        """Run MEASURE args.rounds times; return median_of the results."""
        return median_of([measure() for _ in range(self.args.rounds)])

    def add_row(self, key, label, result, baseline_key=None, rates=None):
        rate = result["events"] / result["seconds"]
        row = {
            "key": key, "label": label, "events": result["events"], "seconds": round(result["seconds"], 3),
            "events_per_second": round(rate), "peak_rss_mb": round(result["peak_rss_mb"], 1),
        }
        if "bytes" in result:
            row["mb_per_second"] = round(result["bytes"] / result["seconds"] / MIB, 1)
        if rates is not None:
            row["rounds_events_per_second"] = rates
        if baseline_key is not None:
            base_rate = rate if baseline_key == key else self.row(baseline_key)["events_per_second"]
            row["ratio_to_baseline"] = round(rate / base_rate, 2)
            row["baseline"] = baseline_key
        self.rows.append(row)
        print(format_row(row), flush=True)
        return row

    def row(self, key):
        return next(row for row in self.rows if row["key"] == key)

    # -- scenarios ----------------------------------------------------

    def record(self, log_type, count, name=None):
        path = os.path.join(self.workdir, f"{name or log_type}.rec")
        started = time.perf_counter()
        size = feed.record_stream(log_type, count, path)
        print(f"recorded {count} {log_type} events from the emulator ({size / MIB:.0f} MiB) "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        return path

    def receive_pair(self, url, log_type, count, suffix=""):
        """Measure (1) and (2) for LOG_TYPE, alternating baseline and device runs round by round."""
        keys = [f"baseline_{log_type}{suffix}", f"baseline_buffered_{log_type}{suffix}",
                f"end_to_end_{log_type}{suffix}"]
        plain, buffered, device = [], [], []
        keep = log_type == "message" and not suffix
        for round_index in range(self.args.rounds):
            plain.append(self.baseline(url(), log_type, count, buffered=False))
            buffered.append(self.baseline(url(), log_type, count, buffered=True))
            last = keep and round_index == self.args.rounds - 1
            device.append(self.devices(keys[2], [{"type": log_type, "url": url(), "count": count}], keep=last))
        source = "live emulator" if suffix else "recording"
        for key, label, results in (
            (keys[0], f"(1) baseline, {log_type}, {source}", plain),
            (keys[1], f"    baseline on a buffered socket, {log_type}, {source}", buffered),
            (keys[2], f"(2) end to end, 1 device, {log_type}, {source}", device),
        ):
            median, rates = median_of(results)
            self.add_row(key, label, median, baseline_key=keys[0], rates=rates)
        if keep:
            self.message_spool = device[-1]["spool"]

    def run_quick(self):
        count = self.args.events
        path = self.record("message", count)
        url = self.start(feed.start_replay({"message": path}))
        self.receive_pair(lambda: url, "message", count)

    def run_full(self):
        import mmdb_fixture

        self.geoip_database = mmdb_fixture.write_city_database(os.path.join(self.workdir, "city.mmdb"))
        count, maillog_count, small = self.args.events, self.args.maillog_events, self.args.ten_device_events
        recordings = {"message": self.record("message", count), "maillog": self.record("maillog", maillog_count)}
        url = self.start(feed.start_replay(recordings))
        self.receive_pair(lambda: url, "message", count)
        self.receive_pair(lambda: url, "maillog", maillog_count)
        self.live_emulator(count)
        self.pipelines(url, count)
        self.shipping(count)
        self.ten_devices(small)

    def live_emulator(self, count):
        """Measure (1) and (2) against a fresh emulator process per run, which frames events as it sends."""
        emulators = []

        def url():
            process, emulator_url = feed.start_emulator(count)
            emulators.append(process)
            return emulator_url

        try:
            self.receive_pair(url, "message", count, suffix="_live")
        finally:
            for process in emulators:
                feed.stop_process(process)

    def pipelines(self, url, count):
        devices = [{"type": "message", "url": url, "count": count}]
        for workers in (1, 2, 4):
            median, rates = self.rounds(lambda: self.devices(f"pipelines_w{workers}", devices,
                                                             pipelines=True, workers=workers))
            label = "(3) with pipelines" if workers == 1 else "(4) with pipelines"
            self.add_row(f"pipelines_workers_{workers}", f"{label}, workers {workers}, message",
                         median, baseline_key="baseline_message", rates=rates)

    def shipping(self, count):
        collector = self.start(feed.start_server([sys.executable, os.path.join(BENCH, "collector.py")]))
        spool = self.message_spool
        state = os.path.join(os.path.dirname(spool), "ship-state")
        result = run_child("ship", {"token": feed.TOKEN, "spool": spool, "state": state,
                                    "device_names": ["bench0"], "type": "message", "url": collector})
        with urllib.request.urlopen(collector + "count", timeout=10) as response:
            received = int(response.read())
        self.check("shipping: the collector received every event once", received == count == result["events"])
        self.add_row("ship_http", "(5) spool to http output, message", result, baseline_key="baseline_message")

    def ten_devices(self, count):
        path = self.record("message", count, name="message-small")
        url = self.start(feed.start_replay({"message": path}))
        devices = [{"type": "message", "url": url, "count": count} for _ in range(10)]
        median, rates = self.rounds(lambda: self.devices("ten_devices", devices))
        self.add_row("ten_devices", f"(6) 10 devices x {count} message events, total",
                     median, baseline_key="baseline_message", rates=rates)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run only the baseline and one device on message events")
    parser.add_argument("--events", type=int, default=100_000,
                        help="message events per measurement (default 100000)")
    parser.add_argument("--maillog-events", type=int, default=100_000,
                        help="maillog events per measurement (default 100000)")
    parser.add_argument("--ten-device-events", type=int, default=20_000,
                        help="message events per device with 10 devices (default 20000)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each device measurement; the median counts (default 3)")
    parser.add_argument("--output", default=os.path.join(BENCH, "results.json"),
                        help="where to write the results as JSON (default bench/results.json)")
    return parser.parse_args()


def main():
    args = parse_args()
    started = time.perf_counter()
    info = machine_info()
    print(f"{info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
          f"load average {info['load_average_at_start']}", flush=True)

    workdir = tempfile.mkdtemp(prefix="podspool-bench-")
    bench = Bench(args, workdir)
    try:
        print(header(), flush=True)
        if args.quick:
            bench.run_quick()
        else:
            bench.run_full()
    finally:
        bench.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    targets = evaluate_targets(bench)
    results = {
        "machine": info, "quick": args.quick, "rounds": args.rounds,
        "seconds_total": round(time.perf_counter() - started, 1),
        "results": bench.rows, "targets": targets,
        "checks": [{"check": name, "passed": passed} for name, passed in bench.checks.items()],
    }
    with open(args.output, "w", encoding="utf-8") as out:
        json.dump(results, out, indent=2)
        out.write("\n")

    print()
    for name, passed in bench.checks.items():
        if not passed:
            print(f"check failed: {name}")
    for item in targets:
        print(f"target {'met    ' if item['met'] else 'NOT MET'}  {item['target']}: {item['value']}")
    print(f"results written to {os.path.relpath(args.output)} in {results['seconds_total']} s")
    ratio = bench.row("end_to_end_message")["ratio_to_baseline"]
    print(f"end_to_end/baseline = {ratio:.2f}")
    return 0 if all(bench.checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
