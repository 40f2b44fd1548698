"""The service: start devices and outputs, keep the status file and metrics, stop in order."""

import logging
import os
import signal
import threading
import time

from podspool import __version__
from podspool.components import DeviceRunner, OutputRunner
from podspool.errors import PodspoolError
from podspool.fsutil import read_json
from podspool.lock import DirectoryLock
from podspool.metrics import MetricsServer
from podspool.notify import Notifier
from podspool.overview import check_directories, summary_line, warn_unrouted_spools
from podspool.reload import STOP_DEVICES_SECONDS, STOP_OUTPUT_SECONDS, ReloadMixin
from podspool.state import STATE_FILE
from podspool.stats import DeviceStats, OutputStats
from podspool.status import StatusBook

log = logging.getLogger(__name__)

# Stop budget: devices, the last pass and the outputs get 3 s each, 9 s in all, inside
# the unit's TimeoutStopSec and the documented 10 s.
LAST_PASS_SECONDS = 3.0
# Delivered files are removed when a shipper finishes them and, because a device may save
# its position later, again this often.
RETENTION_SECONDS = 5.0


class Service(ReloadMixin):
    """Own the devices, outputs, status file, metrics and systemd notifications of one run.

    Signal handlers only record the signal, and `run()` on the main thread
    does the work. A stop signal stops the devices first, then closes their
    spool files, then gives the shippers a last pass. A second stop signal
    ends the stop at once. SIGHUP reloads the configuration.
    """

    def __init__(self, config_file, settings, *, notifier=None):
        self.config_file = config_file
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.devices = {}
        self.outputs = {}
        self.capacity = None
        self.status_book = None
        self.metrics_server = None
        self.stop_requests = 0
        self.reload_requested = False
        self.wakeup = threading.Event()
        self._retention_lock = threading.Lock()
        self.locks = []
        # Counters live as long as the process, so a reload that restarts a device keeps them.
        self.device_stats = {}
        self.output_stats = {}
        # Devices removed by a reload whose spool still contains closed files: outputs keep
        # routing them until those files are delivered.
        self.retired_devices = {}

    # Signal handlers: record only (no logging, no joins), so they are safe at any point.
    def _on_stop_signal(self, signum, frame):
        self.stop_requests += 1
        self.wakeup.set()

    def _on_reload_signal(self, signum, frame):
        self.reload_requested = True
        self.wakeup.set()

    def install_signal_handlers(self):
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def start(self):
        from podspool.spool_capacity import SpoolCapacity

        check_directories(self.settings)
        self._lock_directories(self.settings)
        self.capacity = SpoolCapacity(self.settings.spool.directory, self.settings.spool.max_bytes)
        self.status_book = StatusBook(self.settings.state_directory)
        log.info("starting podspool %s: %s", __version__, summary_line(self.settings),
                 extra={"event": "started", "config_files": list(self.settings.files)})
        for device in self.settings.devices:
            if device.status:
                self._start_device(device)
            else:
                log.info("device %s is disabled (status: false)", device.name, extra={"device": device.name})
        for output in self.settings.outputs:
            self._start_output(output)
        self._start_metrics()
        warn_unrouted_spools(self.settings)
        self.write_status()
        self.notifier.ready(self.status_text())
        return self

    def _lock_directories(self, settings):
        wanted = [("spool.directory", settings.spool.directory), ("state_directory", settings.state_directory)]
        held = {lock.directory for lock in self.locks}
        for key, directory in wanted:
            if directory not in held:
                self.locks.append(DirectoryLock(directory, key).acquire())

    def release_locks(self):
        for lock in self.locks:
            lock.release()
        self.locks = []

    def _start_metrics(self):
        if self.settings.metrics.listen:
            host, port = self.settings.metrics.listen
            self.metrics_server = MetricsServer(host, port, self.snapshot,
                                                self.settings.metrics.unhealthy_after_seconds).start()

    @property
    def routing_devices(self):
        """The devices outputs route: the configured ones and the retired ones with files left."""
        return list(self.settings.devices) + list(self.retired_devices.values())

    def _start_device(self, device):
        stats = self.device_stats.setdefault(device.name, DeviceStats())
        runner = DeviceRunner(device, self.settings.spool, self.settings.state_directory,
                              self.settings.pipelines, self.capacity, stats=stats)
        self.devices[device.name] = runner.start()

    def _start_output(self, output):
        stats = self.output_stats.setdefault(output.name, OutputStats())
        runner = OutputRunner(output, self.routing_devices, self.settings.spool.directory,
                              self.settings.state_directory, self.on_file_done, stats=stats)
        self.outputs[output.name] = runner.start()

    def on_file_done(self, device, closed_file):
        """Remove the delivered closed files of DEVICE (CLOSED_FILE is the one just finished, or None)."""
        from podspool.shipper import routed_devices
        from podspool.spool_reader import OutputProgress, remove_delivered

        # Every configured output counts, running or not: an output being started or
        # restarted by a reload must not lose files to the others.
        settings = self.settings
        devices = self.routing_devices
        with self._retention_lock:
            progresses = []
            for output in settings.outputs:
                if not any(d.name == device for d in routed_devices(output, devices)):
                    continue
                runner = self.outputs.get(output.name)
                if runner is not None and runner.shipper is not None and runner.settings == output:
                    progresses.append(runner.shipper.progress)
                else:
                    progresses.append(OutputProgress(settings.state_directory, output.name))
            return remove_delivered(settings.spool.directory, device, progresses, capacity=self.capacity,
                                    keep_after=saved_position(settings.state_directory, device))

    def retain_all(self):
        """Remove delivered files of every routed device; the device's saved position may have moved."""
        for device in {device.name for device in self.routing_devices}:
            try:
                self.on_file_done(device, None)
            except OSError as exc:
                log.warning("removing delivered spool files of device %s failed: %s", device, exc.strerror,
                            extra={"device": device})

    def snapshot(self):
        now = time.time()
        for runner in self.devices.values():
            runner.observe(now)
        devices = {name: (runner.stats, runner.settings.status, runner.disconnected_since)
                   for name, runner in self.devices.items()}
        outputs = {name: runner.stats for name, runner in self.outputs.items()}
        document = self.status_book.snapshot(devices, outputs)
        document["spool_bytes"] = self.capacity.used_bytes() if self.capacity else 0
        return document

    def write_status(self):
        if self.status_book is None:
            return  # start-up failed before the status file was opened
        try:
            self.status_book.write(self.snapshot())
        except OSError as exc:
            log.warning("cannot write the status file in %s: %s", self.settings.state_directory, exc.strerror)

    def status_text(self):
        connected = sum(1 for runner in self.devices.values() if runner.stats.connected)
        spooled = sum(runner.stats.events_spooled for runner in self.devices.values())
        delivered = sum(runner.stats.events_delivered for runner in self.outputs.values())
        return (f"{connected}/{len(self.devices)} devices connected, {spooled} events spooled, "
                f"{delivered} delivered")

    def run(self):
        """Serve until a stop signal; return the exit status."""
        next_status = next_watchdog = next_retention = 0.0
        while not self.stop_requests:
            now = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if now >= next_retention:
                self.retain_all()
                next_retention = now + RETENTION_SECONDS
            if now >= next_status:
                self.write_status()
                self.notifier.status(self.status_text())
                next_status = now + 1.0
            if self.notifier.watchdog_seconds and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + self.notifier.watchdog_seconds / 2
            self.wakeup.wait(0.5)
            self.wakeup.clear()
        return self.stop()

    def stop(self):
        """Stop devices, close their spool files, give shippers a last pass; return the exit status."""
        log.info("stopping: %d devices, %d outputs", len(self.devices), len(self.outputs),
                 extra={"event": "stopping"})
        self.notifier.stopping()
        deadline = time.monotonic() + STOP_DEVICES_SECONDS
        for runner in self.devices.values():
            runner.request_stop()
        for runner in self.devices.values():
            if not self._join(runner, deadline):
                return self._forced()
        for runner in self.devices.values():
            runner.close()

        deadline = time.monotonic() + LAST_PASS_SECONDS
        while any(runner.has_pending() for runner in self.outputs.values()) and time.monotonic() < deadline:
            if self.stop_requests > 1:
                return self._forced()
            self.wakeup.wait(0.2)
        for runner in self.outputs.values():
            runner.stop(STOP_OUTPUT_SECONDS)
        self.retain_all()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.write_status()
        self.release_locks()
        log.info("stopped", extra={"event": "stopped"})
        return 0

    def _join(self, runner, deadline):
        while not runner.join(0.1):
            if self.stop_requests > 1:
                return False
            if time.monotonic() >= deadline:
                log.warning("device %s did not stop in time; its session is abandoned", runner.settings.name,
                            extra={"device": runner.settings.name})
                return True
        return True

    def _forced(self):
        log.warning("second stop signal: stopping at once", extra={"event": "stopped"})
        return 1

def saved_position(state_directory, device):
    """Return the spool position (sequence, offset) up to which DEVICE saved its dedup keys.

    Spool files after it may hold events whose keys exist only in the spool,
    so they must stay until the device saves past them. (0, 0), which keeps
    every file, when the device has saved no position yet.
    """
    path = os.path.join(state_directory, "devices", device, STATE_FILE)
    try:
        position = (read_json(path, default={}) or {}).get("position")
    except (OSError, ValueError):
        return (0, 0)
    return tuple(position) if position else (0, 0)


def run(config_file, settings, early_signals=()):
    """Run the service in the foreground until SIGTERM or SIGINT; return the exit status.

    EARLY_SIGNALS lists stop signals that arrived before the service existed;
    the service then starts and stops at once, cleanly.
    """
    service = Service(config_file, settings)
    service.install_signal_handlers()
    service.stop_requests += len(early_signals)
    try:
        service.start()
    except PodspoolError:
        if service.devices or service.outputs:
            service.stop()
        else:
            service.release_locks()
        raise
    return service.run()
