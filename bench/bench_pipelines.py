"""Measure the cost of the shipped pipelines on PoD message events.

Runs the bundled message samples, repeated to about 200,000 events, through
json.loads + PipelineRunner.apply (email_enrichment, then geo_lookup) +
json.dumps, and the same events through json.loads + json.dumps alone, in one
process, and prints both rates and their ratio. geo_lookup reads a small
test database built by tests/mmdb_fixture.py in place of GeoLite2-City, so
the lookups cost about what a real tree of a few networks costs, not a full
GeoLite2 file.

Usage: python bench/bench_pipelines.py [--events N] [--rounds N]
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from mmdb_fixture import write_city_database  # noqa: E402
from podspool.pipelines import PipelineRunner, compile_pipelines  # noqa: E402

CONF_FILE = os.path.join(ROOT, "conf", "conf.d", "10-pipelines.yaml")
SAMPLES = os.path.join(ROOT, "podspool", "samples", "message.ndjson")


def load_runner(database_file):
    """Compile the shipped pipelines with DATABASE_FILE in place of the GeoLite2 path."""
    with open(CONF_FILE, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)["pipelines"]
    for step in raw["geo_lookup"]:
        step["geoip"]["database_file"] = database_file
    pipelines = compile_pipelines(raw, {name: CONF_FILE for name in raw})
    context = {"device": "bench", "cluster": "bench-cluster", "type": "message", "tags": ["bench"]}
    return PipelineRunner([pipelines["email_enrichment"], pipelines["geo_lookup"]], context)


def run_plain(frames):
    """Return seconds spent on json.loads + json.dumps of every frame."""
    start = time.perf_counter()
    for frame in frames:
        json.dumps(json.loads(frame), separators=(",", ":"), ensure_ascii=False)
    return time.perf_counter() - start


def run_pipelines(frames, runner):
    """Return seconds spent on json.loads + apply + json.dumps of every frame, and the outcome counts."""
    kinds = {}
    start = time.perf_counter()
    for frame in frames:
        outcome = runner.apply(json.loads(frame))
        kinds[outcome.kind] = kinds.get(outcome.kind, 0) + 1
        json.dumps(outcome.event, separators=(",", ":"), ensure_ascii=False)
    return time.perf_counter() - start, kinds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each kind; the fastest counts (default 3)")
    args = parser.parse_args()

    with open(SAMPLES, encoding="utf-8") as handle:
        samples = [line.rstrip("\n") for line in handle if line.strip()]
    frames = (samples * (args.events // len(samples) + 1))[: args.events]

    # Alternating rounds and keeping the fastest of each kind limits the
    # effect of other processes on a shared machine.
    plain_times, piped_times = [], []
    with tempfile.TemporaryDirectory() as directory:
        runner = load_runner(write_city_database(os.path.join(directory, "city.mmdb")))
        try:
            run_pipelines(frames[:1000], runner)  # warm the caches before timing
            for _ in range(args.rounds):
                plain_times.append(run_plain(frames))
                seconds, kinds = run_pipelines(frames, runner)
                piped_times.append(seconds)
        finally:
            runner.close()

    plain_seconds, piped_seconds = min(plain_times), min(piped_times)
    plain_rate = len(frames) / plain_seconds
    piped_rate = len(frames) / piped_seconds
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"events: {len(frames)} ({len(samples)} sample message events repeated), outcomes: {kinds}")
    print(f"best of {args.rounds} rounds")
    print(f"without pipelines (loads + dumps):                     {plain_rate:10,.0f} events/s")
    print(f"email_enrichment + geo_lookup (loads + apply + dumps): {piped_rate:10,.0f} events/s")
    print(f"ratio with/without: {piped_rate / plain_rate:.2f}")
    per_event = (piped_seconds - plain_seconds) / len(frames) * 1e6
    print(f"pipeline cost: {per_event:.1f} microseconds per event")


if __name__ == "__main__":
    main()
