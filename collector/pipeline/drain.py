"""Moving one batch from the stream into PostgreSQL: read, store, commit, then ack.

The order is the delivery guarantee. Entries stay pending in the consumer
group until their rows are committed (or their dead letters are); only then
are they acknowledged, in one XACK. A crash anywhere before the XACK leaves
them pending: the same consumer reads its pending entries first when it comes
back, and a live worker reclaims those of a consumer that never comes back
(XAUTOCLAIM). Re-inserting them is harmless, because ON CONFLICT on the entry's
identity (its stream's key and incarnation, and its id: group.stream_identity)
turns it into a no-op. So nothing is lost and nothing is stored twice.

Nothing is dropped silently either: an entry that is not ours, that PostgreSQL
rejects, or that keeps being delivered without ever being stored goes to the
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
from collector.pipeline import cache, counters
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


# Entries delivered this often without being stored may be what kills workers: they
# are then taken one at a time, so only the culprit's delivery count climbs to
# MAX_DELIVERIES and the rest of its batch is stored.
SUSPECT_AFTER = 3


def suspect_after(settings: Settings) -> int:
    """Below MAX_DELIVERIES, so that innocent entries get one delivery of their own."""
    return max(1, min(SUSPECT_AFTER, settings.max_deliveries - 1))


class Batch(NamedTuple):
    entries: list[Entry]
    source: str  # new | own-pending | reclaimed
    stream: str  # the entries' stream identity (group.stream_identity); "" when there are none


def _read_with_identity(client: redis.Redis, settings: Settings,
                        queue_read: Callable[[redis.client.Pipeline], object]) -> tuple[object, str]:
    """Run one read command in a MULTI with the stream's epoch, so the entries and the
    identity they are stored under come from the same Redis, whatever replaces it when."""
    pipe = client.pipeline(transaction=True)
    pipe.get(epoch_key(settings.stream))
    queue_read(pipe)
    epoch, reply = pipe.execute(raise_on_error=False)
    if isinstance(epoch, Exception):
        raise epoch
    return reply, stream_identity(client, settings.stream, epoch)


def _xreadgroup(client: redis.Redis, settings: Settings, consumer: str, start: str,
                count: int | None = None) -> tuple[list[Entry], str]:
    reply, identity = _read_with_identity(client, settings, lambda pipe: pipe.xreadgroup(
        settings.consumer_group, consumer, {settings.stream: start}, count=count or settings.batch_size))
    if isinstance(reply, redis.ResponseError) and "NOGROUP" in str(reply):
        # The stream or group is gone (a fresh or flushed Redis): recreate it; nothing to read yet.
        ensure_group(client, settings.stream, settings.consumer_group)
        return [], identity
    if isinstance(reply, Exception):
        raise reply
    entries = reply[0][1] if reply else []
    _ack_vanished(client, settings, [entry_id for entry_id, fields in entries if fields is None])
    return [(entry_id, fields) for entry_id, fields in entries if fields is not None], identity


def _ack_vanished(client: redis.Redis, settings: Settings, ids: list[bytes]) -> None:
    """Pending ids whose entries no longer exist (deleted outside the collector): nothing
    is left to store, so say so loudly and stop redelivering them."""
    if ids:
        log.error("pending entries were deleted from the stream before being stored",
                  extra={"ids": [i.decode() for i in ids]})
        client.xack(settings.stream, settings.consumer_group, *ids)


def _reclaim(client: redis.Redis, settings: Settings, consumer: str) -> tuple[list[Entry], str]:
    """Entries idle too long on another consumer (a worker that died): take them over."""
    reply, identity = _read_with_identity(client, settings, lambda pipe: pipe.xautoclaim(
        settings.stream, settings.consumer_group, consumer,
        min_idle_time=int(settings.claim_idle_seconds * 1000), start_id="0-0", count=settings.batch_size))
    if isinstance(reply, redis.ResponseError) and "NOGROUP" in str(reply):
        return [], identity
    if isinstance(reply, Exception):
        raise reply
    _, entries, deleted = reply
    _ack_vanished(client, settings, list(deleted))
    return [(entry_id, fields) for entry_id, fields in entries if fields is not None], identity


def _own_pending(client: redis.Redis, settings: Settings, consumer: str) -> tuple[list[Entry], str]:
    """This consumer's delivered but unacknowledged entries (left by a crash or a failed run)."""
    try:
        pending = client.xpending_range(settings.stream, settings.consumer_group, min="-", max="+",
                                        count=settings.batch_size, consumername=consumer)
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        # The stream or group is gone (a fresh or flushed Redis): recreate it.
        ensure_group(client, settings.stream, settings.consumer_group)
        return [], ""
    if not pending:
        return [], ""
    suspect = max(p["times_delivered"] for p in pending) >= suspect_after(settings)
    return _xreadgroup(client, settings, consumer, "0", count=1 if suspect else len(pending))


