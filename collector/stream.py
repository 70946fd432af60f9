"""The Redis Stream between the API and the drain: entry codec, producer, group.

One stream entry per log, with short field names and values kept as text, so
the API does no JSON work beyond `log_data` and the drain hands the values to
PostgreSQL without decoding JSON at all. Adding never trims (the seed's MAXLEN
dropped backlog that had not been stored yet); only `trim_acknowledged` removes
entries, and only ones every consumer group has acknowledged.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Sequence

import redis

from collector import counters
from collector.settings import Settings

# Field names in the stream entry; short because every entry repeats them.
DEVICE, LEVEL, MESSAGE, DATA, CREATED, RECEIVED = b"d", b"l", b"m", b"j", b"t", b"r"

# The row a decoded entry becomes, in the column order of storage.INSERT_LOG.
Row = tuple[str, str, str, str, "str | None", str, str]


class MalformedEntry(ValueError):
    """A stream entry that is not one of ours (missing or undecodable fields)."""


def encode_entry(log: dict, received_at: dt.datetime) -> dict[bytes, bytes | str]:
    """Stream fields for one validated log (the output of schemas.log_schema().load)."""
    received = received_at.isoformat()
    timestamp = log.get("timestamp")
    fields: dict[bytes, bytes | str] = {
        DEVICE: log["device_id"],
        LEVEL: log["log_level"],
        MESSAGE: log["message"],
        CREATED: timestamp.isoformat() if timestamp is not None else received,
        RECEIVED: received,
    }
    if log.get("log_data") is not None:
        fields[DATA] = log["log_data"]  # already compact JSON bytes
    return fields


def decode_entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Row:
    """The `logs` row for one stream entry; raises MalformedEntry if it is not ours."""
    try:
        data = fields.get(DATA)
        return (
            entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            fields[DEVICE].decode(),
            fields[LEVEL].decode(),
            fields[MESSAGE].decode(),
            data.decode() if data is not None else None,
            fields[CREATED].decode(),
            fields[RECEIVED].decode(),
        )
    except (KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise MalformedEntry(f"entry {entry_id!r}: {exc!r}") from None


def append(client: redis.Redis, settings: Settings, entries: Sequence[dict]) -> list[str]:
    """XADD each entry and count them as accepted, in one round trip; returns the ids in order.

    MULTI/EXEC makes the batch all-or-nothing: if Redis refuses (out of memory), no
    entry is added, so a client that retries after our 503 cannot create duplicates.
    """
    return _append_groups(client, settings, [entries])[0]


def _append_groups(client: redis.Redis, settings: Settings, groups: Sequence[Sequence[dict]]) -> list[list[str]]:
    pipe = client.pipeline(transaction=True)
    total = 0
    for entries in groups:
        for fields in entries:
            pipe.xadd(settings.stream, fields)
        total += len(entries)
    counters.add_accepted(pipe, settings, total)
    ids = [entry_id.decode() for entry_id in pipe.execute()[:total]]
    out, start = [], 0
    for entries in groups:
        out.append(ids[start:start + len(entries)])
        start += len(entries)
    return out


class _Waiter:
    __slots__ = ("entries", "nbytes", "done", "ids", "error", "lead")

    def __init__(self, entries: Sequence[dict], nbytes: int) -> None:
        self.entries, self.nbytes, self.done = entries, nbytes, threading.Event()
        self.ids: list[str] | None = None
        self.error: BaseException | None = None
        self.lead = False


class Appender:
    """`append` for one API process, sharing round trips between concurrent requests.

    While one request's MULTI/EXEC is on the wire, the requests that arrive queue
    up; when it returns, the first of them sends everything queued in one
    MULTI/EXEC and the others wait for its answer. Alone, a request goes straight
    out (no added latency); under load, Redis sees a fraction of the round trips
    and each process saves the socket and redis-py work they cost, the largest
    part of ingest's CPU (see docs/performance.md). A group is all-or-nothing, so
    every request in it gets either its ids or the same error (503). Groups are
    capped (entries and request bytes) so one transaction stays small and quick.
    """

    def __init__(self, client: redis.Redis, settings: Settings, max_entries: int = 2000,
                 max_bytes: int = 4 * 1024 * 1024) -> None:
        self.client, self.settings = client, settings
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False

    def append(self, entries: Sequence[dict], nbytes: int = 0) -> list[str]:
        me = _Waiter(entries, nbytes)
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
        if not me.lead:
            try:
                me.done.wait()
            except BaseException:  # this request was killed while queued: leave no trace
                self._abandon(me)
                raise
        if me.lead:
            self._send_queued()
        if me.error is not None:
            raise me.error
        return me.ids

    def _abandon(self, me: _Waiter) -> None:
        with self._lock:
            if me in self._queue:
                self._queue.remove(me)
            if me.lead:  # promoted as it died: pass the turn on
                self._hand_over()

    def _hand_over(self) -> None:
        """With the lock held: wake the next queued request to send, or go idle."""
        if self._queue:
            self._queue[0].lead = True
            self._queue[0].done.set()
        else:
            self._busy = False

    def _send_queued(self) -> None:
        group: list[_Waiter] = []
        try:
            with self._lock:
                entries = nbytes = 0
                while self._queue:
                    head = self._queue[0]
                    if group and (entries + len(head.entries) > self.max_entries
                                  or nbytes + head.nbytes > self.max_bytes):
                        break
                    group.append(self._queue.pop(0))
                    entries, nbytes = entries + len(head.entries), nbytes + head.nbytes
            try:
                results = _append_groups(self.client, self.settings, [w.entries for w in group])
                for waiter, ids in zip(group, results, strict=True):
                    waiter.ids = ids
            except Exception as exc:  # every request of the group gets the error (and answers 503)
                for waiter in group:
                    waiter.error = exc
        finally:
            for waiter in group:
                if waiter.ids is None and waiter.error is None:  # the sender itself was killed
                    waiter.error = redis.ConnectionError("interrupted while sending to Redis")
            with self._lock:
                self._hand_over()
            for waiter in group:
                waiter.done.set()


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) unless it exists; safe to call often.

    The group starts at id 0 so entries added before it existed are still drained.
    """
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def register_consumer(client: redis.Redis, stream: str, group: str, consumer: str) -> None:
    """Make a consumer visible in XINFO CONSUMERS before it has read anything (Redis
    only creates consumers that receive entries), so operators and the bench can see
    which drain processes are alive on an empty stream."""
    ensure_group(client, stream, group)
    client.xgroup_createconsumer(stream, group, consumer)


