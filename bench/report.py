"""Report helpers of the benchmark: machine facts, medians, the printed table and the targets."""

import os
import platform

import msgspec
import websocket


def machine_info():
    """Return the facts that make a result comparable: CPUs, CPU model, Python and library versions."""
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "websocket_client": websocket.__version__,
        "msgspec": msgspec.__version__,
        "load_average_at_start": round(os.getloadavg()[0], 2),
    }


def median_of(results):
    """Return the result with the median rate, carrying the highest peak RSS of RESULTS, and every rate."""
    for result in results:
        result["events_per_second"] = result["events"] / result["seconds"]
    ordered = sorted(results, key=lambda result: result["events_per_second"])
    median = dict(ordered[len(ordered) // 2])
    median["peak_rss_mb"] = max(result["peak_rss_mb"] for result in results)
    return median, [round(result["events_per_second"]) for result in ordered]


def format_row(row):
    ratio = f"{row['ratio_to_baseline']:.2f}" if "ratio_to_baseline" in row else ""
    mb = f"{row['mb_per_second']:.0f}" if "mb_per_second" in row else ""
    return (f"{row['label']:<58} {row['events_per_second']:>9,} {mb:>6} {row['peak_rss_mb']:>7.1f} {ratio:>6}")


def header():
    return f"{'measurement':<58} {'events/s':>9} {'MiB/s':>6} {'RSS MiB':>7} {'ratio':>6}"


def evaluate_targets(bench):
    """Return the targets with their measured values and whether each is met."""
    rows = {row["key"]: row for row in bench.rows}
    targets = []

    def target(name, value, passed):
        targets.append({"target": name, "value": value, "met": bool(passed)})

    end_to_end = rows["end_to_end_message"]
    target("end to end >= 0.6 x baseline (message)", end_to_end["ratio_to_baseline"],
           end_to_end["ratio_to_baseline"] >= 0.6)
    target("end to end >= 50,000 message events/s", end_to_end["events_per_second"],
           end_to_end["events_per_second"] >= 50_000)
    target("one device < 60 MiB RSS", end_to_end["peak_rss_mb"], end_to_end["peak_rss_mb"] < 60)
    if "pipelines_workers_1" in rows:
        workers = [rows[f"pipelines_workers_{count}"]["events_per_second"] for count in (1, 2, 4)]
        target("with pipelines >= 20,000 message events/s", workers[0], workers[0] >= 20_000)
        target("workers 2 or 4 faster than 1 with pipelines", workers, max(workers[1:]) > workers[0])
        target("shipping >= 30,000 events/s", rows["ship_http"]["events_per_second"],
               rows["ship_http"]["events_per_second"] >= 30_000)
        target("ten devices < 120 MiB RSS", rows["ten_devices"]["peak_rss_mb"], rows["ten_devices"]["peak_rss_mb"] < 120)
    return targets
