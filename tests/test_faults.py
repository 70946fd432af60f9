"""Faults with real processes, real signals and real servers. After each one,
every log that got a 2xx is in PostgreSQL exactly once (or in dead_letters),
and the pipeline's books balance: accepted = persisted + dead-lettered.

Servers a test must stop are throwaway instances started by the test; the
machine's shared Redis and PostgreSQL are only used under the run's own key
prefix and database."""

from __future__ import annotations

import signal
import sys

import psycopg
import pytest
import redis
import requests

from collector.core.settings import load_settings
from collector.devtools.processes import wait_until
from tests.load import Load
from tests.stack import Stack, ThrowawayPostgres, ThrowawayRedis

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def count(database_url: str, table: str = "logs") -> int:
    with psycopg.connect(database_url, connect_timeout=3) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def assert_exactly_once(loads: Load | list[Load], database_url: str, api_url: str) -> None:
    """Every log that got a 2xx is stored exactly once, nothing is dead-lettered, and
    the books balance. The only rows allowed beyond those are logs whose request
    got a 503 because Redis broke mid-request (Redis may have queued them before
    its reply was lost): the documented at-least-once window at the HTTP boundary."""
    loads = loads if isinstance(loads, list) else [loads]
    accepted = [pair for load in loads for pair in load.accepted_pairs]
    in_doubt = set().union(*(load.in_doubt for load in loads))
    wait_until(lambda: count(database_url) >= len(accepted), 240,
               f"{len(accepted)} accepted logs in PostgreSQL", interval=0.5)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT device_id, stream_entry_id(received_at, entry_seq), message FROM logs").fetchall()
    # A stream entry is (device, id): with STREAM_SHARDS > 1 ids are unique per device's shard.
    stored = [(device, stream_id) for device, stream_id, _ in rows]
    assert len(stored) == len(set(stored)), "a stream entry was stored twice"
    accepted_ids = set(accepted)
    assert accepted_ids <= set(stored), "an accepted log is missing"
    extra = {message for device, stream_id, message in rows if (device, stream_id) not in accepted_ids}
    assert extra <= in_doubt, f"stored logs nobody was told were accepted: {sorted(extra)[:5]}"
    assert count(database_url, "dead_letters") == 0

    def idle():
        pipeline = requests.get(f"{api_url}/api/stats", timeout=5).json()["pipeline"]
        return pipeline if pipeline["pending"] == 0 and pipeline["lag"] == 0 else None

    pipeline = wait_until(idle, 60, "an idle pipeline")
    assert pipeline["accepted"] == pipeline["persisted"] + pipeline["dead_lettered"] == len(stored)


@pytest.fixture
def make_stack(base_settings, tmp_path, request):
    stacks = []

    def make(**env) -> Stack:
        env = {"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
               "KEY_PREFIX": f"{base_settings.key_prefix}{request.node.name}:", "DRAIN_INTERVAL": "0.5",
               "CONSUMER_LEASE_SECONDS": "3", **env}
        stack = Stack(env, tmp_path)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()
        if "worker" in stack.procs:
            sys.stderr.write(f"--- worker (tail) ---\n{stack.tail('worker')}\n")


# Ask for these before make_stack, so the stack is stopped before its server goes away.
@pytest.fixture
def throwaway_postgres():
    pg = ThrowawayPostgres()
    yield pg
    pg.remove()


@pytest.fixture
def throwaway_redis(tmp_path_factory):
    server = ThrowawayRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def test_kill_9_every_worker_process_mid_load_then_restart(make_stack, fresh_db, start_load):
    stack = make_stack()
    api = stack.start_api(0)
    stack.start_worker()
    stack.start_beat()
    load = start_load(api, target=10_000, tag="kill9")
    wait_until(lambda: count(fresh_db) >= 2_000, 120, "the worker to be busy storing")
    stack.kill("worker", signal.SIGKILL)  # main process and every pool child, mid-batch
    # The second half of the 20,000 logs is accepted after the kill, so whatever the
    # machine's speed, the restarted worker finds a backlog (and any batch the dead
    # worker left pending) to store.
    after = start_load(api, target=10_000, tag="kill9-after")
    load.wait()
    after.wait()
    assert count(fresh_db) < 20_000  # the kill really interrupted the drain
    stack.start_worker()
    assert_exactly_once([load, after], fresh_db, api)


def test_two_workers_started_with_one_node_name_never_share_entries(make_stack, fresh_db, start_load):
    """A second worker started by hand with the Procfile's node name: its pool processes
    get consumer names of their own (leases), so neither re-reads what the other has in
    flight. Without leases, each re-read counted as a delivery and, with MAX_DELIVERIES=1,
    entries the other worker was storing went to dead_letters too. A task per run
    (DRAIN_TASK_SECONDS=0) spreads the runs over both workers."""
    stack = make_stack(MAX_DELIVERIES="1", DRAIN_TASK_SECONDS="0")
    api = stack.start_api(0)
    stack.start_worker()
    stack.start_worker(name="worker-by-hand")
    stack.start_beat()
    load = start_load(api, target=10_000, tag="twins")
    load.wait()
    assert_exactly_once(load, fresh_db, api)
    settings = load_settings(stack.env)
    client = redis.Redis.from_url(settings.redis_url)
    names = [c["name"].decode() for c in client.xinfo_consumers(settings.stream, settings.consumer_group)]
    client.close()
    assert len(names) == len(set(names)) and any("~" in name for name in names), names


