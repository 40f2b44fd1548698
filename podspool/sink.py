"""The single writer step of a device: dedup, spool, checkpoint and the state that records them.

Items reach `DeviceSink.spool` in arrival order. Events whose key is in the
dedup window are dropped; the rest go to the spool writer in one write_many
per run of events. Their keys and times stay pending until the spool reports
everything written durable. Only then does `commit` append the keys to the
journal and move the checkpoint, so neither covers an event the spool could
still lose.
"""

import logging
from itertools import starmap

from podspool.dedup import EVENT_TIME, MICROS, RECEIVE_TIME, DedupWindow, TimestampParser, key_digest
from podspool.errors import SpoolError
from podspool.events import dedup_key, format_rfc3339
from podspool.intake import DEAD_LETTER, EVENT, RateLimitedLog, parse_event
from podspool.resume import from_epoch
from podspool.state import KEY_RECORD, DeviceStateStore

log = logging.getLogger(__name__)

# Recovery reads lines the device itself wrote, so no size limit applies to them.
_NO_LIMIT = float("inf")


def format_micros(micros):
    """Format integer epoch MICROS as RFC 3339 UTC with microseconds."""
    seconds, fraction = divmod(micros, MICROS)
    return format_rfc3339(from_epoch(seconds).replace(microsecond=fraction))


