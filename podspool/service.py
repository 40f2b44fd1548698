"""The service: start-up checks, the summary of the configuration, and running everything."""

import logging
import os
import signal
import tempfile
import threading
import time

from podspool import __version__
from podspool.components import DeviceRunner, OutputRunner
from podspool.lock import DirectoryLock
from podspool.spool_files import list_closed
from podspool.stats import DeviceStats, OutputStats
from podspool.errors import ConfigError, PodspoolError
from podspool.fsutil import ensure_dir
from podspool.metrics import MetricsServer
from podspool.notify import Notifier
from podspool.session import is_cleartext_remote
from podspool.status import StatusBook

log = logging.getLogger(__name__)

# Stop budget: the three phases add up to 9 s, inside the unit's TimeoutStopSec and the
# documented 10 s.
STOP_DEVICES_SECONDS = 3.0
LAST_PASS_SECONDS = 3.0
STOP_OUTPUT_SECONDS = 3.0


def check_directories(settings):
    """Create the spool and state directories when missing and prove they are writable."""
    for key, path in (("spool.directory", settings.spool.directory),
                      ("state_directory", settings.state_directory)):
        try:
            ensure_dir(path)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            raise ConfigError(
                f"directory {path} cannot be created or written ({exc.strerror})",
                file=settings.files[0] if settings.files else None, key=key,
                fix="create it and give the service user write access, or choose another path",
            ) from None


def describe(settings):
    """Return a plain-text summary of the configuration, without any secret."""
    lines = ["configuration files:"]
    lines += [f"  {path}" for path in settings.files]
    lines.append(f"spool: {settings.spool.directory} (rotate {settings.spool.rotate_bytes} bytes or "
                 f"{settings.spool.rotate_seconds:g} s, fsync {settings.spool.fsync}, "
                 f"cap {settings.spool.max_bytes} bytes, compress {settings.spool.compress})")
    lines.append(f"state: {settings.state_directory}")
    lines.append(f"devices ({len(settings.devices)}):")
    for device in settings.devices:
        state = "enabled" if device.status else "disabled"
        pipelines = ", ".join(device.pipelines) or "-"
        lines.append(f"  {device.name} (id {device.id}): cluster {device.cluster}, type {device.type}, "
                     f"endpoint {device.endpoint}, pipelines {pipelines}, {state}"
                     + (", token decrypted" if device.secure else ""))
    lines.append(f"outputs ({len(settings.outputs)}):")
    for output in settings.outputs:
        routed = ", ".join(output.devices) or "all devices"
        lines.append(f"  {output.name}: type {output.type}, devices {routed}")
    lines.append(f"pipelines ({len(settings.pipelines)}):")
    for name in sorted(settings.pipelines):
        lines.append(f"  {name}")
    for device in settings.devices:
        if is_cleartext_remote(device.endpoint):
            lines.append(f"warning: device {device.name} uses unencrypted ws:// to a host that is not loopback")
    return "\n".join(lines)


