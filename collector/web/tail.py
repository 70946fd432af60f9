"""Live tails: GET /api/logs/<device_id>/tail and GET /api/logs/tail, as Server-Sent Events.

Each event is one stored log, its `id:` the log's position (collector.store.positions:
"<ms>-<n>@<epoch>", its stream entry). A tail sends the logs matching its filter in
position order, each once; reconnecting with Last-Event-ID (or ?last_event_id=) goes
on right after that position, logs stored meanwhile included. docs/tail.md has the
design; with STREAM_SHARDS above 1, a tail does all of it once per shard it reads, and
an id holds a position per shard (collector.web.tail_shards). In short:

- Only logs up to the watermark W are sent (collector.pipeline.watermark): every entry
  up to W is stored, so a position never passes a log that commits later.
- A tail first reads from PostgreSQL itself, in pages, from its position up to a W;
  then it joins the process's poller of the stream (collector.web.tail_poller), which
  reads new rows once for all tails, and takes the poller's batches from then on.
- `id:` lines without data move the client's Last-Event-ID without an event: at the
  start (a tail that saw nothing resumes from where it connected) and with heartbeats
  (past logs that did not match).
- Open tails are capped per key (collector.pipeline.tail_slots); without keys
  (AUTH_ENABLED=false) they are not capped. On Gunicorn's graceful shutdown each tail
  ends with a comment, and the client reconnects (to another instance) where it was.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gevent
import gevent.event
import orjson
import psycopg
import psycopg_pool
import redis
from flask import Response, current_app, request

from collector.core.settings import Settings
from collector.pipeline import shards
from collector.pipeline.group import ensure_group
from collector.pipeline.tail_slots import TailSlots
from collector.pipeline.watermark import stored_up_to
from collector.store import positions
from collector.store.positions import Position, Stored
from collector.store.search import LogFilter
from collector.web import stopping
from collector.web.auth import principal
from collector.web.errors import ApiError
from collector.web.extensions import Backends, backends, settings
from collector.web.query import filter_args
from collector.web.schemas import LogOut
from collector.web.tail_poller import Gap, Poller, Rows
from collector.web.tail_shards import Ids, Lane, Resume, open_lanes, parse

log = logging.getLogger(__name__)

CATCH_UP_PAGE = 500  # rows per PostgreSQL read while a tail catches up on its own
RECONNECT_MS = 1000  # the `retry:` the stream opens with: how soon an EventSource reconnects
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # the latter: nginx must not buffer
_log_out = LogOut()


@dataclass
class TailHub:
    """The process's pollers, one per stream shard, and the key slots, one per app (built
    by the first tail)."""

    pollers: tuple[Poller, ...]
    slots: TailSlots
    _reading: dict[int, gevent.event.AsyncResult] = field(default_factory=dict)

    @property
    def poller(self) -> Poller:
        """Unsharded, the process's one poller."""
        return self.pollers[0]

    def close(self) -> None:
        """Stop every poller now (tests)."""
        for poller in self.pollers:
            poller.close()

    def watermark(self, b: Backends, s: Settings, fresh: bool = False, index: int = 0) -> Position:
        """A position up to which every log of shard `index` is stored, for a tail to start
        from or catch up to: its poller's own (no round trip) while it runs, unless `fresh`;
        else the watermark read from Redis, once for every tail that opens meanwhile (a
        reconnect storm of hundreds of tails is one read, not hundreds of connections)."""
        poller = self.pollers[index]
        if poller.position is not None and not fresh:
            return poller.position
        if index in self._reading:
            return self._reading[index].get()
        self._reading[index] = reading = gevent.event.AsyncResult()
        shard = shards.shard(s, index)
        try:
            found = stored_up_to(b.redis, shard.stream, shard.consumer_group)
            if found is None:  # nothing queued or drained yet: give the stream its epoch now
                ensure_group(b.redis, shard.stream, shard.consumer_group)
                found = stored_up_to(b.redis, shard.stream, shard.consumer_group)
            reading.set(found)
            return found
        except BaseException as exc:
            reading.set_exception(exc)
            raise
        finally:
            del self._reading[index]


