"""The shape of the hot paths, counted rather than timed: Redis round trips per ingest
request, SQL statements and Redis round trips per drained batch, Celery tasks per 1,000
drained logs. A change that adds a round trip or a statement per request or per batch
fails here on any machine, however noisy (docs/performance.md, "Guards").

The counts come from spies on the real clients (redis-py's connection, psycopg's
cursor): every call still goes to the real Redis and PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import psycopg
import pytest
import redis

from collector.core.model import LEVELS
from collector.pipeline import counters, producer
from collector.pipeline.codec import encode_entry
from collector.pipeline.drain import drain_batch, drain_for
from collector.web.schemas import log_schema
from tests.test_console_browser import make_key
from tests.test_drain import count, enqueue
from tests.test_flower_locust import celery_app, run  # noqa: F401 (celery_app is a fixture)


@pytest.fixture
def round_trips(monkeypatch):
    """How many times anything in this process sent to Redis: one per command, one per
    pipeline (a MULTI/EXEC or a script included). Reset it with round_trips.clear()."""
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return sent


@pytest.fixture
def statements(monkeypatch):
    """SQL statements sent by psycopg cursors in this process: one per execute, one per
    parameter set of executemany (each is a statement PostgreSQL runs)."""
    sent: list[str] = []
    execute, executemany = psycopg.Cursor.execute, psycopg.Cursor.executemany

    def counting_execute(self, query, params=None, **kwargs):
        sent.append(" ".join(str(query).split())[:60])
        return execute(self, query, params, **kwargs)

    def counting_executemany(self, query, params_seq, **kwargs):
        params_seq = list(params_seq)
        sent.extend([" ".join(str(query).split())[:60]] * len(params_seq))
        return executemany(self, query, params_seq, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting_execute)
    monkeypatch.setattr(psycopg.Cursor, "executemany", counting_executemany)
    return sent


def quiet(settings):
    """The gate re-reads the backlog once per BACKPRESSURE_CHECK_INTERVAL: not within a test."""
    return dataclasses.replace(settings, backpressure_check_interval=3600.0)


BATCH = {"logs": [{"device_id": "dev-1", "log_level": level, "message": f"m {level}"}
                  for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")]}


def test_an_ingest_request_is_one_redis_round_trip(make_app, settings, round_trips):
    client = make_app(quiet(settings)).test_client()
    assert client.post("/api/logs/batch", json=BATCH).status_code == 200  # warm-up: the gate's first look
    round_trips.clear()
    for i in range(10):
        assert client.post("/api/logs/batch", json=BATCH).status_code == 200
        assert client.post("/api/log", json={"device_id": "dev-1", "log_level": "INFO", "message": f"{i}"}
                           ).status_code == 200
    assert len(round_trips) == 20


def test_with_keys_limits_and_idempotency_it_is_still_one(make_app, settings, round_trips):
    s = dataclasses.replace(quiet(settings), auth_enabled=True, rate_limit_per_device=1000.0)
    client = make_app(s).test_client()
    auth = {"Authorization": f"Bearer {make_key(s, 'device', 'dev-')}"}
    numbered = {"logs": [dict(log, boot_id="b1", seq=n) for n, log in enumerate(BATCH["logs"])]}
    keys = (f"k-{n}" for n in itertools.count())
    assert client.post("/api/logs/batch", json=numbered, headers={**auth, "Idempotency-Key": next(keys)}
                       ).status_code == 200  # warm-up: the gate, and the key's first check
    round_trips.clear()
    for n in range(10):
        body = {"logs": [dict(log, seq=log["seq"] + 5 * (n + 1)) for log in numbered["logs"]]}
        response = client.post("/api/logs/batch", json=body, headers={**auth, "Idempotency-Key": next(keys)})
        assert response.status_code == 200, response.get_json()
    assert len(round_trips) == 10
    round_trips.clear()
    replayed = client.post("/api/logs/batch", json=body, headers={**auth, "Idempotency-Key": f"k-{n + 1}"})
    assert replayed.headers["Idempotent-Replayed"] == "true" and len(round_trips) == 1
    assert client.post("/api/logs/batch", json=body).status_code == 401  # the keys were really checked


@pytest.mark.parametrize("numbered", [False, True], ids=["plain", "numbered"])
def test_a_drained_batch_is_one_insert_per_row_and_fixed_statements(settings, redis_client, db, statements,
                                                                    round_trips, numbered):
    now = dt.datetime.now(dt.UTC)
    logs = [{"device_id": f"dev-{n % 7}", "log_level": LEVELS[n % 5], "message": f"m{n}"} for n in range(300)]
    if numbered:
        logs = [dict(log, boot_id="b1", seq=n) for n, log in enumerate(logs)]
    schema = log_schema(settings.max_message_chars, settings.max_log_data_bytes)
    producer.append(redis_client, settings.stream, [encode_entry(schema.load(log), now) for log in logs],
                    counters.accepted_counter(settings))
    drain_batch(redis_client, db, settings, "c1")  # warm-up: the stream's first sight (its epoch, its id)
    statements.clear()
    round_trips.clear()
    result = drain_batch(redis_client, db, settings, "c1", fresh_only=True)
    assert result.inserted == 100
    inserts = [s for s in statements if s.startswith("INSERT INTO logs ")]
    assert len(inserts) == 100
    # The counters (per level, per device) and, for numbered logs, the sequence claims
    # (create, lock and read, write back): one statement each, whatever the batch holds.
    assert len(statements) - len(inserts) == (5 if numbered else 2), statements[:1] + statements[100:]
    # Read, the in-flight marker, then invalidate + XACK + bookkeeping in one pipeline.
    assert len(round_trips) == 3
    round_trips.clear()
    drain_batch(redis_client, db, settings, "c1")  # a task's first run also looks for own and dead entries
    assert len(round_trips) == 5


def test_a_drain_task_carries_many_runs(celery_app, settings, redis_client, db):  # noqa: F811
    """Celery tasks per 1,000 drained logs: one while DRAIN_TASK_SECONDS has not passed
    (a budget no run can reach here), a task per run with DRAIN_TASK_SECONDS=0."""
    queue = f"{settings.key_prefix}{settings.celery_queue}"

    def tasks_to_drain(logs: int) -> int:
        enqueue(redis_client, settings, logs)
        tasks = 0
        redis_client.lpush(queue, b"first")  # stands for the message of the first task
        while redis_client.lpop(queue):  # each message the tasks send is one more task
            run(celery_app, "tasks.drain.drain_stream")
            tasks += 1
        return tasks

    celery_app.collector_settings = dataclasses.replace(settings, drain_task_seconds=600.0)
    assert tasks_to_drain(1000) == 1
    assert count(db) == 1000
    celery_app.collector_settings = dataclasses.replace(settings, drain_task_seconds=0.0)
    assert tasks_to_drain(1000) == 11  # ten full runs, then one that finds the stream empty
    assert count(db) == 2000


def test_drain_for_goes_on_only_while_runs_are_full(settings, redis_client, db):
    s = dataclasses.replace(settings, drain_task_seconds=600.0)
    enqueue(redis_client, s, 250)
    results = drain_for(redis_client, db, s, "c1")
    assert [r.read for r in results] == [100, 100, 50]
    assert [r.source for r in results] == ["new"] * 3
    assert drain_for(redis_client, db, s, "c1")[-1].read == 0