def read_batch(client: redis.Redis, settings: Settings, consumer: str) -> Batch:
    """Up to BATCH_SIZE entries, from the first source that has any: this consumer's
    unacknowledged entries, entries reclaimed from dead consumers, then new entries."""
    entries, identity = _own_pending(client, settings, consumer)
    if entries:
        return Batch(entries, "own-pending", identity)
    entries, identity = _reclaim(client, settings, consumer)
    if entries:
        return Batch(entries, "reclaimed", identity)
    entries, identity = _xreadgroup(client, settings, consumer, ">")
    return Batch(entries, "new", identity if entries else "")


def _delivery_counts(client: redis.Redis, settings: Settings, consumer: str, entries: list[Entry]) -> dict:
    pending = client.xpending_range(settings.stream, settings.consumer_group, min=entries[0][0],
                                    max=entries[-1][0], count=len(entries), consumername=consumer)
    return {p["message_id"]: p["times_delivered"] for p in pending}


def drain_batch(
    client: redis.Redis, conn: psycopg.Connection, settings: Settings, consumer: str
) -> DrainResult:
    """Store one batch and acknowledge it; returns what was read, inserted and dead-lettered."""
    started = time.perf_counter()
    entries, source, stream = read_batch(client, settings, consumer)
    if not entries:
        return DrainResult(0, 0, 0, time.perf_counter() - started, full=False, source=source)

    deliveries = _delivery_counts(client, settings, consumer, entries) if source != "new" else {}
    if source == "reclaimed" and max(deliveries.values(), default=1) >= suspect_after(settings):
        entries = entries[:1]  # the rest are ours now, and will be read one at a time
    overdue = [entry_id.decode() for entry_id, _ in entries if deliveries.get(entry_id, 1) > settings.max_deliveries]
    # Rows committed before an XACK that never happened are not poison, just unacknowledged.
    already_stored = storage.stored_stream_ids(conn, stream, overdue) if overdue else set()
    letters: list[tuple[str, dict, str, int]] = []
    rows, fields_by_id = [], {}
    for entry_id, fields in entries:
        count = deliveries.get(entry_id, 1)
        if count > settings.max_deliveries and entry_id.decode() not in already_stored:
            letters.append((entry_id.decode(), payload_of(fields),
                            f"delivered {count} times without being stored (max {settings.max_deliveries})", count))
            continue
        try:
            rows.append(decode_entry(stream, entry_id, fields))
            fields_by_id[rows[-1][1]] = fields
        except MalformedEntry as exc:
            letters.append((entry_id.decode(), payload_of(fields), f"malformed entry: {exc}", count))

    outcome = storage.store_rows(conn, rows, writer=consumer)
    for row, error in outcome.rejected:
        letters.append((row[1], payload_of(fields_by_id[row[1]]), f"rejected by PostgreSQL: {error}",
                        deliveries.get(row[1].encode(), 1)))
    if letters:
        deadletters.add(conn, stream, letters)
        log.warning("dead-lettered entries", extra={"entries": [(i, reason) for i, _, reason, _ in letters]})

    inserted = sum(outcome.inserted.values())
    devices = {row[2] for row in rows}
    # MULTI/EXEC: if Redis refuses the cache bumps (out of memory), it refuses the XACK
    # too, so the entries stay pending and the caches can never be left stale.
    pipe = client.pipeline(transaction=True)
    cache.invalidate(pipe, settings.key_prefix, [cache.STATS_SCOPE, *map(cache.device_scope, devices)])
    counters.add_drained(pipe, settings, duplicates=len(rows) - inserted - len(outcome.rejected))
    pipe.xack(settings.stream, settings.consumer_group, *[entry_id for entry_id, _ in entries])
    pipe.execute()

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
