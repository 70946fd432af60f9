"""The drain against real Redis and PostgreSQL: exactly once, ack after commit."""

from __future__ import annotations

import dataclasses
import datetime as dt

from collector.pipeline import codec as stream
from collector.pipeline import counters, group, producer
from collector.pipeline.drain import drain_batch, read_batch
from collector.store import logs as storage
from collector.web.schemas import log_schema

SCHEMA = log_schema(10_000, 16_384)


def enqueue(redis_client, settings, n: int, device: str = "dev-1") -> list[str]:
    now = dt.datetime.now(dt.UTC)
    entries = [stream.encode_entry(SCHEMA.load({"device_id": device, "log_level": "INFO", "message": f"m{i}"}), now)
               for i in range(n)]
    return producer.append(redis_client, settings.stream, entries, counters.accepted_counter(settings))


def count(db) -> int:
    return db.execute("SELECT count(*) FROM logs").fetchone()[0]


def test_batches_are_capped_and_everything_is_stored_once(redis_client, settings, db):
    ids = enqueue(redis_client, settings, 250)
    results = [drain_batch(redis_client, db, settings, "c1") for _ in range(4)]
    assert [r.read for r in results] == [100, 100, 50, 0]
    assert [r.full for r in results] == [True, True, False, False]
    assert count(db) == 250
    stored = [row[0] for row in db.execute("SELECT stream_entry_id(received_at, entry_seq) FROM logs ORDER BY id")]
    assert stored == ids
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 0


def test_crash_between_commit_and_ack_stores_nothing_twice(redis_client, settings, db):
    enqueue(redis_client, settings, 30)
    # A worker reads and commits, then dies before XACK: the entries stay pending.
    batch = read_batch(redis_client, settings, "c1")
    storage.insert_logs(db, [stream.decode_entry(batch.stream, i, f) for i, f in batch.entries], writer="c1")
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 30

    # The restarted worker (same consumer name) reads its pending entries first.
    result = drain_batch(redis_client, db, settings, "c1")
    assert (result.read, result.inserted, result.duplicates, result.source) == (30, 0, 30, "own-pending")
    assert count(db) == 30
    assert db.execute("SELECT count(DISTINCT stream_entry_id(received_at, entry_seq)) FROM logs").fetchone()[0] == 30
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 0
    # The per-level totals counted each row once.
    assert db.execute("SELECT sum(n) FROM log_counts").fetchone()[0] == 30


def test_crash_before_commit_loses_nothing(redis_client, settings, db):
    enqueue(redis_client, settings, 10)
    read_batch(redis_client, settings, "c1")  # delivered, then the worker dies before inserting
    assert drain_batch(redis_client, db, settings, "c1").inserted == 10
    assert count(db) == 10


def test_group_is_recreated_when_redis_lost_it(redis_client, settings, db):
    enqueue(redis_client, settings, 5)
    redis_client.xgroup_destroy(settings.stream, settings.consumer_group)
    assert drain_batch(redis_client, db, settings, "c1").inserted == 5


def test_entries_added_before_the_group_existed_are_drained(redis_client, settings, db):
    fresh = dataclasses.replace(settings, consumer_group="late-group")
    enqueue(redis_client, fresh, 3)
    assert drain_batch(redis_client, db, fresh, "c1").inserted == 3


def test_idle_run_is_one_cheap_read(redis_client, settings, db):
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    result = drain_batch(redis_client, db, settings, "c1")
    assert (result.read, result.full) == (0, False)


def test_acknowledged_entries_are_not_trimmed_unconsumed(redis_client, settings, db):
    """Nothing in the ingest or drain path trims the stream (the seed's MAXLEN lost backlog)."""
    enqueue(redis_client, settings, 120)
    drain_batch(redis_client, db, settings, "c1")
    assert redis_client.xlen(settings.stream) == 120


def test_a_registered_consumer_is_visible_before_it_reads_anything(redis_client, settings):
    group.register_consumer(redis_client, settings.stream, settings.consumer_group, "worker-a-1")
    group.register_consumer(redis_client, settings.stream, settings.consumer_group, "worker-a-1")  # idempotent
    consumers = redis_client.xinfo_consumers(settings.stream, settings.consumer_group)
    assert [c["name"] for c in consumers] == [b"worker-a-1"]
