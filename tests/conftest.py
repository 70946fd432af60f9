"""Fixtures against the machine's real Redis and PostgreSQL, isolated per test run.

Every run gets its own database (collector_test_<id>, built with the real
migrations and dropped afterwards) and its own Redis key prefix (every key the
collector, Celery and the tests touch starts with it, and all are deleted at
the end), so the suite never reads or changes a user's data. Addresses come
from TEST_REDIS_URL / TEST_DATABASE_URL, defaulting to the local servers.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg import sql

from collector.core.settings import Settings, load_settings
from collector.devtools.servers import ensure_servers, stop_servers
from collector.store.migrations import migrate
from collector.web.app import create_app
from tests.load import Load

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


_own_servers: list = []


def pytest_sessionstart(session: pytest.Session) -> None:
    """Where nothing answers at the loopback test addresses, the suite brings a Redis and
    a PostgreSQL of its own (collector.devtools.servers, as `make run` does), stopped at
    the end: `make install && make test` on a machine with no servers running."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = (lambda m: reporter.write_line(f"[tests] {m}")) if reporter else print
    _own_servers.extend(ensure_servers(REDIS_URL, ADMIN_DATABASE_URL, say=say))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    stop_servers(_own_servers)


def database_url(name: str) -> str:
    """ADMIN_DATABASE_URL with another database name (settings want a URL)."""
    return urlunsplit(urlsplit(ADMIN_DATABASE_URL)._replace(path=f"/{name}"))


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def test_database(run_id: str):
    """A fresh database with the migrations applied, dropped after the run."""
    name = f"collector_test_{run_id}"
    url = database_url(name)
    migrate(url)
    yield url
    _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def key_prefix(run_id: str):
    prefix = f"test:{run_id}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    # kombu also keeps a few keys under the prefix with its own separators
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="session")
def base_settings(test_database: str, key_prefix: str) -> Settings:
    # Keys are off: these tests are about the pipeline; tests of keys turn them on.
    return load_settings(
        {},
        redis_url=REDIS_URL,
        database_url=test_database,
        key_prefix=key_prefix,
        instance_name="pytest",
        auth_enabled=False,
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """A per-test key prefix: stream, cache and counters of one test are its own."""
    return dataclasses.replace(base_settings, key_prefix=f"{base_settings.key_prefix}{uuid.uuid4().hex[:8]}:")


@pytest.fixture
def redis_client(settings: Settings):
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def truncate_all_tables(database_url: str) -> list[str]:
    """Empty every table of the database (yoyo's own bookkeeping and log_streams excepted)
    and restart its sequences. The list comes from the catalog, so a new migration's table is
    emptied too; returns the tables, schema-qualified."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            r" AND tablename NOT LIKE '\_yoyo%' AND tablename NOT LIKE 'yoyo\_%'"
            # A stream's id never changes (store.logs caches it per connection), as in production.
            " AND tablename <> 'log_streams'"
            " ORDER BY 1, 2").fetchall()
        if tables:
            conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(
                sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in tables)))
    return [f"{schema}.{table}" for schema, table in tables]


@pytest.fixture(scope="session")
def empty_tables(test_database: str) -> Callable[[], list[str]]:
    """Call it to empty every table of the test database: the one way tests clean up
    (the `db` fixture calls it; fixtures of wider scope, and tests that run real
    processes against the database, call it themselves)."""
    return lambda: truncate_all_tables(test_database)


@pytest.fixture
def db(base_settings: Settings, empty_tables: Callable[[], list[str]]):
    """A connection to the test database, every table of it empty."""
    empty_tables()
    with psycopg.connect(base_settings.database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def make_app():
    """create_app for settings a test builds itself; every app's pool is closed afterwards."""
    apps = []

    def make(settings: Settings):
        apps.append(create_app(settings))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["collector"].close()


@pytest.fixture
def app(settings: Settings, db, make_app):
    return make_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def fresh_db(base_settings, empty_tables):
    """The test database's URL, every table of it empty."""
    empty_tables()
    return base_settings.database_url


@pytest.fixture
def start_load():
    """Load(...).start(), stopped at the end of the test even when it fails half-way."""
    loads: list[Load] = []

    def start(*args, **kwargs) -> Load:
        loads.append(Load(*args, **kwargs).start())
        return loads[-1]

    yield start
    for load in loads:
        load.stop()
