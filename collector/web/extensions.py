"""What the app factory attaches to the Flask app, and the accessors views use to reach it."""

from __future__ import annotations

import atexit
from dataclasses import dataclass

import redis
from flask import current_app
from psycopg_pool import ConnectionPool

from collector.core.clients import make_db_pool
from collector.core.settings import Settings
from collector.pipeline.backpressure import Gate
from collector.pipeline.cache import QueryCache
from collector.pipeline.keyring import Keyring
from collector.pipeline.producer import Appender


@dataclass
class Backends:
    redis: redis.Redis
    db: ConnectionPool
    gate: Gate
    appender: Appender
    keyring: Keyring
    cache: QueryCache
    # The pool the query views read (collector.web.query): DATABASE_READ_URL's when it is
    # set, else the primary's own `db`. Built with the rest, in the factory.
    read_db: ConnectionPool | None = None

    def __post_init__(self) -> None:
        if self.read_db is None:
            self.read_db = make_read_pool(self.cache.settings) or self.db

    @property
    def replica(self) -> bool:
        return self.read_db is not self.db

    def close(self) -> None:
        """Close the pools (tests; a process closes them at exit)."""
        if self.replica:
            self.read_db.close()
        self.db.close()


def make_read_pool(settings: Settings) -> ConnectionPool | None:
    """The read replica's pool, built like the primary's (size, timeouts, statement_timeout)
    and opened without waiting, so a down replica never stops the API from starting; None
    when DATABASE_READ_URL is empty (or names the primary)."""
    if not settings.read_replica:
        return None
    pool = make_db_pool(settings, settings.db_pool_size, name=f"collector-api-read-{settings.instance_name}",
                        statement_timeout=settings.query_timeout_ms / 1000, url=settings.database_read_url)
    pool.open(wait=False)
    atexit.register(pool.close)
    return pool


def backends() -> Backends:
    return current_app.extensions["collector"]


def settings() -> Settings:
    return current_app.config["SETTINGS"]