def test_sigterm_lets_the_worker_finish_its_batch(make_stack, fresh_db, start_load):
    stack = make_stack()
    api = stack.start_api(0)
    stack.start_worker()
    stack.start_beat()
    load = start_load(api, target=8_000, tag="term")
    wait_until(lambda: count(fresh_db) >= 1_000, 120, "the worker to be busy storing")
    stack.kill("worker", signal.SIGTERM)
    assert stack.procs["worker"].returncode == 0  # a warm shutdown, not a crash
    load.wait()
    stack.start_worker()
    assert_exactly_once(load, fresh_db, api)


def test_postgres_stops_and_returns_under_load(throwaway_postgres, make_stack, start_load):
    pg = throwaway_postgres
    pg.start()
    pg.migrate()
    stack = make_stack(DATABASE_URL=pg.url, DB_TIMEOUT="1")
    api = stack.start_api(0)
    stack.start_worker()
    stack.start_beat()
    before = start_load(api, target=20_000, tag="pg-before")
    wait_until(lambda: pg.count() >= 1_000, 120, "logs stored before the outage")
    pg.stop()  # mid-load: batches are being inserted as it goes
    before.wait()
    health = requests.get(f"{api}/health", timeout=10)
    assert health.status_code == 503 and health.json()["checks"] == {"redis": True, "postgres": False}
    # Ingest keeps accepting while PostgreSQL is down: Redis buffers.
    during = start_load(api, target=5_000, tag="pg-during")
    during.wait()
    assert during.refused == {}
    pg.start()
    assert_exactly_once([before, during], pg.url, api)
    assert requests.get(f"{api}/health", timeout=10).status_code == 200


def test_redis_stops_and_returns_under_load(throwaway_redis, make_stack, fresh_db, start_load):
    redis_server = throwaway_redis
    redis_server.start()
    stack = make_stack(REDIS_URL=redis_server.url)
    api = stack.start_api(0)
    stack.start_worker()
    stack.start_beat()
    load = start_load(api, target=20_000, tag="redisdown")
    wait_until(lambda: len(load.accepted) >= 2_000, 120, "load under way")
    redis_server.stop()  # mid-load
    response = requests.post(f"{api}/api/log", json={"device_id": "d", "log_level": "INFO", "message": "m"},
                             timeout=10)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert requests.get(f"{api}/health", timeout=10).json()["checks"]["redis"] is False
    wait_until(lambda: load.refused.get(503, 0) >= 10, 30, "devices to see 503s")
    redis_server.start()
    load.wait()  # ingest resumes without restarting anything
    assert_exactly_once(load, fresh_db, api)


def stream_length(stack: Stack) -> int:
    settings = load_settings(stack.env)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return client.xlen(settings.stream)
    finally:
        client.close()


def test_backlog_past_high_water_gets_503_then_reopens(make_stack, fresh_db, start_load):
    """Ingest closes at the high-water mark, stays closed while nothing drains, and
    reopens once the worker has brought the backlog below the low-water mark; every
    accepted log is stored once. How many logs get in before the gate closes (each API
    worker re-reads the backlog every BACKPRESSURE_CHECK_INTERVAL) depends on the
    machine's speed, so it is not asserted; that none gets in once it is closed is."""
    high_water = 2_000
    stack = make_stack(BACKLOG_HIGH_WATER=str(high_water), BACKLOG_LOW_WATER="500",
                       BACKPRESSURE_CHECK_INTERVAL="0.05")
    api = stack.start_api(0)
    load = start_load(api, target=6_000, tag="pressure")  # no worker yet: the backlog only grows
    wait_until(lambda: load.refused.get(503, 0) > 0, 60, "ingest to refuse past the high-water mark")
    assert "overloaded" in load.retry_after_seen
    # Once every device has been refused, none has a request in flight from before the
    # gate closed, and the gate stays closed (nothing drains): the accepted logs are final.
    wait_until(lambda: len(load.threads_refused_with.get("overloaded", ())) == load.n_threads, 60,
               "every device to be refused")
    closed_at = len(load.accepted)
    assert closed_at >= high_water  # it did not close early
    assert stream_length(stack) == closed_at  # nothing refused was queued
    refusals = load.refused[503]
    wait_until(lambda: load.refused[503] >= refusals + 5 * load.n_threads, 60, "more refusals")
    assert len(load.accepted) == closed_at  # still closed
    assert set(load.refused) == {503} and load.refused_without_retry_after == {}
    stack.start_worker()
    stack.start_beat()
    load.wait()  # reopened: the rest of the 6,000 got in once the worker drained the backlog
    assert len(load.accepted) >= 6_000
    assert_exactly_once(load, fresh_db, api)


def test_sigterm_to_an_api_instance_behind_nginx_loses_no_request(make_stack, fresh_db, start_load):
    """Gunicorn's graceful shutdown finishes in-flight requests and nginx sends new
    ones to the other instance. A request that races the close of an idle
    keep-alive connection gets nginx's JSON 502 with Retry-After without having
    been processed (nginx does not resend a POST it has sent), so the device's
    retry stores it once: nothing is lost or duplicated either way. How many such
    races there are depends on timing, so their number is not asserted."""
    stack = make_stack()
    url = stack.start_all()
    load = start_load(url, target=8_000, tag="apiterm")
    wait_until(lambda: len(load.accepted) >= 1_000, 60, "load under way")
    stack.kill("api1", signal.SIGTERM)
    assert stack.procs["api1"].returncode == 0  # a graceful exit
    load.wait()
    assert set(load.refused) <= {502}, f"devices saw errors during the restart: {load.refused}"
    assert set(load.threads_refused_with) <= {"bad_gateway"}, load.threads_refused_with
    assert load.refused_without_retry_after == {}  # every 502 told the device to retry
    stack.start_api(0, port=stack.api_ports[0])
    assert_exactly_once(load, fresh_db, url)
