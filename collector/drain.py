"""Moving one batch from the stream into PostgreSQL: read, insert, commit, then ack.

The order is the delivery guarantee. Entries stay pending in the consumer
group until their rows are committed; only then are they acknowledged, in one
XACK. A crash anywhere before the XACK leaves them pending, and the next run
of the same consumer reads its pending entries first and re-inserts them,
which ON CONFLICT turns into no-ops: nothing is lost and nothing is stored twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
import redis

from collector import cache, storage
from collector.settings import Settings
from collector.stream import decode_entry, ensure_group

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrainResult:
    read: int
    inserted: int
    seconds: float
    full: bool  # a full batch means more entries are probably waiting

    @property
    def duplicates(self) -> int:
        return self.read - self.inserted


def read_batch(client: redis.Redis, settings: Settings, consumer: str) -> list[tuple[bytes, dict]]:
    """Up to BATCH_SIZE entries: this consumer's unacknowledged ones first, then new ones."""
    for start in ("0", ">"):
        try:
            reply = client.xreadgroup(
                settings.consumer_group, consumer, {settings.stream: start}, count=settings.batch_size
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # The stream or group is gone (a fresh or flushed Redis): recreate and read new entries.
            ensure_group(client, settings.stream, settings.consumer_group)
            continue
        entries = reply[0][1] if reply else []
        if entries:
            return entries
    return []


def drain_batch(
    client: redis.Redis, conn: psycopg.Connection, settings: Settings, consumer: str
) -> DrainResult:
    """Store one batch and acknowledge it; returns what was read and newly inserted."""
    started = time.perf_counter()
    entries = read_batch(client, settings, consumer)
    if not entries:
        return DrainResult(0, 0, time.perf_counter() - started, full=False)
    rows = [decode_entry(entry_id, fields) for entry_id, fields in entries]
    inserted = storage.insert_logs(conn, rows, writer=consumer)

    devices = {row[1] for row in rows}
    pipe = client.pipeline(transaction=False)
    cache.invalidate(pipe, settings.key_prefix, [cache.STATS_SCOPE, *map(cache.device_scope, devices)])
    pipe.xack(settings.stream, settings.consumer_group, *[entry_id for entry_id, _ in entries])
    pipe.execute()

    result = DrainResult(
        len(entries), sum(inserted.values()), time.perf_counter() - started,
        full=len(entries) >= settings.batch_size,
    )
    log.info(
        "drained batch",
        extra={"read": result.read, "inserted": result.inserted, "duplicates": result.duplicates,
               "seconds": round(result.seconds, 4), "consumer": consumer},
    )
    return result
