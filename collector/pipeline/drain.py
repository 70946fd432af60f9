"""Moving one batch from the stream into PostgreSQL: read, store, commit, then ack.

The order is the delivery guarantee. Entries stay pending in the consumer
group until their rows are committed (or their dead letters are); only then
are they acknowledged, in one XACK. A crash anywhere before the XACK leaves
them pending: the same consumer reads its pending entries first when it comes
back, and a live worker reclaims those of a consumer whose lease lapsed
(consumers.py). Re-inserting them is harmless, because ON CONFLICT on the entry's
identity (its stream's key and incarnation, and its id: group.stream_identity)
turns it into a no-op. So nothing is lost and nothing is stored twice.

Nothing is dropped silently either: an entry that is not ours, that PostgreSQL
rejects, or that keeps killing the workers that take it goes to the
dead_letters table with the reason, and is acknowledged only once it is there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import psycopg
import redis

from collector.core import metrics
from collector.core.settings import Settings
from collector.pipeline import cache, consumers, counters
from collector.pipeline.codec import MalformedEntry, decode_entry, payload_of
from collector.pipeline.group import ensure_group, epoch_key, stream_identity
from collector.store import deadletters
from collector.store import logs as storage

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict]


@dataclass(frozen=True)
class DrainResult:
    read: int
    inserted: int
    dead_lettered: int
    seconds: float
    full: bool  # a full batch means more entries are probably waiting
    source: str = "new"  # new | own-pending | reclaimed

    @property
    def duplicates(self) -> int:
        return self.read - self.inserted - self.dead_lettered


# Entries that this many workers died holding may be what kills them: they are then
# taken one at a time, so only the culprit's deaths climb to MAX_DELIVERIES and the
# rest of its batch is stored.
SUSPECT_AFTER = 3


def suspect_after(settings: Settings) -> int:
    """Below MAX_DELIVERIES, so that innocent entries get one delivery of their own."""
    return max(1, min(SUSPECT_AFTER, settings.max_deliveries - 1))


class Batch(NamedTuple):
    entries: list[Entry]
    source: str  # new | own-pending | reclaimed
    stream: str  # the entries' stream identity (group.stream_identity); "" when there are none
    deaths: dict[bytes, int] = {}  # workers that died holding each entry (consumers.py); absent: none


def _read_with_identity(client: redis.Redis, settings: Settings,
                        queue_read: Callable[[redis.client.Pipeline], object]) -> tuple[list, str]:
    """Run read commands in one pipeline with the reading of the stream's epoch, so the
    entries and the identity they are stored under come from the same Redis, whatever
    replaces it when: a pipeline goes over one connection, and a retry resends all of it.
    Not a MULTI: at maxmemory Redis refuses every command queued in a MULTI, and the
    drain, which frees memory, must go on then."""
    pipe = client.pipeline(transaction=False)
    pipe.get(epoch_key(settings.stream))
    queue_read(pipe)
    epoch, *replies = pipe.execute(raise_on_error=False)
    if isinstance(epoch, Exception):
        raise epoch
    return replies, stream_identity(client, settings.stream, epoch)


def _new_entries(client: redis.Redis, settings: Settings, consumer: str) -> tuple[list[Entry], str]:
    [reply], identity = _read_with_identity(client, settings, lambda pipe: pipe.xreadgroup(
        settings.consumer_group, consumer, {settings.stream: ">"}, count=settings.batch_size))
    if isinstance(reply, redis.ResponseError) and "NOGROUP" in str(reply):
        # The stream or group is gone (a fresh or flushed Redis): recreate it; nothing to read yet.
        ensure_group(client, settings.stream, settings.consumer_group)
        return [], identity
    if isinstance(reply, Exception):
        raise reply
    return (reply[0][1] if reply else []), identity


def _ack_vanished(client: redis.Redis, settings: Settings, ids: list[bytes]) -> None:
    """Pending ids whose entries no longer exist (deleted outside the collector): nothing
    is left to store, so say so loudly and stop redelivering them."""
    if ids:
        log.error("pending entries were deleted from the stream before being stored",
                  extra={"ids": [i.decode() for i in ids]})
        client.xack(settings.stream, settings.consumer_group, *ids)


def _reclaim(client: redis.Redis, settings: Settings, consumer: str) -> Batch:
    """Entries pending on a consumer whose lease lapsed (a dead process): take them over,
    with the deaths its in-flight marker proves (consumers.py)."""
    stream = settings.stream
    try:
        epoch, dead, *claimed = consumers.reclaim_script(client)(
            keys=[stream, epoch_key(stream), consumers.deaths_key(stream)],
            args=[settings.consumer_group, consumer, settings.batch_size, consumers.lease_key(stream, ""),
                  consumers.marker_key(stream, "")])
    except redis.exceptions.OutOfMemoryError as exc:  # counting a death is a write: after the drain frees memory
        log.warning("reclaim postponed, Redis is at maxmemory: %s", exc)
        return Batch([], "reclaimed", "")
    if not dead:
        return Batch([], "reclaimed", "")
    raw, ids, deaths = claimed
    # A script's reply is raw RESP: fields come as one flat [name, value, ...] list.
    entries = [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True))) for entry_id, flat in raw]
    found = {entry_id for entry_id, _ in entries}
    # XCLAIM drops the ids of deleted entries from the group by itself: just say so.
    if vanished := [i for i in ids if i not in found]:
        log.error("pending entries were deleted from the stream before being stored",
                  extra={"ids": [i.decode() for i in vanished]})
    log.warning("reclaimed the entries of a consumer whose lease lapsed",
                extra={"from": dead.decode(), "entries": len(entries), "consumer": consumer})
    return Batch(entries, "reclaimed", stream_identity(client, stream, epoch or None),
                 {i: int(n) for i, n in zip(ids, deaths, strict=True) if n is not None})


def _own_pending(client: redis.Redis, settings: Settings, consumer: str) -> Batch:
    """This consumer's delivered but unacknowledged entries (left by a failed run, or by a
    predecessor under this name that died), re-read without counting a delivery."""
    stream = settings.stream
    pipe = client.pipeline(transaction=False)
    pipe.xpending_range(stream, settings.consumer_group, min="-", max="+", count=settings.batch_size,
                        consumername=consumer)
    pipe.get(consumers.marker_key(stream, consumer))
    pending, marker = pipe.execute(raise_on_error=False)
    if isinstance(pending, redis.ResponseError) and "NOGROUP" in str(pending):
        # The stream or group is gone (a fresh or flushed Redis): recreate it.
        ensure_group(client, stream, settings.consumer_group)
        return Batch([], "own-pending", "")
    for reply in (pending, marker):
        if isinstance(reply, Exception):
            raise reply
    if not pending:
        return Batch([], "own-pending", "")
    ids = [p["message_id"] for p in pending]
    consumers.bury_predecessor(client, stream, consumer, marker, ids)
    deaths = consumers.deaths(client, stream, ids)
    if max(deaths.values(), default=0) >= suspect_after(settings):
        ids = ids[:1]
    replies, identity = _read_with_identity(
        client, settings, lambda pipe: [pipe.xrange(stream, min=i, max=i) for i in ids])
    entries = []
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
        entries += reply
    _ack_vanished(client, settings, [i for i, reply in zip(ids, replies, strict=True) if not reply])
    return Batch(entries, "own-pending", identity, deaths)


def read_batch(client: redis.Redis, settings: Settings, consumer: str, fresh_only: bool = False) -> Batch:
    """Up to BATCH_SIZE entries, from the first source that has any: this consumer's
    unacknowledged entries, entries reclaimed from dead consumers, then new entries.
    `fresh_only` skips the first two, for a run that follows one of new entries that
    was acknowledged whole: this consumer then holds nothing, and dead consumers wait
    for the next task's first run (drain_for), at most DRAIN_TASK_SECONDS."""
    if not fresh_only:
        batch = _own_pending(client, settings, consumer)
        if batch.entries:
            return batch
        batch = _reclaim(client, settings, consumer)
        if batch.entries:
            return batch
    entries, identity = _new_entries(client, settings, consumer)
    return Batch(entries, "new", identity if entries else "")


