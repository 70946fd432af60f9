"""What the app factory attaches to the Flask app, and the accessors views use to reach it."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app
from psycopg_pool import ConnectionPool

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
    shards: tuple[Settings, ...]  # pipeline.shards.shards(settings), kept: the hot path needs them per request
    appenders: tuple[Appender, ...]  # one per shard, in shard order
    keyring: Keyring
    cache: QueryCache
    # The pool the query views read (collector.web.query): DATABASE_READ_URL's when it is
    # set, else the primary's own `db`.
    read_db: ConnectionPool

    @property
    def replica(self) -> bool:
        return self.read_db is not self.db

    def close(self) -> None:
        """Close the pools (tests; a process closes them at exit)."""
        if self.replica:
            self.read_db.close()
        self.db.close()


def backends() -> Backends:
    return current_app.extensions["collector"]


def settings() -> Settings:
    return current_app.config["SETTINGS"]