class Service:
    """Own the devices, outputs, status file, metrics and systemd notifications of one run.

    Signal handlers only record the signal; `run()` on the main thread does
    the work: a stop signal stops devices first, then closes their spool
    files, then gives the shippers a last pass; a second stop signal ends the
    stop at once; SIGHUP reloads the configuration.
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
        # Devices removed by a reload whose spool still holds closed files: outputs keep
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
        """Remove CLOSED_FILE of DEVICE once every output that routes DEVICE has delivered it."""
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
            return remove_delivered(settings.spool.directory, device, progresses, capacity=self.capacity)

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
        next_status = next_watchdog = 0.0
        while not self.stop_requests:
            now = time.monotonic()
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
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
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.write_status()
        for lock in self.locks:
            lock.release()
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

    def reload(self):
        """Apply a new configuration: restart what changed, keep what did not."""
        from podspool import config

        self.notifier.reloading()
        old = self.settings
        try:
            new = config.load(self.config_file)
            moved = [key for key, before, after in (
                ("spool.directory", old.spool.directory, new.spool.directory),
                ("state_directory", old.state_directory, new.state_directory)) if before != after]
            if moved:
                # The outputs would leave behind the files already in the old directories.
                raise ConfigError(f"{' and '.join(moved)} cannot change on reload; "
                                  "restart the service to move it")
            check_directories(new)
        except PodspoolError as exc:
            log.error("configuration reload failed, keeping the running configuration: %s", exc,
                      extra={"event": "config_reload_failed", "error": str(exc)})
            self.notifier.ready(self.status_text())
            return False
        self.settings = new
        spool_changed = old.spool != new.spool
        self._retire_removed_devices(old, new)
        changed = self._reload_devices(old, new, spool_changed)
        changed += self._reload_outputs(old, new, spool_changed)
        if old.metrics != new.metrics:
            if self.metrics_server is not None:
                self.metrics_server.stop()
                self.metrics_server = None
            try:
                self._start_metrics()
                changed.append("metrics restarted")
            except PodspoolError as exc:
                log.error("metrics listener failed to start after the reload: %s", exc,
                          extra={"event": "config_reload_failed", "error": str(exc)})
                changed.append("metrics failed to start")
        log.info("configuration reloaded: %s", ", ".join(changed) or "nothing changed",
                 extra={"event": "config_reloaded", "changes": changed})
        self.notifier.ready(self.status_text())
        return True

    def _reload_devices(self, old, new, spool_changed):
        old_devices = {device.name: device for device in old.devices}
        new_devices = {device.name: device for device in new.devices if device.status}

        def unchanged(name):
            return (new_devices[name] == old_devices.get(name) and not spool_changed
                    and pipelines_equal(old, new, new_devices[name].pipelines))

        def stop(runner):
            runner.request_stop()
            runner.join(STOP_DEVICES_SECONDS)
            runner.close()

        return swap("device", self.devices, new_devices, unchanged, stop, self._start_device)

    def _retire_removed_devices(self, old, new):
        """Keep routing removed or disabled devices while their spool holds closed files."""
        configured = {device.name for device in new.devices}
        for device in old.devices:
            if device.name not in configured and list_closed(old.spool.directory, device.name):
                self.retired_devices[device.name] = device
        for name in list(self.retired_devices):
            if name in configured or not list_closed(new.spool.directory, name):
                del self.retired_devices[name]

    def _reload_outputs(self, old, new, spool_changed):
        old_outputs = {output.name: output for output in old.outputs}
        new_outputs = {output.name: output for output in new.outputs}
        # Outputs restart when routing or the directories they read change.
        devices_changed = old.devices != new.devices or spool_changed

        def unchanged(name):
            return new_outputs[name] == old_outputs.get(name) and not devices_changed

        return swap("output", self.outputs, new_outputs, unchanged,
                    lambda runner: runner.stop(STOP_OUTPUT_SECONDS), self._start_output)


def swap(kind, running, wanted, unchanged, stop, start):
    """Stop the RUNNING entries that are gone or changed, start the WANTED ones not running.

    Returns the list of changes as text, for the config_reloaded log line. A
    start that fails is logged and the others go on: one bad entry must not
    take the service down.
    """
    changes = []
    for name in list(running):
        if name not in wanted or not unchanged(name):
            stop(running.pop(name))
            changes.append(f"{kind} {name} stopped")
    for name, settings in wanted.items():
        if name not in running:
            try:
                start(settings)
            except Exception as exc:  # noqa: BLE001 - logged, the rest of the reload goes on
                log.exception("%s %s failed to start after the reload: %s", kind, name, exc,
                              extra={kind: name, "event": "config_reload_failed", "error": str(exc)})
                changes.append(f"{kind} {name} failed to start")
                continue
            changes.append(f"{kind} {name} started")
    return changes


def warn_unrouted_spools(settings):
    """Log the spool directories of devices no longer configured that still hold closed files."""
    configured = {device.name for device in settings.devices}
    try:
        names = sorted(os.listdir(settings.spool.directory))
    except OSError:
        return
    for name in names:
        if name in configured or name.startswith("."):
            continue
        left = list_closed(settings.spool.directory, name)
        if left:
            log.warning("the spool of %s, a device no longer configured, holds %d closed files that no "
                        "output will ship; configure the device again to ship them, or remove them",
                        name, len(left), extra={"device": name})


def pipelines_equal(old, new, names):
    """Tell whether the pipelines NAMES are defined the same way in both configurations."""
    return all(old.pipelines.get(name) == new.pipelines.get(name) for name in names)


def summary_line(settings):
    """Return the effective settings in one line, without secrets."""
    devices = ", ".join(f"{d.name}({d.type}{'' if d.status else ', disabled'})" for d in settings.devices)
    outputs = ", ".join(f"{o.name}({o.type})" for o in settings.outputs)
    return (f"config files {', '.join(settings.files)}; spool {settings.spool.directory} "
            f"(fsync {settings.spool.fsync}, cap {settings.spool.max_bytes} bytes); "
            f"state {settings.state_directory}; devices [{devices}]; outputs [{outputs}]")


def run(config_file, settings):
    """Run the service in the foreground until SIGTERM or SIGINT; return the exit status."""
    service = Service(config_file, settings)
    service.install_signal_handlers()
    try:
        service.start()
    except PodspoolError:
        service.stop()
        raise
    return service.run()
