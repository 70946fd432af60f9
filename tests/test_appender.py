"""Concurrent requests sharing XADD round trips: each gets exactly its own ids."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import redis

from collector.pipeline import counters, producer
from collector.pipeline.producer import Appender


def entries_for(caller: int, n: int) -> list[dict]:
    return [{b"d": f"caller-{caller}".encode(), b"m": f"{caller}:{i}".encode()} for i in range(n)]


def test_concurrent_callers_get_their_own_ids_in_order(redis_client, settings):
    appender = Appender(redis_client, settings.stream, counters.accepted_counter(settings), max_entries=50)
    results: dict[int, list[str]] = {}
    start = threading.Barrier(40)

    def call(caller: int) -> None:
        start.wait()
        results[caller] = appender.append(entries_for(caller, 1 + caller % 7))

    threads = [threading.Thread(target=call, args=(c,)) for c in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stored = {entry_id.decode(): fields for entry_id, fields in redis_client.xrange(settings.stream)}
    assert len(stored) == sum(1 + c % 7 for c in range(40))
    for caller, ids in results.items():
        assert [stored[i][b"m"].decode() for i in ids] == [f"{caller}:{i}" for i in range(1 + caller % 7)]
    assert int(redis_client.hget(settings.key("counters"), "accepted")) == len(stored)


def test_every_caller_of_a_failed_group_gets_the_error(settings):
    dead = dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0")
    client = redis.Redis.from_url(dead.redis_url, socket_connect_timeout=0.2)
    appender = Appender(client, dead.stream, counters.accepted_counter(dead))
    errors = []

    def call(caller: int) -> None:
        try:
            appender.append(entries_for(caller, 2))
        except redis.ConnectionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(c,)) for c in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(errors) == 10
    assert not appender._busy and not appender._queue  # ready for the next request


def test_a_request_killed_while_queued_does_not_stall_the_others(redis_client, settings, monkeypatch):
    """Simulates a greenlet killed while waiting its turn: it leaves the queue, and a
    request promoted to sender just as it dies passes the turn on."""
    appender = Appender(redis_client, settings.stream, counters.accepted_counter(settings))

    class Killed(BaseException):
        pass

    class DiesWaiting(threading.Event):
        def wait(self, timeout=None):
            raise Killed

    appender._busy = True  # someone else is sending
    with monkeypatch.context() as patched:
        patched.setattr(producer.threading, "Event", DiesWaiting)
        with pytest.raises(Killed):
            appender.append(entries_for(1, 1))
    assert appender._queue == []
    appender._busy = False
    assert len(appender.append(entries_for(2, 3))) == 3
    assert not appender._busy
