"""SIGHUP reload: apply a new configuration, restarting only what changed.

New devices and outputs start, removed ones stop, changed ones restart and
unchanged ones keep their sessions. An invalid configuration is logged as
`config_reload_failed` and the running one stays. The spool and state
directories cannot move on reload, because outputs would leave behind the
files already in the old ones.
"""

import logging

from podspool.errors import ConfigError, PodspoolError
from podspool.overview import check_directories
from podspool.spool_files import list_closed

log = logging.getLogger(__name__)

STOP_DEVICES_SECONDS = 3.0
STOP_OUTPUT_SECONDS = 3.0


class ReloadMixin:
    """The reload half of podspool.service.Service."""

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
                raise ConfigError("cannot change on reload", file=self.config_file, key=" and ".join(moved),
                                  fix="restart the service to move it")
            check_directories(new)
        except PodspoolError as exc:
            log.error("configuration reload failed, keeping the running configuration: %s", exc,
                      extra={"event": "config_reload_failed", "error": str(exc)})
            self.notifier.ready(self.status_text())
            return False
        self.settings = new
        spool_changed = old.spool != new.spool
        changed = self._reload_devices(old, new, spool_changed)
        # After the devices stopped: a removed device's active file is closed only then.
        self._retire_removed_devices(old, new)
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
        """Keep routing removed or disabled devices while their spool contains closed files."""
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


def pipelines_equal(old, new, names):
    """Tell whether the pipelines NAMES are defined the same way in both configurations."""
    return all(old.pipelines.get(name) == new.pipelines.get(name) for name in names)