def hub() -> TailHub:
    found = current_app.extensions.get("collector.tail")
    if found is None:
        s, b = settings(), backends()
        found = current_app.extensions["collector.tail"] = TailHub(
            tuple(Poller(b.redis, b.db, shard.stream, shard.consumer_group, s.tail_poll_interval, stopping.requested)
                  for shard in shards.shards(s)),
            TailSlots(b.redis, s))
    return found


def device_tail(device_id: str):
    return _open(device_id)


def fleet_tail():
    return _open(None)


def _open(device_id: str | None) -> Response:
    s, b = settings(), backends()
    filt, _ = filter_args(device_id)  # 422 for bad filters, 403 outside the key's scope
    requested = _requested_position(s)
    tails = hub()
    lanes = open_lanes(s, filt, requested, tails.pollers, lambda index, fresh: tails.watermark(b, s, fresh, index))
    who = principal()
    key_id = who.key_id if who is not None else None
    tail = Tail(tails, b, s, filt, lanes, key_id)
    if key_id is not None and not tail.hub.slots.take(key_id, tail.id):
        raise ApiError(429, "too_many_tails",
                       f"This key has {s.tail_max_per_key} live tails open (TAIL_MAX_PER_KEY): close one, or "
                       "retry after Retry-After seconds.", retry_after=s.retry_after)
    tail.slot_taken = key_id is not None
    try:
        tail.start()
    except psycopg.errors.QueryCanceled:
        tail.close()
        raise ApiError(422, "query_too_broad",
                       f"Catching up from Last-Event-ID ran longer than QUERY_TIMEOUT_MS ({s.query_timeout_ms} ms): "
                       "narrow the filter, or reconnect without Last-Event-ID.") from None
    except BaseException:
        tail.close()
        raise
    return Response(tail, mimetype="text/event-stream", headers=HEADERS)


def _requested_position(s: Settings) -> Resume | None:
    """Last-Event-ID (an EventSource's reconnect), else ?last_event_id= (curl, or a page's
    first connection); the header wins, being newer than the URL a browser reconnects to."""
    text = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if not text:
        return None
    try:
        return parse(s, text)
    except ValueError:
        form = "<ms>-<n>@<epoch>" if s.stream_shards == 1 else "<shards>.<base>.<tag>_<delta>@<epoch>..."
        raise ApiError(422, "validation_failed", "The query is invalid; see fields.", {"last_event_id": [
            f"Not a position this API gave: pass an event's id ({form}) as it came."]}) from None


def encode(rows: list[Stored], epoch: str, ids: Callable[[Stored], bytes] | None = None) -> bytes:
    """One event per log; each log's JSON is made once, however many tails send it. Its id
    is its position, or what `ids` makes of it (sharded: tail_shards.Ids.of_rows)."""
    out = []
    tag = epoch.encode()
    for row in rows:
        if row.data is None:
            row.data = b"data: " + _json(row.log) + b"\n\n"
        if ids is None:
            out.append(b"id: %d-%d@%s\n" % (*row.entry, tag) + row.data)
        else:
            out.append(b"id: " + ids(row) + b"\n" + row.data)
    return b"".join(out)