def _commit_lsn(conn: psycopg.Connection, settings: Settings) -> int | None:
    """With a read replica: the primary's WAL position, read after this run's commits on
    their connection, for the cache's freshness fence (collector.pipeline.cache); else None
    and no statement at all."""
    if not settings.read_replica:
        return None
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def _acknowledge(client: redis.Redis, settings: Settings, ids: list[bytes], scopes: list[str],
                 duplicates: int, forget: list[bytes], cache_client: redis.Redis | None,
                 lsn: int | None = None) -> None:
    """Invalidate the cached reads of what was stored, XACK, then the bookkeeping (the
    duplicates counter, the deaths of entries now acknowledged): one round trip when the
    cache is on the stream's Redis.

    Invalidation comes first, so a log is in the next query once its entry is
    acknowledged. Not a MULTI: each command stands alone, so neither cache trouble nor
    a Redis at maxmemory (which refuses HINCRBY but still runs DEL and XACK) can hold up
    the acknowledgement; only the XACK's own failure is raised. `lsn` (a read replica
    only) raises the scopes' freshness fences before their versions go."""
    if cache_client is not None and cache_client is not client:
        cache.invalidate(cache_client, settings.key_prefix, scopes, lsn)
        scopes = []
    pipe = client.pipeline(transaction=False)
    queued = cache.queue_invalidate(pipe, settings.key_prefix, scopes, lsn)
    pipe.xack(settings.stream, settings.consumer_group, *ids)
    counters.add_drained(pipe, settings, duplicates=duplicates)
    if forget:
        pipe.hdel(consumers.deaths_key(settings.stream), *forget)
    replies = pipe.execute(raise_on_error=False)
    acked = replies[queued]
    if isinstance(acked, Exception):
        raise acked
    for reply in replies:
        if isinstance(reply, Exception) and reply is not acked:
            log.warning("drain bookkeeping skipped after the XACK: %s", reply)


