"""Queries on a read replica (DATABASE_READ_URL), against a real streaming replica: a
throwaway primary, a standby made from it with `pg_basebackup -R`, and the freshness
fence (collector.pipeline.cache) that keeps a standby whose replay lags (here: paused)
from caching a stale answer under the version the drain's invalidation made fresh."""

from __future__ import annotations

import dataclasses
import os
import pwd
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from collector.core.settings import load_settings
from collector.devtools.processes import free_port, wait_until
from collector.devtools.servers import PostgresServer
from collector.web.app import create_app
from tests.conftest import REDIS_URL, truncate_all_tables
from tests.stack import ThrowawayPostgres
from tests.test_delivery import drain_all

DEVICE = "replica-dev"


def _sql(url: str, query: str, params: tuple = ()) -> object:
    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        return conn.execute(query, params).fetchone()[0]


class Standby(PostgresServer):
    """A hot standby of `primary`, made with pg_basebackup -R (which writes primary_conninfo
    and standby.signal) into a temp dir of its own."""

    def __init__(self, primary: PostgresServer) -> None:
        super().__init__(free_port(), Path(tempfile.mkdtemp(prefix="collector-test-standby-")))
        self.data_dir.chmod(0o700)
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        done = self._run(str(self.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                         "postgres", "-D", str(self.data_dir), "-R", "-X", "stream", "--checkpoint=fast")
        assert done.returncode == 0, done.stderr

    def streaming(self) -> bool:
        return _sql(self.url.replace("/logs", "/postgres"),
                    "SELECT pg_is_in_recovery() AND EXISTS (SELECT FROM pg_stat_wal_receiver"
                    " WHERE status = 'streaming')") is True


@pytest.fixture(scope="module")
def replica_pair():
    """(primary, standby), streaming, with the migrations applied on the primary."""
    primary = ThrowawayPostgres()
    standby = None
    try:
        primary.start()  # initdb's defaults: wal_level=replica, and trust for replication from 127.0.0.1
        standby = Standby(primary).start(options="-c fsync=off -c hot_standby=on")
        wait_until(standby.streaming, 20, "the standby to stream from the primary", interval=0.1)
        primary.migrate()
        yield primary, standby
    finally:
        for server in (standby, primary):
            if server is not None:
                server.remove()


def caught_up(primary: PostgresServer, standby: PostgresServer) -> None:
    target = _sql(primary.url, "SELECT pg_current_wal_lsn()::text")
    wait_until(lambda: _sql(standby.url, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)), 20,
               "the standby to replay the primary's WAL", interval=0.05)


@pytest.fixture
def stack(replica_pair, key_prefix):
    """An app whose queries read the standby, a Redis client and a primary connection for the drain."""
    primary, standby = replica_pair
    settings = load_settings({}, redis_url=REDIS_URL, database_url=primary.url, database_read_url=standby.url,
                             key_prefix=f"{key_prefix}{uuid.uuid4().hex[:8]}:", instance_name="pytest",
                             auth_enabled=False, db_timeout=1.0)
    app = create_app(settings)
    client = redis.Redis.from_url(REDIS_URL)
    truncate_all_tables(primary.url)
    with psycopg.connect(primary.url, autocommit=True) as conn:
        yield app, app.test_client(), client, conn, settings
    app.extensions["collector"].close()
    client.close()
    if standby.running:  # a test that failed while replay was paused must not stall the next
        _sql(standby.url, "SELECT pg_wal_replay_resume()")


def ingest_and_drain(stack, n: int, first: int = 0) -> None:
    app, web, client, conn, settings = stack
    logs = [{"device_id": DEVICE, "log_level": "INFO", "message": f"log {i}"} for i in range(first, first + n)]
    assert web.post("/api/logs/batch", json={"logs": logs}).status_code == 200
    drain_all(client, conn, settings)


def messages(web, path: str) -> tuple[set[str], str]:
    response = web.get(path)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return {log["message"] for log in body["data"]}, body["source"]


def pause(standby: PostgresServer) -> None:
    _sql(standby.url, "SELECT pg_wal_replay_pause()")
    wait_until(lambda: _sql(standby.url, "SELECT pg_get_wal_replay_pause_state()") == "paused", 10,
               "the standby's replay to pause", interval=0.05)


def test_drained_logs_are_read_back_through_the_replica(replica_pair, stack):
    primary, standby = replica_pair
    app, web, *_ = stack
    backends = app.extensions["collector"]
    assert backends.replica
    ingest_and_drain(stack, 5)
    caught_up(primary, standby)
    reads, writes = backends.read_db.get_stats().get("requests_num", 0), backends.db.get_stats().get("requests_num", 0)

    assert messages(web, f"/api/logs/{DEVICE}") == ({f"log {i}" for i in range(5)}, "database")
    assert messages(web, f"/api/logs/{DEVICE}") == ({f"log {i}" for i in range(5)}, "cache")
    assert messages(web, f"/api/logs?device_id={DEVICE}")[0] == {f"log {i}" for i in range(5)}
    assert web.get("/api/stats").get_json()["total_logs"] == 5
    assert [d["device_id"] for d in web.get("/api/devices").get_json()["devices"]] == [DEVICE]
    # Every one of those reads went to the standby; none to the primary.
    assert backends.read_db.get_stats()["requests_num"] - reads == 4
    assert backends.db.get_stats().get("requests_num", 0) == writes

    health = web.get("/health").get_json()
    assert health["checks"] == {"redis": True, "postgres": True, "postgres_read": True}


