"""The identity of a stored entry is (stream, stream id), the stream naming its key
and its incarnation: entry ids repeat across streams and across Redis servers."""

from __future__ import annotations

import dataclasses
import datetime as dt

from collector.pipeline import codec, group
from collector.pipeline.drain import drain_batch
from collector.store import logs as storage
from collector.web.schemas import log_schema

SCHEMA = log_schema(10_000, 16_384)
SAME_ID = "1700000000000-0"


def add_with_id(client, settings, entry_id: str, message: str) -> None:
    """XADD with an explicit id: what the clocks of two streams or of a replacement Redis do by chance."""
    log = SCHEMA.load({"device_id": "dev-1", "log_level": "INFO", "message": message})
    client.xadd(settings.stream, codec.encode_entry(log, dt.datetime.now(dt.UTC)), id=entry_id)


def messages(db) -> list[tuple[str, str, str]]:
    return db.execute("SELECT s.name, stream_entry_id(received_at, entry_seq), message"
                      " FROM logs JOIN log_streams s ON s.id = logs.stream ORDER BY message").fetchall()


def drain_all(client, db, settings) -> list:
    return [drain_batch(client, db, settings, "c1") for _ in range(3)]


def test_two_stacks_with_different_prefixes_store_the_same_entry_id_twice(redis_client, settings, db):
    stack_a = dataclasses.replace(settings, key_prefix=f"{settings.key_prefix}a:")
    stack_b = dataclasses.replace(settings, key_prefix=f"{settings.key_prefix}b:")
    for stack, message in ((stack_a, "from a"), (stack_b, "from b")):
        group.ensure_group(redis_client, stack.stream, stack.consumer_group)
        add_with_id(redis_client, stack, SAME_ID, message)
    results = drain_all(redis_client, db, stack_a) + drain_all(redis_client, db, stack_b)

    stored = messages(db)
    assert [m for _, _, m in stored] == ["from a", "from b"]
    assert {stream_id for _, stream_id, _ in stored} == {SAME_ID}
    assert stored[0][0].startswith(stack_a.stream + "#") and stored[1][0].startswith(stack_b.stream + "#")
    assert sum(r.duplicates for r in results) == 0


def test_a_replacement_redis_whose_clock_is_behind_does_not_lose_logs(redis_client, settings, db):
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    add_with_id(redis_client, settings, SAME_ID, "before the replacement")
    drain_all(redis_client, db, settings)
    # A new, empty Redis: the stream, its group and its epoch are gone; its clock is behind
    # and hands out an id the old one already used.
    redis_client.delete(settings.stream, group.epoch_key(settings.stream))
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    add_with_id(redis_client, settings, SAME_ID, "after the replacement")
    results = drain_all(redis_client, db, settings)

    stored = messages(db)
    assert [m for _, _, m in stored] == ["after the replacement", "before the replacement"]
    assert stored[0][0] != stored[1][0]  # two incarnations of one stream key
    assert sum(r.duplicates for r in results) == 0


def test_a_redelivered_entry_of_the_same_incarnation_is_still_stored_once(redis_client, settings, db):
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    add_with_id(redis_client, settings, SAME_ID, "once")
    [entry] = redis_client.xrange(settings.stream)
    identity = group.stream_identity(redis_client, settings.stream, redis_client.get(group.epoch_key(settings.stream)))
    storage.insert_logs(db, [codec.decode_entry(identity, *entry)], writer="c1")  # stored, never acknowledged
    results = drain_all(redis_client, db, settings)
    assert [m for _, _, m in messages(db)] == ["once"]
    assert sum(r.duplicates for r in results) == 1


def test_a_stream_without_an_epoch_gets_one_that_stays(redis_client, settings):
    redis_client.xadd(settings.stream, {b"x": b"1"})  # made by XADD alone, as ingest does before any drain
    first = group.stream_identity(redis_client, settings.stream, None)
    again = group.stream_identity(redis_client, settings.stream, redis_client.get(group.epoch_key(settings.stream)))
    assert first == again and first.startswith(settings.stream + "#")
