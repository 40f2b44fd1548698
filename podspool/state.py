"""The persisted state of one device: checkpoint, last connected time, clean-stop flag, keys.

Layout under `<state_directory>/devices/<device name>/`:

- `state.json`, replaced atomically: the checkpoint, the last time a live
  session was connected, whether the last stop was clean, the spool writer's
  durable position, and the key file with its committed length in bytes;
- `keys-<generation>.bin`: the dedup key journal, fixed-size records
  (16-byte digest, microseconds, time kind) appended at each commit and
  rewritten by compaction into the next generation.

A commit appends the new keys and fsyncs the journal before it replaces
state.json, and state.json records the committed journal length, so a crash
at any point leaves a journal whose committed part matches the saved position.
"""

import logging
import os
import struct

from podspool import fsutil

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
KEY_RECORD = struct.Struct("<16sqB")
# Compact once the journal has this many records more than the window.
COMPACT_SLACK_RECORDS = 500_000


class DeviceState:
    """The values a device saves; `position` is the spool writer's (sequence, offset) or None."""

    def __init__(self, data=None):
        data = data or {}
        self.checkpoint_micros = data.get("checkpoint_micros")
        self.last_connected = data.get("last_connected")
        self.clean_stop = bool(data.get("clean_stop", False))
        position = data.get("position")
        self.position = tuple(position) if position is not None else None
        self.generation = int(data.get("generation", 0))
        self.journal_bytes = int(data.get("journal_bytes", 0))
        self.exists = bool(data)

    def as_dict(self, checkpoint_text):
        return {
            "version": 1,
            "checkpoint_micros": self.checkpoint_micros,
            "checkpoint": checkpoint_text,
            "last_connected": self.last_connected,
            "clean_stop": self.clean_stop,
            "position": list(self.position) if self.position is not None else None,
            "generation": self.generation,
            "journal_bytes": self.journal_bytes,
        }


class DeviceStateStore:
    """Load and save one device's DeviceState and its dedup key journal."""

    def __init__(self, state_directory, device_name, format_checkpoint=str):
        self.directory = os.path.join(state_directory, "devices", device_name)
        self.format_checkpoint = format_checkpoint
        self.state = DeviceState()
        self._journal_fd = None

    @property
    def state_path(self):
        return os.path.join(self.directory, STATE_FILE)

    def journal_path(self, generation):
        return os.path.join(self.directory, f"keys-{generation:06d}.bin")

    def load(self, window):
        """Read state.json, and the committed keys into the DedupWindow WINDOW; return the state."""
        fsutil.ensure_dir(self.directory)
        self.close()
        self.state = DeviceState(fsutil.read_json(self.state_path, default=None))
        path = self.journal_path(self.state.generation)
        records = self._read_journal(path, self.state.journal_bytes, window)
        self._journal_fd = fsutil.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        # Bytes past the committed length belong to a commit that never finished.
        os.ftruncate(self._journal_fd, self.state.journal_bytes)
        self._remove_other_generations()
        log.debug("loaded device state from %s: %d key records", self.directory, records)
        return self.state

    def _read_journal(self, path, length, window):
        try:
            with open(path, "rb") as handle:
                data = handle.read(length)
        except FileNotFoundError:
            data = b""
        if len(data) < length:
            log.warning("key journal %s is shorter than its recorded length (%d of %d bytes); "
                        "loading its complete records only", path, len(data), length)
            self.state.journal_bytes = len(data) - len(data) % KEY_RECORD.size
            data = data[:self.state.journal_bytes]
        count = 0
        for digest, micros, kind in KEY_RECORD.iter_unpack(data):
            window.add(digest, micros, kind)
            count += 1
        return count

    def _remove_other_generations(self):
        keep = os.path.basename(self.journal_path(self.state.generation))
        for name in os.listdir(self.directory):
            if name.startswith("keys-") and name.endswith(".bin") and name != keep:
                os.unlink(os.path.join(self.directory, name))

    def commit(self, new_keys, *, fsync=True):
        """Append NEW_KEYS, then save state.json.

        NEW_KEYS is bytes of packed KEY_RECORDs, or (digest, micros, kind)
        tuples. Call it only when everything the keys stand for is durable in
        the spool.
        """
        if new_keys:
            if isinstance(new_keys, (bytes, bytearray)):
                data = bytes(new_keys)
            else:
                data = b"".join(KEY_RECORD.pack(*entry) for entry in new_keys)
            view = memoryview(data)
            while view:
                view = view[os.write(self._journal_fd, view):]
            if fsync:
                os.fsync(self._journal_fd)
            self.state.journal_bytes += len(data)
        self.save(fsync=fsync)

    def save(self, *, fsync=True):
        """Replace state.json with the current state."""
        checkpoint = self.state.checkpoint_micros
        text = self.format_checkpoint(checkpoint) if checkpoint is not None else None
        fsutil.write_json_atomic(self.state_path, self.state.as_dict(text), fsync=fsync)

    def needs_compaction(self, window):
        return self.state.journal_bytes // KEY_RECORD.size > len(window) + COMPACT_SLACK_RECORDS

    def compact(self, window):
        """Rewrite the journal with only the keys WINDOW still holds, as the next generation."""
        generation = self.state.generation + 1
        data = b"".join(KEY_RECORD.pack(*entry) for entry in window.entries())
        fsutil.write_atomic(self.journal_path(generation), data)
        old_path = self.journal_path(self.state.generation)
        old_fd = self._journal_fd
        self._journal_fd = fsutil.open_fd(self.journal_path(generation), os.O_WRONLY | os.O_APPEND)
        os.close(old_fd)
        self.state.generation = generation
        self.state.journal_bytes = len(data)
        self.save()
        # Only now does state.json point at the new file, so the old one may go.
        os.unlink(old_path)
        log.info("compacted key journal of %s to %d keys", self.directory, len(window))

    def close(self):
        """Close the journal file; safe to call twice."""
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None