class DeviceSink:
    """Spool one device's items and keep its checkpoint, dedup window and state file."""

    def __init__(self, settings, writer, state_directory, stats):
        self.settings = settings
        self.writer = writer
        self.stats = stats
        self.window = DedupWindow(settings.dedup_window_seconds)
        self.store = DeviceStateStore(state_directory, settings.name, format_checkpoint=format_micros)
        self.in_hand = []  # items a full spool rejected, oldest first
        # Keys of written, not yet committed events, packed as key journal records. They take
        # about a third of the memory of (digest, micros, kind) tuples, which matters at 50,000 events/s.
        self._pending_keys = bytearray()
        self._pending_max = None  # newest event time among them, in microseconds
        self._newest_spooled = None
        self._extra = {"device": settings.name, "cluster": settings.cluster, "type": settings.type}
        self._dead_letter_log = RateLimitedLog(logger=log)

    @property
    def state(self):
        return self.store.state

    @property
    def checkpoint_micros(self):
        return self.store.state.checkpoint_micros

    def open(self, now):
        """Load the state, open the spool writer and re-add the keys of lines written after the saved position."""
        state = self.store.load(self.window)
        self.writer.open()
        if state.exists and state.position is not None:
            recovered = self._recover(state.position, int(now * MICROS))
            if recovered:
                log.info("device %s: recovered %d event keys written after the last saved state",
                         self.settings.name, recovered, extra=self._extra)
        self._show_checkpoint()
        return state

    def _recover(self, position, now_micros):
        parser = TimestampParser()
        count = 0
        for line in self.writer.lines_after(position):
            event, _, _ = parse_event(line, _NO_LIMIT, keys_only=True)
            if event is None:
                continue
            # The configuration rejects pipelines that change guid, id or ts, so this key
            # equals the received event's key. NOTE: an event with neither guid nor id is
            # keyed by a hash of its bytes, which differs when a pipeline changed the event.
            key = dedup_key(event, line)
            micros = parser.micros(event.get("ts"))
            if micros is None or key.startswith("sha256:"):
                self._remember(key_digest(key), now_micros, RECEIVE_TIME)
            else:
                self._remember(key_digest(key), micros, EVENT_TIME)
            count += 1
        return count

    def spool(self, items, now):
        """Write ITEMS after any held earlier; return False when the spool is full and some are held."""
        self.in_hand.extend(items)
        return self.flush(now)

    def flush(self, now):
        """Write the items in hand, oldest first; return True when none is left."""
        items = self.in_hand
        index = 0
        try:
            while index < len(items):
                item = items[index]
                if item.kind == EVENT:
                    index = self._write_run(items, index, now)
                    continue
                if item.kind == DEAD_LETTER:
                    self._dead_letter(item, now)
                else:
                    self.stats.events_dropped_by_pipeline += 1
                index += 1
        except SpoolError:
            del items[:index]
            self.stats.paused = True
            return False
        items.clear()
        self.stats.paused = False
        return True

    def _write_run(self, items, start, now):
        """Write the run of events from START; return the index after it. Counts only after success."""
        members = self.window.members
        receive_micros = int(now * MICROS)
        lines, keys, seen = [], [], set()
        duplicates = 0
        end, count = start, len(items)
        while end < count:
            item = items[end]
            if item.kind != EVENT:
                break
            end += 1
            digest = item.digest
            if digest in members or digest in seen:
                duplicates += 1
                continue
            seen.add(digest)
            lines.append(item.line)
            kind = item.time_kind
            keys.append((digest, item.micros if kind == EVENT_TIME else receive_micros, kind))
        if lines:
            self.writer.write_many(lines)
            self._remember_many(keys)
        self.stats.events_spooled += len(lines)
        self.stats.duplicates_dropped += duplicates
        if lines and self._newest_spooled is not None:
            self.stats.last_event_time = format_micros(self._newest_spooled)
        return end

    def _remember(self, digest, micros, kind):
        self._remember_many([(digest, micros, kind)])

    def _remember_many(self, keys):
        """Add KEYS, (digest, micros, kind) tuples, to the window and to the keys the next commit saves."""
        self.window.add_many(keys)
        self._pending_keys += b"".join(starmap(KEY_RECORD.pack, keys))
        newest = max((micros for _, micros, kind in keys if kind == EVENT_TIME), default=None)
        if newest is not None:
            if self._pending_max is None or newest > self._pending_max:
                self._pending_max = newest
            if self._newest_spooled is None or newest > self._newest_spooled:
                self._newest_spooled = newest

    def _dead_letter(self, item, now):
        self.writer.dead_letter_frame(item.reason, item.raw, now)
        self.stats.dead_lettered += 1
        self._dead_letter_log.warning(
            item.topic,
            "device %s: frame of %d bytes dead-lettered: %s",
            self.settings.name, len(item.raw), item.reason,
            extra=dict(self._extra, event="dead_lettered", reason=item.reason, size_bytes=len(item.raw), topic=item.topic),
        )

    def has_pending(self):
        return bool(self._pending_keys)

    def commit(self, now, *, durable, clean_stop=False, last_connected=None):
        """Save the state; when DURABLE, also the pending keys, the checkpoint and the spool position."""
        state = self.store.state
        if last_connected is not None:
            state.last_connected = last_connected
        state.clean_stop = clean_stop
        fsync = self.writer.settings.fsync != "never"
        if not durable:
            self.store.save(fsync=fsync)
            return
        if self._pending_max is not None and (state.checkpoint_micros is None
                                              or self._pending_max > state.checkpoint_micros):
            state.checkpoint_micros = self._pending_max
        state.position = tuple(self.writer.durable_position)
        # A bytes copy of records packed already, so the bytearray stays resizable even
        # if the commit fails midway.
        self.store.commit(bytes(self._pending_keys), fsync=fsync)
        self._pending_keys = bytearray()
        self._pending_max = None
        self.window.prune(int(now * MICROS))
        if self.store.needs_compaction(self.window):
            self.store.compact(self.window)
        self._show_checkpoint()

    def _show_checkpoint(self):
        checkpoint = self.store.state.checkpoint_micros
        self.stats.checkpoint = format_micros(checkpoint) if checkpoint is not None else None
        if self._newest_spooled is not None:
            self.stats.last_event_time = format_micros(self._newest_spooled)

    def close(self):
        """Close the key journal; safe to call twice."""
        self.store.close()
