"""Upgrading a deployment whose unpartitioned `logs` holds 200,000 rows to the
partitioned table (migration 0007 and `python -m collector.migrate`), with the API
taking logs and the worker draining them throughout: every row is kept exactly once,
and the counters still agree with the table."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import psycopg
import pytest
import redis
from psycopg import sql

from collector.core.settings import load_settings
from collector.devtools.processes import ROOT, wait_until
from collector.pipeline import codec, group
from collector.store import logs as storage
from collector.store.migrations import apply_migrations
from tests.conftest import _admin, database_url
from tests.load import Load
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LEGACY_ROWS = 200_000

FILL_LEGACY = """
    INSERT INTO logs (stream, stream_id, device_id, log_level, message, log_data, created_at, received_at)
    SELECT %(stream)s, (%(ms0)s::bigint + i * 1000)::text || '-0', 'old-' || (i %% 100),
           (ARRAY['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'])[1 + i %% 5], 'legacy ' || i,
           ('{"i":' || i || '}')::json, now(), now()
    FROM generate_series(1, %(n)s) AS i
"""


@pytest.fixture
def old_database(run_id):
    name = f"collector_test_{run_id}_upgrade"
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    url = database_url(name)
    yield url
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_upgrade_keeps_every_row_once_while_the_stack_runs(old_database, base_settings, tmp_path, request):
    prefix = f"{base_settings.key_prefix}upgrade:"
    settings = load_settings({}, redis_url=base_settings.redis_url, database_url=old_database, key_prefix=prefix)
    client = redis.Redis.from_url(settings.redis_url)
    group.ensure_group(client, settings.stream, settings.consumer_group)
    identity = group.stream_identity(client, settings.stream, client.get(group.epoch_key(settings.stream)))

    # The deployment before: migrations up to 0006, 200,000 rows over the last three days.
    apply_migrations(old_database, upto="0006.log-data-json")
    ms0 = int((time.time() - 3 * 86400) * 1000)
    # One entry stored but never acknowledged when the upgrade begins (a worker died between
    # its commit and its XACK): the upgraded drain stores it again, the copy must skip it.
    log = {"device_id": "old-x", "log_level": "ERROR", "message": "in doubt", "log_data": None, "timestamp": None}
    in_doubt = client.xadd(settings.stream, codec.encode_entry(log, dt.datetime.now(dt.UTC))).decode()
    with psycopg.connect(old_database, autocommit=True) as conn:
        conn.execute(FILL_LEGACY, {"stream": identity, "ms0": ms0, "n": LEGACY_ROWS})
        conn.execute("INSERT INTO logs (stream, stream_id, device_id, log_level, message, created_at, received_at)"
                     " VALUES (%s, %s, 'old-x', 'ERROR', 'in doubt', now(), now())", (identity, in_doubt))
        conn.execute("INSERT INTO log_counts (writer, log_level, n)"
                     " SELECT 'old-worker', log_level, count(*) FROM logs GROUP BY log_level")

    # The upgrade: the SQL migration (a rename, a moment), then the new code runs while
    # `make migrate`'s copy moves the old rows across.
    assert apply_migrations(old_database) == ["0007.partitioned-logs", "0008.log-search"]
    stack = Stack({"REDIS_URL": settings.redis_url, "DATABASE_URL": old_database, "KEY_PREFIX": prefix,
                   "DRAIN_INTERVAL": "0.5"}, tmp_path)
    request.addfinalizer(stack.stop)
    api = stack.start_api(0)
    stack.start_worker()
    stack.start_beat()
    request.addfinalizer(lambda: sys.stderr.write(f"--- worker (tail) ---\n{stack.tail('worker')}\n"))
    load = Load(api, target=10**9, batch=10, threads=4, tag="during").start()
    request.addfinalizer(load.stop)

    def new_rows() -> int:
        with psycopg.connect(old_database) as conn:
            return conn.execute("SELECT count(*) FROM logs WHERE message LIKE 'during %'").fetchone()[0]

    wait_until(lambda: new_rows() > 0, 60, "the upgraded drain to store new logs")
    before_copy = new_rows()
    copy = subprocess.run([sys.executable, "-m", "collector.migrate"], cwd=ROOT, capture_output=True, text=True,
                          env={**stack.env, "DATABASE_URL": old_database}, timeout=600)
    assert copy.returncode == 0, copy.stderr
    assert "moved" in copy.stdout and "200,001 rows" in copy.stdout, copy.stdout
    assert new_rows() > before_copy, "the drain did not go on during the copy"
    load.stop()
    accepted = list(load.accepted)
    assert accepted and not load.refused

    expected = LEGACY_ROWS + 1 + len(accepted)
    with psycopg.connect(old_database, autocommit=True) as conn:
        wait_until(lambda: conn.execute("SELECT count(*) FROM logs").fetchone()[0] >= expected, 120,
                   "every accepted log to be stored")
        assert conn.execute("SELECT to_regclass('logs_legacy')").fetchone()[0] is None
        total, identities, ids = conn.execute(
            "SELECT count(*), count(DISTINCT (stream, received_at, entry_seq)), count(DISTINCT id) FROM logs"
        ).fetchone()
        assert total == identities == ids == expected
        stored = {r[0] for r in conn.execute("SELECT stream_entry_id(received_at, entry_seq) FROM logs")}
        assert set(accepted) <= stored and in_doubt in stored
        assert conn.execute("SELECT count(*) FROM logs WHERE message LIKE 'legacy %'").fetchone()[0] == LEGACY_ROWS
        # The old rows sit in day partitions by their entries' time, none in the default one.
        assert conn.execute("SELECT count(*) FROM logs_default").fetchone()[0] == 0
        stats = storage.table_stats(conn)
        by_level = dict(conn.execute("SELECT log_level::text, count(*) FROM logs GROUP BY 1").fetchall())
        assert stats["total_logs"] == expected and all(stats["logs_by_level"][k] == v for k, v in by_level.items())
        assert conn.execute("SELECT count(*) FROM log_counts WHERE day = '-infinity'").fetchone()[0] == 0
    client.close()
