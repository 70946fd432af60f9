"""Who drains: transient trouble never counts towards dead letters, and consumer names
are unique among live processes (leases) while a restarted process still resumes its
predecessor's pending entries."""

from __future__ import annotations

import dataclasses
import threading

import psycopg
import pytest

from collector.devtools.processes import wait_until
from collector.pipeline import consumers
from collector.pipeline.drain import drain_batch, read_batch
from tasks import resources
from tests.test_delivery import dead_letters, drain_all
from tests.test_drain import enqueue

# Runs that each end in a statement timeout: more than MAX_DELIVERIES below.
FAILED_RUNS = 4


def test_runs_failing_on_a_lock_past_the_statement_timeout_never_dead_letter(redis_client, settings, db):
    settings = dataclasses.replace(settings, max_deliveries=2, drain_statement_timeout=1.0)
    enqueue(redis_client, settings, 20)
    _, pool = resources.backends(settings)  # the worker's own pool: DRAIN_STATEMENT_TIMEOUT applies
    try:
        with psycopg.connect(settings.database_url) as locker:
            locker.execute("LOCK TABLE logs IN ACCESS EXCLUSIVE MODE")  # held until the block ends
            for _ in range(FAILED_RUNS):
                with pool.connection() as conn, pytest.raises(psycopg.errors.QueryCanceled):
                    drain_batch(redis_client, conn, settings, "c1")
            assert db.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
        with pool.connection() as conn:
            drain_all(redis_client, conn, settings)
    finally:
        resources.close_backends()
    assert dead_letters(db) == {}
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 20
    assert redis_client.xpending(settings.stream, settings.consumer_group)["pending"] == 0
    # Re-reading its own pending entries did not count as deliveries either.
    assert redis_client.hlen(consumers.deaths_key(settings.stream)) == 0


def lease(redis_client, settings, preferred: str, token: str) -> consumers.ConsumerLease:
    held = consumers.ConsumerLease(redis_client, settings, preferred)
    held.token = token  # another process, as far as the leases can tell
    return held


def test_a_second_live_process_with_the_same_node_name_gets_its_own_consumer(redis_client, settings):
    first = lease(redis_client, settings, "worker1@host-0", "process-a")
    second = lease(redis_client, settings, "worker1@host-0", "process-b")
    try:
        assert first.current() == "worker1@host-0"
        assert second.current() == "worker1@host-0~1"
        assert first.current() == "worker1@host-0"  # still its own, renewed
    finally:
        first.release()
        second.release()


def test_a_restarted_process_takes_its_predecessors_name_once_the_lease_lapses(redis_client, settings, db):
    settings = dataclasses.replace(settings, consumer_lease_seconds=1.0)
    enqueue(redis_client, settings, 10)
    dead = lease(redis_client, settings, "worker1@host-0", "process-dead")
    assert dead.current() == "worker1@host-0"
    batch = read_batch(redis_client, settings, "worker1@host-0")
    consumers.mark_in_flight(redis_client, settings.stream, "worker1@host-0", [i for i, _ in batch.entries],
                             token="process-dead")
    dead._stopped.set()  # kill -9: the heartbeat stops, nothing is released

    restarted = lease(redis_client, settings, "worker1@host-0", "process-new")
    try:
        assert restarted.current() == "worker1@host-0~1"  # the dead one's lease is still live
        # Under the spare name it leaves the entries alone: they are not reclaimable yet.
        assert drain_batch(redis_client, db, settings, "worker1@host-0~1").read == 0
        name = wait_until(lambda: restarted.current() == "worker1@host-0" and restarted.current(), 10,
                          "the predecessor's lease to lapse")
        result = drain_batch(redis_client, db, settings, name)
    finally:
        restarted.release()
    assert (result.source, result.inserted) == ("own-pending", 10)
    # The predecessor died holding them: one death each, forgotten once they are stored.
    assert redis_client.hlen(consumers.deaths_key(settings.stream)) == 0
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 10


def test_two_processes_under_one_node_name_never_share_entries(redis_client, settings, db, make_app):
    """Two drains started with the same node name and pool index, racing over a backlog:
    every entry is stored exactly once and none is dead-lettered."""
    settings = dataclasses.replace(settings, max_deliveries=1)
    enqueue(redis_client, settings, 2000)
    _, pool = resources.backends(settings)
    names, errors = [], []
    both_started = threading.Barrier(2, timeout=30)

    def drain(token: str) -> None:
        held = lease(redis_client, settings, "worker1@host-0", token)
        try:
            names.append(held.current())
            both_started.wait()  # both hold their names before either drains
            with pool.connection() as conn:
                while True:
                    name = held.current()
                    names.append(name)
                    if not drain_batch(redis_client, conn, settings, name).read:
                        return
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            held.release()

    threads = [threading.Thread(target=drain, args=(f"process-{n}",)) for n in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        resources.close_backends()
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert set(names) == {"worker1@host-0", "worker1@host-0~1"}
    assert dead_letters(db) == {}
    assert db.execute("SELECT count(*), count(DISTINCT stream_entry_id(received_at, entry_seq)) FROM logs"
                      ).fetchone() == (2000, 2000)
