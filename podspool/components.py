"""Build, start and stop the running parts of the service: one per device and one per output.

A `DeviceRunner` owns a device's spool writer, its connection thread and its
stop event. An `OutputRunner` owns an output's destination and shipper thread.
The service starts and stops them in the documented order and swaps them on
reload.
"""

import logging
import threading

from podspool.pipelines import PipelineRunner
from podspool.shipper import routed_devices
from podspool.spool_files import list_closed
from podspool.stats import DeviceStats, OutputStats

log = logging.getLogger(__name__)


class DeviceRunner:
    """One device: its spool writer and the thread that keeps its PoD session."""

    def __init__(self, settings, spool_settings, state_directory, pipelines, capacity, stats=None):
        self.settings = settings
        self.spool_settings = spool_settings
        self.state_directory = state_directory
        self.pipelines = tuple(pipelines[name] for name in settings.pipelines)
        self.capacity = capacity
        self.stats = stats or DeviceStats()
        self.stop_event = threading.Event()
        self.disconnected_since = None  # epoch seconds; None while connected
        self.writer = None
        self.connection = None
        self.thread = None

    def start(self):
        from podspool.device import DeviceConnection
        from podspool.spool import SpoolWriter

        self.writer = SpoolWriter(self.spool_settings, self.settings.name, capacity=self.capacity)
        runner = None
        if self.pipelines:
            runner = PipelineRunner(list(self.pipelines), context={
                "device": self.settings.name, "cluster": self.settings.cluster,
                "type": self.settings.type, "tags": list(self.settings.tags),
            })
        self.connection = DeviceConnection(
            self.settings, self.writer, state_directory=self.state_directory,
            stop_event=self.stop_event, stats=self.stats, pipeline=runner,
        )
        self.thread = threading.Thread(target=self.connection.run, name=f"device-{self.settings.name}",
                                       daemon=True)
        self.thread.start()
        return self

    def observe(self, now):
        """Track since when the device has had no session; the service calls this every second."""
        if self.stats.connected:
            self.disconnected_since = None
        elif self.disconnected_since is None:
            self.disconnected_since = now

    def request_stop(self):
        self.stop_event.set()

    def join(self, timeout):
        if self.thread is not None:
            self.thread.join(timeout)
        return self.thread is None or not self.thread.is_alive()

    def close(self):
        """Close the connection and the spool writer; safe to call twice."""
        if self.connection is not None:
            self.connection.close()
        if self.writer is not None:
            self.writer.close()


class OutputRunner:
    """One output: its destination and its shipper thread."""

    def __init__(self, settings, devices, spool_root, state_directory, on_file_done, stats=None):
        self.settings = settings
        self.devices = routed_devices(settings, devices)
        self.spool_root = spool_root
        self.state_directory = state_directory
        self.on_file_done = on_file_done
        self.stats = stats or OutputStats()
        self.shipper = None

    def start(self):
        from podspool.outputs.registry import build_destination
        from podspool.shipper import Shipper

        destination = build_destination(self.settings)
        self.shipper = Shipper(
            self.settings, destination, spool_root=self.spool_root,
            state_directory=self.state_directory, devices=self.devices,
            stats=self.stats, on_file_done=self.on_file_done,
        )
        self.shipper.start()
        return self

    def routes(self, device_name):
        return any(device.name == device_name for device in self.devices)

    def has_pending(self):
        """Tell whether a closed file of a routed device still waits for this output."""
        progress = self.shipper.progress
        for device in self.devices:
            for closed in list_closed(self.spool_root, device.name):
                if not progress.is_done(device.name, closed.name):
                    return True
        return False

    def stop(self, timeout):
        if self.shipper is not None:
            self.shipper.stop(timeout)