def _group_figures(length: int, groups: list, group: str) -> dict:
    info = next((g for g in groups if g["name"].decode() == group), None)
    if info is None:  # no consumer group yet: nothing delivered
        return {"stream_length": length, "pending": 0, "lag": length}
    return {"stream_length": length, "pending": info["pending"], "lag": info.get("lag")}


def _read_figures(client: redis.Redis, stream: str, group: str, memory: bool) -> tuple[dict, dict | None]:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    if memory:
        pipe.info("memory")
    length, groups, *info = pipe.execute(raise_on_error=False)
    for reply in (length, *info):
        if isinstance(reply, Exception):
            raise reply
    if isinstance(groups, Exception):  # no stream yet
        groups = []
    return _group_figures(length, groups, group), (info[0] if info else None)


def pipeline_stats(client: redis.Redis, stream: str, group: str) -> dict:
    """Stream length, entries delivered but not acknowledged (pending), and entries
    not yet delivered to the group (lag; None when Redis cannot tell), in one round trip."""
    return _read_figures(client, stream, group, memory=False)[0]


def backlog_and_memory(client: redis.Redis, stream: str, group: str) -> tuple[int, float]:
    """(entries not yet stored, used_memory / maxmemory or 0.0 when unbounded), one round trip."""
    figures, memory = _read_figures(client, stream, group, memory=True)
    if figures["lag"] is None:  # Redis cannot tell (entries deleted mid-stream): be conservative
        backlog = figures["stream_length"]
    else:
        backlog = figures["lag"] + figures["pending"]
    maxmemory = memory.get("maxmemory", 0)
    return backlog, (memory["used_memory"] / maxmemory) if maxmemory else 0.0


def trim_acknowledged(client: redis.Redis, stream: str) -> int:
    """Drop entries every consumer group has acknowledged; returns how many went.

    The cut (MINID) is the oldest entry some group still needs: its oldest pending
    entry, or the first one it has not been delivered yet. Entries below it were
    delivered and acknowledged, and cannot become unacknowledged again, so this
    never removes anything not yet stored. Approximate trimming (~) only ever
    removes less, and costs much less.
    """
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return 0  # no stream yet
    if not groups:
        return 0  # nobody consumes yet: keep everything
    cuts = []
    for group in groups:
        pending = client.xpending(stream, group["name"])
        if pending["pending"]:
            cuts.append(_parse_id(pending["min"]))
        else:
            ms, seq = _parse_id(group["last-delivered-id"])
            cuts.append((ms, seq + 1))
    ms, seq = min(cuts)
    # limit=0: without it Redis stops an approximate trim after 10,000 entries, which
    # falls behind any ingest faster than 10,000 entries per TRIM_INTERVAL.
    return client.xtrim(stream, minid=f"{ms}-{seq}", approximate=True, limit=0)


def _parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