def paused_replica_scenario(replica_pair, stack) -> tuple[set[str], set[str], str]:
    """A device's page cached; replay paused; more logs drained; the page read during the
    pause and again once the standby caught up. Returns (during, after, after's source)."""
    primary, standby = replica_pair
    _, web, *_ = stack
    ingest_and_drain(stack, 3)
    caught_up(primary, standby)
    assert messages(web, f"/api/logs/{DEVICE}") == ({"log 0", "log 1", "log 2"}, "database")
    pause(standby)
    ingest_and_drain(stack, 2, first=3)
    # Uncached reads see the standby as it is: proof that it lags and is what the API reads.
    assert messages(web, f"/api/logs?device_id={DEVICE}")[0] == {"log 0", "log 1", "log 2"}
    during, _ = messages(web, f"/api/logs/{DEVICE}")
    _sql(standby.url, "SELECT pg_wal_replay_resume()")
    caught_up(primary, standby)
    after, source = messages(web, f"/api/logs/{DEVICE}")
    return during, after, source


def test_a_lagging_replica_never_caches_a_stale_answer(replica_pair, stack):
    """The drain's invalidation made a new version; the standby has not replayed the commit.
    The fence sends the cached read to the primary: the new logs are in the very next query,
    and what is cached is fresh, so once the standby catches up nothing stale is served."""
    everything = {f"log {i}" for i in range(5)}
    during, after, _ = paused_replica_scenario(replica_pair, stack)
    assert during == everything
    assert after == everything
    assert stack[0].extensions["collector"].cache.client.zscore(f"{stack[4].key_prefix}cache:fence",
                                                                f"logs:{DEVICE}") is not None


def test_without_the_fence_the_same_scenario_caches_a_stale_answer(replica_pair, stack):
    """The test above can fail: with the fence off (what the cache did before), the answer
    read from the paused standby is cached under the fresh version and outlives the lag."""
    stack[0].extensions["collector"].cache.fenced = False
    during, after, source = paused_replica_scenario(replica_pair, stack)
    assert during == {"log 0", "log 1", "log 2"}
    assert (after, source) == ({"log 0", "log 1", "log 2"}, "cache")  # stale until LOGS_CACHE_TTL


def test_workers_not_told_of_the_replica_leave_cached_reads_to_the_primary(replica_pair, stack):
    """No fence set at all (the workers lack DATABASE_READ_URL): nothing is known of what
    the replica lacks, so cached reads go to the primary, and stay fresh."""
    primary, standby = replica_pair
    app, web, client, conn, settings = stack
    worker_settings = dataclasses.replace(settings, database_read_url="")
    caught_up(primary, standby)  # past the fixture's TRUNCATE, whose lock would block the standby's reads
    pause(standby)
    logs = [{"device_id": DEVICE, "log_level": "INFO", "message": f"log {i}"} for i in range(2)]
    assert web.post("/api/logs/batch", json={"logs": logs}).status_code == 200
    drain_all(client, conn, worker_settings)
    assert not client.exists(f"{settings.key_prefix}cache:fence")
    assert messages(web, f"/api/logs/{DEVICE}") == ({"log 0", "log 1"}, "database")
    assert messages(web, f"/api/logs?device_id={DEVICE}")[0] == set()  # the paused standby has none


def test_a_down_replica_fails_reads_with_503_and_shows_in_health(replica_pair, stack):
    """Last in this module: it stops the standby."""
    _, standby = replica_pair
    _, web, *_ = stack
    standby.stop("immediate")
    response = web.get(f"/api/logs?device_id={DEVICE}")
    assert response.status_code == 503 and response.get_json()["error"] == "database_unavailable"
    health = web.get("/health")
    assert health.status_code == 503
    assert health.get_json()["checks"] == {"redis": True, "postgres": True, "postgres_read": False}


def test_settings_without_a_read_url_read_the_primary(base_settings):
    settings = dataclasses.replace(base_settings, key_prefix=f"{base_settings.key_prefix}{uuid.uuid4().hex[:8]}:")
    assert not settings.read_replica
    app = create_app(settings)
    backends = app.extensions["collector"]
    assert backends.read_db is backends.db and not backends.cache.fenced
    assert "postgres_read" not in app.test_client().get("/health").get_json()["checks"]
    backends.close()
