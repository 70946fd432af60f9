"""The Flask application factory: Gunicorn, the tests and the CLI all call create_app()."""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from flask import Flask, current_app
from flask.json.provider import JSONProvider
from psycopg_pool import ConnectionPool

from collector.backpressure import Gate
from collector.clients import make_db_pool, make_redis
from collector.errors import register_error_handlers
from collector.logging_setup import configure_logging
from collector.settings import Settings, load_settings
from collector.stream import Appender


class OrjsonProvider(JSONProvider):
    """orjson for responses: several times faster than the stdlib on the hot path."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


@dataclass
class Backends:
    redis: redis.Redis
    db: ConnectionPool
    gate: Gate
    appender: Appender


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app: defaults, then the environment, then `overrides` (tests)."""
    settings = settings or load_settings(**overrides)
    configure_logging(settings)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(SETTINGS=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes)

    db = make_db_pool(settings, settings.db_pool_size, name=f"collector-api-{settings.instance_name}")
    # Without waiting: the API must start, and keep accepting logs, while PostgreSQL is down.
    db.open(wait=False)
    atexit.register(db.close)
    client = make_redis(settings)
    app.extensions["collector"] = Backends(redis=client, db=db, gate=Gate(settings),
                                           appender=Appender(client, settings))

    register_error_handlers(app)
    from collector.api import api
    from collector.openapi import docs

    app.register_blueprint(api)
    app.register_blueprint(docs)
    logging.getLogger(__name__).info("app ready", extra={"instance": settings.instance_name})
    return app


def backends() -> Backends:
    return current_app.extensions["collector"]


def settings() -> Settings:
    return current_app.config["SETTINGS"]