def _json(log: dict) -> bytes:
    """LogOut's JSON of a log. A stored row (search.finish_row) already holds exactly
    LogOut's fields, in its order, as the values it dumps, so orjson writes the very same
    bytes (tests/test_tail.py compares them) at a fifteenth of the cost: this is most of
    what a tailed log costs the API (docs/tail.md)."""
    try:
        return orjson.dumps(log)
    except orjson.JSONEncodeError:  # what orjson cannot write (over 254 levels deep, stored long ago)
        return json.dumps(_log_out.dump(log), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class Tail:
    """One open tail: the response body (an iterable with close()) and its state.

    Per shard it reads, a lane (tail_shards.Lane) with its position; `sent`: the lanes'
    positions the client was last given (the id it would reconnect with).
    """

    def __init__(self, hub: TailHub, b: Backends, s: Settings, filt: LogFilter, lanes: list[Lane],
                 key_id: str | None) -> None:
        self.hub, self.db, self.client, self.settings, self.filt = hub, b.db, b.redis, s, filt
        self.lanes, self.key_id = lanes, key_id
        self.ids = Ids(s, lanes)
        self.started_at = self.sent = self.positions()
        self.id = uuid.uuid4().hex
        # Whichever of its pollers hands it something wakes the tail.
        self.wake = gevent.event.Event()
        for lane in lanes:
            lane.subscriber.wake = self.wake
        self.slot_taken = False
        self._refreshed = time.monotonic()
        self._first = b""
        self._pages = self._catch_up()
        self._body: Iterator[bytes] | None = None
        self._released = False
        self._turn = 0  # the lane whose batches are taken first next time: each in turn

    def positions(self) -> tuple[Position, ...]:
        return tuple(lane.pos for lane in self.lanes)

    def start(self) -> None:
        """The first page of the catch-up, before the answer starts: a resume too broad to
        read in time is a 422 (which an EventSource does not retry), not a broken stream."""
        self._first = next(self._pages, b"")

    def __iter__(self) -> Iterator[bytes]:
        self._body = self._events()
        return self._body

    def close(self) -> None:
        """Called by the server when the response ends or the client is gone."""
        if self._body is not None:
            self._body.close()  # runs _events' finally, if it is still suspended
        self._release()

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        for lane in self.lanes:
            lane.poller.detach(lane.subscriber)
        if self.slot_taken:
            try:
                self.hub.slots.release(self.key_id, self.id)
            except redis.RedisError as exc:  # the slot lapses by itself
                log.warning("could not release a live tail's slot: %r", exc)

    # --- reading rows ----------------------------------------------------------------

    def _catch_up(self) -> Iterator[bytes]:
        for lane in self.lanes:
            if stopping.requested():
                return
            yield from self.pages_to(lane, lane.target)

    def pages_to(self, lane: Lane, target: Position) -> Iterator[bytes]:
        """The lane's matching rows after its `pos` up to `target`, read from PostgreSQL, as
        events, a page at a time; `pos` follows. In another incarnation than pos's: the
        rest of pos's, then the new one from its start."""
        if lane.pos.epoch != target.epoch:
            if not (yield from self._read(lane, lane.pos.epoch, None)):
                return
            lane.pos = Position(target.epoch, 0, 0)
        if target.entry > lane.pos.entry and (yield from self._read(lane, target.epoch, target.entry)):
            lane.pos = target

    def _read(self, lane: Lane, epoch: str, upto: tuple[int, int] | None) -> Iterator[bytes]:
        """Pages up to `upto` (None: to the end); returns False if it stopped before."""
        while True:
            # One pooled connection per page, given back before the page is sent: a slow
            # client must not hold a connection the queries need.
            with self.db.connection() as conn:
                stream = lane.poller.stream_id(conn, epoch)
                rows = (positions.rows_after(conn, stream, lane.pos.entry, upto, CATCH_UP_PAGE, filt=self.filt)
                        if stream is not None else [])
            if rows:
                yield self._send(lane, rows, epoch)
            if len(rows) < CATCH_UP_PAGE:
                return True
            if stopping.requested():
                return False
            self._keep_slot()  # a long catch-up must not let the slot lapse

    def _join(self, lane: Lane) -> Iterator[bytes]:
        """Catch up to the poller's position, then attach to it, without yielding between."""
        poller = lane.poller
        while not stopping.requested():
            current = poller.position
            if current is None:
                poller.attach(lane.subscriber, at=lane.target)  # starts it, at a watermark we hold
                return
            if current.epoch == lane.pos.epoch:
                if current.entry <= lane.pos.entry:
                    poller.attach(lane.subscriber, at=current)
                    return
            elif stored_up_to(self.client, lane.shard.stream, lane.shard.consumer_group).epoch != current.epoch:
                gevent.sleep(poller.interval)  # the poller has not seen our incarnation yet
                continue
            # (else the stream was replaced after we read W: the poller is right)
            yield from self.pages_to(lane, current)
            lane.target = current

    def _send(self, lane: Lane, rows: list[Stored], epoch: str) -> bytes:
        """The events of rows of one lane, after which the lane is at the last of them."""
        ids = self.ids.of_rows(self.positions(), self.lanes.index(lane), epoch)
        lane.pos = Position(epoch, *rows[-1].entry)
        self.sent = self.positions()
        return encode(rows, epoch, ids)

    # --- the stream ------------------------------------------------------------------

    def _events(self) -> Iterator[bytes]:
        heartbeat = self.settings.tail_heartbeat_seconds
        yield b"retry: %d\nid: %s\n\n" % (RECONNECT_MS, self.ids.text(self.started_at).encode())
        try:
            if self._first:
                yield self._first
            yield from self._pages
            for lane in self.lanes:
                yield from self._join(lane)
            last_write = time.monotonic()
            while not stopping.requested():
                now = time.monotonic()
                self._keep_slot()
                lane, item = self._pop()
                if item is None:
                    if any(lane.subscriber.stopped for lane in self.lanes):
                        break
                    if now - last_write >= heartbeat:
                        self._advance_to_pollers()
                        yield self._comment(b"keepalive")
                        last_write = time.monotonic()
                        continue
                    self.wake.clear()
                    self.wake.wait(last_write + heartbeat - now)
                    continue
                for chunk in self._take(lane, item):
                    yield chunk
                    last_write = time.monotonic()
            yield self._comment(b"shutting down: reconnect with Last-Event-ID to go on")
        except psycopg.errors.QueryCanceled:
            yield self._comment(b"catching up ran longer than QUERY_TIMEOUT_MS: reconnect with Last-Event-ID "
                                b"(a 422 says if it is still too broad)")
        except (redis.RedisError, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            log.warning("live tail ended: %r", exc)
            yield b"retry: %d\n" % (self.settings.retry_after * 1000) + self._comment(
                b"backend unavailable: reconnect with Last-Event-ID to go on")
        finally:
            self._release()

    def _pop(self) -> tuple[Lane, Rows | Gap | None]:
        """The next batch of a lane, the lanes in turn: a busy shard does not hold back the others."""
        count = len(self.lanes)
        for i in range(count):
            lane = self.lanes[(self._turn + i) % count]
            item = lane.subscriber.pop()
            if item is not None:
                self._turn = (self._turn + i + 1) % count
                return lane, item
        return self.lanes[0], None

    def _take(self, lane: Lane, item: Rows | Gap) -> Iterator[bytes]:
        if isinstance(item, Gap) or item.end.epoch != lane.pos.epoch:
            yield from self.pages_to(lane, item.end)
            return
        floor = lane.pos.entry
        rows = [row for row in item.rows if row.entry > floor and self.filt.matches(row.log)]
        chunk = self._send(lane, rows, lane.pos.epoch) if rows else b""
        lane.pos = max(lane.pos, item.end)
        if chunk:
            yield chunk

    def _advance_to_pollers(self) -> None:
        """With nothing waiting for a lane, everything up to its poller's position that could
        match has been sent: the position a heartbeat gives the client may move there."""
        for lane in self.lanes:
            current = lane.poller.position
            if current is not None and current.epoch == lane.pos.epoch and not lane.subscriber.items:
                lane.pos = max(lane.pos, current)

    def _comment(self, text: bytes) -> bytes:
        """A comment, with an id (no data: no event) when the position moved past the last
        one the client was given."""
        now = self.positions()
        moved = b"" if now == self.sent else b"id: %s\n" % self.ids.text(now).encode()
        self.sent = now
        return b": " + text + b"\n" + moved + b"\n"

    def _keep_slot(self) -> None:
        """Push the slot's lapse time on, once per heartbeat interval."""
        now = time.monotonic()
        if not self.slot_taken or now - self._refreshed < self.settings.tail_heartbeat_seconds:
            return
        self._refreshed = now
        try:
            self.hub.slots.refresh(self.key_id, self.id)
        except redis.RedisError as exc:  # it lasts two more heartbeats: the next refresh may succeed
            log.warning("could not refresh a live tail's slot: %r", exc)
