"""One poller per API process (per stream shard: collector.web.tail_shards) feeds every
open live tail of its stream: one look at the watermark per TAIL_POLL_INTERVAL, and one
PostgreSQL read when it moved, whatever the number of tails.

The poller keeps `position` (D): every stored row up to D has been handed to every
subscriber that can want it. At each tick it reads the watermark W (collector.
pipeline.watermark; every row up to W is committed) and, when W passed D, reads the
rows in (D, W] once (at most FETCH_LIMIT, the rest at once after), of the tailed
devices only while no tail wants other devices, and hands each subscriber its part,
then sets D to the end of what it read. It runs as a greenlet, started by the first
tail and ended when none is left.

Hand-over happens without yielding to other greenlets (gevent switches only where a
greenlet waits), so a subscriber sees D and the batches after it as one sequence:
whatever it holds up to the D it attached at, plus every batch after, is every row.
A subscriber that attached while a read for other devices was in flight, or that let
too much pile up (a slow client), gets a Gap instead: "read up to here yourself".
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import gevent.event
import psycopg
import psycopg_pool
import redis

from collector.pipeline.watermark import stored_up_to
from collector.store import positions
from collector.store.positions import Position, Stored

log = logging.getLogger(__name__)

FETCH_LIMIT = 5000  # rows per read; a tick that reads this many reads again at once
MAX_BUFFERED_ROWS = 10_000  # rows waiting for one subscriber before they become a Gap


@dataclass(frozen=True)
class Rows:
    """Stored rows for a subscriber: its part of (start, end], in entry order."""

    start: Position
    end: Position
    rows: list[Stored]


@dataclass(frozen=True)
class Gap:
    """Rows up to `end` the subscriber reads itself (from its own position); in another
    stream incarnation than its own, it first reads the rest of its incarnation."""

    end: Position


@dataclass(eq=False)
class Subscriber:
    """What one tail receives. `devices`: the only devices it can want, or None (any)."""

    devices: frozenset[str] | None
    items: deque = field(default_factory=deque)
    wake: gevent.event.Event = field(default_factory=gevent.event.Event)
    buffered: int = 0
    stopped: bool = False

    def push(self, item: Rows | Gap) -> None:
        if isinstance(item, Rows):
            if self.buffered + len(item.rows) > MAX_BUFFERED_ROWS:
                self.items.clear()  # the Gap covers all of it: the tail reads it back page by page
                self.buffered = 0
                item = Gap(item.end)
            else:
                self.buffered += len(item.rows)
        self.items.append(item)
        self.wake.set()

    def pop(self) -> Rows | Gap | None:
        if not self.items:
            return None
        item = self.items.popleft()
        if isinstance(item, Rows):
            self.buffered -= len(item.rows)
        return item

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()


class Poller:
    def __init__(self, client: redis.Redis, db: psycopg_pool.ConnectionPool, stream: str, group: str,
                 interval: float, stopping: Callable[[], bool]) -> None:
        self.client, self.db, self.stream, self.group = client, db, stream, group
        self.interval, self.stopping = interval, stopping
        self.position: Position | None = None  # D; None while the poller is not running
        self.subscribers: set[Subscriber] = set()
        self._devices: Counter[str] = Counter()  # subscribers per device, of those with devices
        self._anywhere = 0  # subscribers that may want any device
        self._stream_ids: dict[str, int] = {}
        self._greenlet: gevent.Greenlet | None = None
        self._failing = False

    # --- subscribers -----------------------------------------------------------------

    def attach(self, subscriber: Subscriber, at: Position) -> None:
        """Add a subscriber that holds every row up to `at` (a watermark it read, or
        later). Starts the poller at `at` if it is not running. Must be called without
        yielding since reading self.position (see the module's docstring)."""
        if self.position is None:
            self.position = at
            self._greenlet = gevent.spawn(self._run)
        self.subscribers.add(subscriber)
        if subscriber.devices is None:
            self._anywhere += 1
        else:
            self._devices.update(subscriber.devices)

    def detach(self, subscriber: Subscriber) -> None:
        if subscriber not in self.subscribers:
            return
        self.subscribers.discard(subscriber)
        if subscriber.devices is None:
            self._anywhere -= 1
        else:
            self._devices.subtract(subscriber.devices)
            self._devices = +self._devices  # drop devices no subscriber wants any more

    # --- the loop --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self.subscribers and not self.stopping():
                more = False
                try:
                    more = self.tick()
                    if self._failing:
                        log.info("live tail polls work again")
                        self._failing = False
                except (redis.RedisError, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    # Nothing is lost: D stays, and the next tick reads from it again. Said once
                    # per outage, not at every tick.
                    if not self._failing:
                        log.warning("live tail polls fail (retried every tick): %r", exc)
                    self._failing = True
                except Exception:
                    # Anything else too: if the loop died, its tails would wait for ever.
                    if not self._failing:
                        log.exception("live tail poll failed (retried every tick)")
                    self._failing = True
                gevent.sleep(0 if more else self.interval)
            if self.stopping():
                for subscriber in list(self.subscribers):
                    subscriber.stop()
        finally:
            self.position = None  # the next first tail starts it again, at its own watermark

    def close(self) -> None:
        """Stop the loop now (tests; a stopping process just lets it end)."""
        if self._greenlet is not None:
            self._greenlet.kill()
        self.position = None

    def tick(self) -> bool:
        """One look at W and, if it moved, one read; True when more rows are waiting."""
        watermark = stored_up_to(self.client, self.stream, self.group)
        start = self.position
        if watermark is None or start is None:
            return False
        if watermark.epoch != start.epoch:
            # A new stream incarnation (a new Redis): its entries start over. Each tail reads
            # the rest of the old one itself; from here on the poller reads the new one.
            start = self.position = Position(watermark.epoch, 0, 0)
            for subscriber in self.subscribers:
                subscriber.push(Gap(start))
        if watermark.entry <= start.entry:
            return False
        devices = None if self._anywhere else frozenset(self._devices)
        with self.db.connection() as conn:
            stream_id = self.stream_id(conn, watermark.epoch)
            rows = (positions.rows_after(conn, stream_id, start.entry, watermark.entry, FETCH_LIMIT, devices)
                    if stream_id is not None else [])
        full = len(rows) >= FETCH_LIMIT
        end = Position(watermark.epoch, *rows[-1].entry) if full else watermark
        self._hand_out(start, end, rows, devices)
        self.position = end
        return full

    def stream_id(self, conn: psycopg.Connection, epoch: str) -> int | None:
        """log_streams.id of an incarnation of our stream, remembered once found."""
        if epoch not in self._stream_ids:
            # Read after W: a row up to W was committed with its log_streams row, before W moved.
            found = positions.stream_id(conn, positions.stream_name(self.stream, epoch))
            if found is None:
                return None  # nothing of this incarnation stored yet: ask again next time
            self._stream_ids[epoch] = found
        return self._stream_ids[epoch]

    def _hand_out(self, start: Position, end: Position, rows: list[Stored], devices: frozenset[str] | None) -> None:
        """Each subscriber's part of (start, end], without yielding."""
        by_device: dict[str, list[Stored]] = {}
        for row in rows:
            by_device.setdefault(row.log["device_id"], []).append(row)
        for subscriber in self.subscribers:
            wanted = subscriber.devices
            if devices is not None and (wanted is None or not wanted <= devices):
                # Attached while a read for other devices was in flight: this read is not its.
                subscriber.push(Gap(end))
                continue
            if wanted is None:
                mine = rows
            elif len(wanted) == 1:
                mine = by_device.get(next(iter(wanted)), [])
            else:
                mine = [row for row in rows if row.log["device_id"] in wanted]
            if mine:
                subscriber.push(Rows(start, end, mine))
