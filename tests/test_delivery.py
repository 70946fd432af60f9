"""Delivery guarantees in-process against the real servers: poison, reclaim, dead
letters and replay, back-pressure, trimming, and the accounting that ties them."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt

from collector.devtools.processes import wait_until
from collector.pipeline import codec as stream
from collector.pipeline import consumers, counters, group, producer, trim
from collector.pipeline.drain import drain_batch, read_batch
from collector.pipeline.replay import ReplayResult, replay
from collector.store import logs as storage
from tests.test_drain import enqueue


def good_fields(i: int, **changes) -> dict:
    fields = {b"d": b"dev-1", b"l": b"INFO", b"m": f"m{i}".encode(), b"t": b"2026-01-01T00:00:00+00:00",
              b"r": b"2026-01-01T00:00:00+00:00"}
    fields.update(changes)
    return fields


# More drain runs than any test here needs to empty its stream: a bound, so a drain that
# never finishes fails the test instead of hanging it.
MAX_RUNS = 1_000


def drain_all(redis_client, db, settings, consumer="c1"):
    """Drain runs until one reads less than a full batch; the results of each."""
    results = []
    for _ in range(MAX_RUNS):
        result = drain_batch(redis_client, db, settings, consumer)
        results.append(result)
        if not result.full:
            return results
    raise AssertionError(f"the stream was still giving full batches after {MAX_RUNS} drain runs")


def drain_until_nothing_read(redis_client, db, settings, consumer="c1"):
    """Drain runs until one reads nothing (own pending entries come back one at a time)."""
    for _ in range(MAX_RUNS):
        if not drain_batch(redis_client, db, settings, consumer).read:
            return
    raise AssertionError(f"drain runs still read entries after {MAX_RUNS} runs")


@contextlib.contextmanager
def check_constraint(db, name: str, condition: str):
    """A CHECK constraint on logs for the duration of the block: a "bug" on the database side."""
    db.execute(f"ALTER TABLE logs ADD CONSTRAINT {name} CHECK ({condition})")
    try:
        yield
    finally:
        db.execute(f"ALTER TABLE logs DROP CONSTRAINT {name}")


def dead_letters(db) -> dict:
    return {row[0]: row[1] for row in db.execute("SELECT stream_id, reason FROM dead_letters")}


def test_poison_is_isolated_and_dead_lettered_with_the_reason(redis_client, settings, db):
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    ids = {}
    for i in range(40):
        fields = good_fields(i)
        if i == 7:
            fields[b"l"] = b"BOGUS"  # violates the level CHECK constraint
        elif i == 23:
            fields[b"t"] = b"not a time"  # PostgreSQL cannot parse it
        elif i == 31:
            fields = {b"foreign": b"entry"}  # not ours at all
        ids[i] = redis_client.xadd(settings.stream, fields).decode()

    [result] = drain_all(redis_client, db, settings)
    assert (result.read, result.inserted, result.dead_lettered) == (40, 37, 3)
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 37
    letters = dead_letters(db)
    assert set(letters) == {ids[7], ids[23], ids[31]}
    assert "InvalidTextRepresentation" in letters[ids[7]] and "log_severity" in letters[ids[7]]
    assert "rejected by PostgreSQL" in letters[ids[23]]
    assert letters[ids[31]].startswith("malformed entry")
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 0
    payload = db.execute("SELECT payload FROM dead_letters WHERE stream_id = %s", (ids[31],)).fetchone()[0]
    assert payload == {"foreign": "entry"}


def die_holding(redis_client, settings, consumer: str, times: int) -> None:
    """`times` processes in turn take `consumer`'s batch, mark it in flight and die
    (as kill -9 would leave them: marker written, nothing acknowledged)."""
    for n in range(times):
        batch = read_batch(redis_client, settings, consumer)
        consumers.mark_in_flight(redis_client, settings.stream, consumer, [i for i, _ in batch.entries],
                                 token=f"dead-process-{n}")


def test_entries_of_a_dead_consumer_are_reclaimed_once_its_lease_lapses(redis_client, settings, db):
    enqueue(redis_client, settings, 10)
    lease = consumers.lease_key(settings.stream, "worker-that-dies")
    redis_client.set(lease, "its-token", px=1500)
    read_batch(redis_client, settings, "worker-that-dies")  # delivered, never acknowledged
    assert drain_batch(redis_client, db, settings, "live").read == 0  # its lease is live: hands off
    wait_until(lambda: not redis_client.exists(lease), 10, "the lease to lapse")
    result = drain_batch(redis_client, db, settings, "live")
    assert (result.source, result.inserted) == ("reclaimed", 10)
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 0
    drain_batch(redis_client, db, settings, "live")  # the next look removes the empty dead name
    names = {c["name"] for c in redis_client.xinfo_consumers(settings.stream, settings.consumer_group)}
    assert b"worker-that-dies" not in names


def test_an_entry_that_killed_max_deliveries_workers_is_dead_lettered(redis_client, settings, db):
    settings = dataclasses.replace(settings, max_deliveries=3)
    [entry_id] = enqueue(redis_client, settings, 1)
    die_holding(redis_client, settings, "c1", 3)
    result = drain_batch(redis_client, db, settings, "c1")
    assert (result.inserted, result.dead_lettered) == (0, 1)
    assert "3 workers died while storing it" in dead_letters(db)[entry_id]
    assert not redis_client.hexists(consumers.deaths_key(settings.stream), entry_id)  # forgotten once acked


def test_a_crash_looping_batch_is_taken_apart_so_only_the_culprit_is_dead_lettered(redis_client, settings, db):
    settings = dataclasses.replace(settings, max_deliveries=4)
    ids = enqueue(redis_client, settings, 5)
    die_holding(redis_client, settings, "c1", 3)  # the whole batch, three times
    # Now entries go one at a time; the first one kills the worker twice more.
    for n in range(2):
        batch = read_batch(redis_client, settings, "c1")
        assert batch.source == "own-pending" and [e[0].decode() for e in batch.entries] == [ids[0]]
        consumers.mark_in_flight(redis_client, settings.stream, "c1", [ids[0].encode()], token=f"killed-{n}")
    results = [drain_batch(redis_client, db, settings, "c1") for _ in range(6)]
    assert [(r.read, r.inserted, r.dead_lettered) for r in results[:5]] == [(1, 0, 1)] + [(1, 1, 0)] * 4
    assert set(dead_letters(db)) == {ids[0]}
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 4


def test_an_overdue_entry_that_was_already_stored_is_acknowledged_not_dead_lettered(redis_client, settings, db):
    settings = dataclasses.replace(settings, max_deliveries=2)
    enqueue(redis_client, settings, 3)
    batch = read_batch(redis_client, settings, "c1")
    rows = [stream.decode_entry(batch.stream, i, f) for i, f in batch.entries]
    storage.insert_logs(db, rows, writer="c1")  # then the worker died before its XACK, three times
    die_holding(redis_client, settings, "c1", 3)
    drain_until_nothing_read(redis_client, db, settings, "c1")
    assert dead_letters(db) == {}
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 3
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 0


def test_replay_after_a_fix_stores_the_logs_and_the_books_balance(client, redis_client, settings, db):
    # A "bug" on the database side rejects some logs for a while.
    with check_constraint(db, "no_secrets", "message NOT LIKE '%secret%'"):
        logs = [{"device_id": "d", "log_level": "INFO", "message": "secret" if i % 10 == 0 else f"ok {i}"}
                for i in range(50)]
        assert client.post("/api/logs/batch", json={"logs": logs}).status_code == 200
        drain_all(redis_client, db, settings)
        stats = client.get("/api/stats").get_json()["pipeline"]
        assert (stats["accepted"], stats["persisted"], stats["dead_lettered"]) == (50, 45, 5)
        listed = client.get("/api/dead-letters?limit=2").get_json()
        assert listed["total"] == 5 and len(listed["data"]) == 2
        assert "no_secrets" in listed["data"][0]["reason"]
    # (leaving the block is the fix)

    # A replay while the bug is still there changes nothing but the reason.
    with check_constraint(db, "no_secrets_yet", "message NOT LIKE '%secret%'"):
        assert replay(db, redis_client, settings, ids=None) == ReplayResult(stored=0, still_failing=5)
    assert all(reason.startswith("replay: rejected") for reason in dead_letters(db).values())

    assert replay(db, redis_client, settings, ids=None) == ReplayResult(stored=5, still_failing=0)
    assert replay(db, redis_client, settings, ids=None) == ReplayResult(stored=0, still_failing=0)
    stats = client.get("/api/stats").get_json()["pipeline"]
    assert (stats["accepted"], stats["persisted"], stats["dead_lettered"]) == (50, 50, 0)
    assert db.execute("SELECT count(*) FROM logs WHERE message = 'secret'").fetchone()[0] == 5
    assert db.execute("SELECT count(DISTINCT stream_entry_id(received_at, entry_seq)) FROM logs").fetchone()[0] == 50


def test_backpressure_closes_at_high_water_and_reopens_below_low_water(app, redis_client, settings, db):
    s = dataclasses.replace(settings, backlog_high_water=20, backlog_low_water=5, backpressure_check_interval=0.0)
    app.config["SETTINGS"] = s
    app.extensions["collector"].gate.settings = s
    client = app.test_client()
    log = {"device_id": "d", "log_level": "INFO", "message": "m"}
    assert client.post("/api/logs/batch", json={"logs": [log] * 20}).status_code == 200
    refused = client.post("/api/log", json=log)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert refused.get_json()["error"] == "overloaded"
    assert redis_client.xlen(s.stream) == 20  # nothing accepted past the mark

    drain_batch(redis_client, db, s, "c1")
    assert client.post("/api/log", json=log).status_code == 200
    assert client.get("/api/stats").get_json()["pipeline"]["accepted"] == 21


def test_trim_removes_only_acknowledged_entries(redis_client, settings, db):
    ids = enqueue(redis_client, settings, 1000)
    for _ in range(6):
        drain_batch(redis_client, db, settings, "c1")  # 600 stored and acknowledged
    read_batch(redis_client, settings, "c2")  # 100 delivered but not acknowledged
    trimmed = trim.trim_acknowledged(redis_client, settings.stream)
    assert 0 < trimmed <= 600
    remaining = {e[0].decode() for e in redis_client.xrange(settings.stream)}
    assert set(ids[600:]) <= remaining  # pending and undelivered entries all kept
    drain_all(redis_client, db, settings, "c2")
    drain_all(redis_client, db, settings, "c1")
    assert db.execute("SELECT count(DISTINCT stream_entry_id(received_at, entry_seq)) FROM logs").fetchone()[0] == 1000


def test_trim_keeps_up_with_large_acknowledged_backlogs(redis_client, settings, db):
    """Redis caps an approximate trim at 10,000 entries unless told otherwise."""
    entries = [stream.encode_entry({"device_id": "d", "log_level": "INFO", "message": "m", "log_data": None,
                                    "timestamp": None}, dt.datetime.now(dt.UTC))] * 1000
    for _ in range(30):
        producer.append(redis_client, settings.stream, entries, counters.accepted_counter(settings))
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    # Deliver and acknowledge everything without storing (this test is about Redis memory only).
    for _ in range(MAX_RUNS):
        batch = redis_client.xreadgroup(settings.consumer_group, "c", {settings.stream: ">"}, count=5000)
        if not batch:
            break
        redis_client.xack(settings.stream, settings.consumer_group, *[i for i, _ in batch[0][1]])
    else:
        raise AssertionError(f"the stream still had undelivered entries after {MAX_RUNS} reads")
    assert trim.trim_acknowledged(redis_client, settings.stream) > 25_000
    assert redis_client.xlen(settings.stream) < 1_000


def test_a_long_replay_goes_in_chunks_and_says_how_far_along_it_is(redis_client, settings, db, capsys):
    from collector import deadletters as cli
    from collector.store import deadletters as store

    payload = {k.decode(): v.decode() for k, v in good_fields(0).items()}
    store.add(db, "replay-test#0001", [(f"1-{i}", payload, "rejected by PostgreSQL: a bug", 1) for i in range(1200)])
    result = cli.replay_in_chunks(db, redis_client, settings, None)
    assert result == ReplayResult(stored=1200, still_failing=0)
    progress = capsys.readouterr().out
    assert "500 of 1200 replayed" in progress and "1200 of 1200 replayed (1200 stored, 0 still failing)" in progress
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 1200
