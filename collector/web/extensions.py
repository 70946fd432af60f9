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
    appender: Appender
    keyring: Keyring
    cache: QueryCache


def backends() -> Backends:
    return current_app.extensions["collector"]


def settings() -> Settings:
    return current_app.config["SETTINGS"]