def drain_batch(
    client: redis.Redis, conn: psycopg.Connection, settings: Settings, consumer: str,
    cache_client: redis.Redis | None = None, fresh_only: bool = False,
) -> DrainResult:
    """Store one batch and acknowledge it; returns what was read, inserted and dead-lettered.
    `cache_client` is the query cache's Redis when it is not `client` (CACHE_REDIS_URL);
    `fresh_only`: see read_batch."""
    started = time.perf_counter()
    batch = read_batch(client, settings, consumer, fresh_only)
    entries, source, stream = batch.entries, batch.source, batch.stream
    if not entries:
        return DrainResult(0, 0, 0, time.perf_counter() - started, full=False, source=source)

    ids = [entry_id for entry_id, _ in entries]
    deaths = batch.deaths
    if source == "reclaimed" and max(deaths.values(), default=0) >= suspect_after(settings):
        entries, ids = entries[:1], ids[:1]  # the rest are ours now, and will be read one at a time
    consumers.mark_in_flight(client, settings.stream, consumer, ids)
    overdue = [entry_id.decode() for entry_id in ids if deaths.get(entry_id, 0) >= settings.max_deliveries]
    # Rows committed before an XACK that never happened are not poison, just unacknowledged.
    already_stored = storage.stored_stream_ids(conn, stream, overdue) if overdue else set()
    letters: list[tuple[str, dict, str, int]] = []
    rows, fields_by_id = [], {}
    for entry_id, fields in entries:
        died = deaths.get(entry_id, 0)
        if died >= settings.max_deliveries and entry_id.decode() not in already_stored:
            letters.append((entry_id.decode(), payload_of(fields),
                            f"{died} workers died while storing it (MAX_DELIVERIES {settings.max_deliveries})",
                            died + 1))
            continue
        try:
            rows.append(decode_entry(stream, entry_id, fields))
            fields_by_id[rows[-1][1]] = fields
        except MalformedEntry as exc:
            letters.append((entry_id.decode(), payload_of(fields), f"malformed entry: {exc}", died + 1))

    outcome = storage.store_rows(conn, rows, writer=consumer)
    for row, error in outcome.rejected:
        letters.append((row[1], payload_of(fields_by_id[row[1]]), f"rejected by PostgreSQL: {error}",
                        deaths.get(row[1].encode(), 0) + 1))
    if letters:
        deadletters.add(conn, stream, letters)
        log.warning("dead-lettered entries", extra={"entries": [(i, reason) for i, _, reason, _ in letters]})

    inserted = sum(outcome.inserted.values())
    devices = {row[2] for row in rows}
    _acknowledge(client, settings, ids, [cache.STATS_SCOPE, *map(cache.device_scope, devices)],
                 duplicates=len(rows) - inserted - len(outcome.rejected), forget=[i for i in ids if i in deaths],
                 cache_client=cache_client, lsn=_commit_lsn(conn, settings))

    result = DrainResult(len(entries), inserted, len(letters), time.perf_counter() - started,
                         # recovering: go on at once rather than one entry per tick
                         full=len(entries) >= settings.batch_size or source != "new", source=source)
    metrics.LOGS_PERSISTED.inc(result.inserted)
    metrics.LOGS_DUPLICATE.inc(result.duplicates)
    metrics.LOGS_DEAD_LETTERED.inc(result.dead_lettered)
    metrics.BATCH_SECONDS.observe(result.seconds)
    metrics.BATCH_SIZE.observe(result.read)
    log.info("drained batch", extra={
        "read": result.read, "inserted": result.inserted, "duplicates": result.duplicates,
        "dead_lettered": result.dead_lettered, "source": source, "seconds": round(result.seconds, 4),
        "consumer": consumer})
    return result


def drain_for(client: redis.Redis, conn: psycopg.Connection, settings: Settings, consumer: str,
              cache_client: redis.Redis | None = None) -> list[DrainResult]:
    """Consecutive drain_batch runs, each its own read of at most BATCH_SIZE entries, its
    own transaction and its own XACK, while runs come back full and DRAIN_TASK_SECONDS
    have not passed; returns each run's result (the last says whether more is waiting).

    A task per run paid Celery's per-task work on every run; carrying many runs per task
    cut the drain's CPU per log by about a quarter (docs/performance.md). A crash still
    interrupts only the run in progress, whose entries stay pending like any other's."""
    deadline = time.monotonic() + settings.drain_task_seconds
    results = [drain_batch(client, conn, settings, consumer, cache_client)]
    while results[-1].full and time.monotonic() < deadline:
        results.append(drain_batch(client, conn, settings, consumer, cache_client,
                                   fresh_only=results[-1].source == "new"))
    return results
