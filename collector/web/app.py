"""The Flask application factory: Gunicorn, the tests and the CLI all call create_app()."""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import time
from typing import Any

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import JSONProvider
from psycopg_pool import ConnectionPool

from collector.core import metrics
from collector.core.clients import check_eviction_policy, make_cache_redis, make_db_pool, make_redis
from collector.core.logging_setup import configure_logging, log_context
from collector.core.settings import Settings, load_settings
from collector.pipeline import counters, shards
from collector.pipeline.backpressure import Gate
from collector.pipeline.cache import QueryCache
from collector.pipeline.keyring import Keyring
from collector.pipeline.layout import check_layout
from collector.pipeline.producer import Appender
from collector.web import auth
from collector.web.compression import install_decompression
from collector.web.errors import register_error_handlers
from collector.web.extensions import Backends
from collector.web.openapi import docs
from collector.web.routes import api


def _isoformat(value: object) -> str:
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_METHODS = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"}


class OrjsonProvider(JSONProvider):
    """orjson for responses: several times faster than the stdlib on the hot path."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
        except orjson.JSONEncodeError:
            # Only what orjson cannot write: more than its 254 levels of nesting, which a
            # log stored before log_data's depth limit may reach inside an answer. The
            # stdlib writes the same JSON, slower; new data never comes here.
            return json.dumps(obj, default=_isoformat, ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def _open_pool(settings: Settings, name: str, url: str | None = None) -> ConnectionPool:
    """A pool for the API (statement_timeout QUERY_TIMEOUT_MS), opened without waiting: the API
    must start, and keep accepting logs, while PostgreSQL (or a replica) is down."""
    pool = make_db_pool(settings, settings.db_pool_size, name=name,
                        statement_timeout=settings.query_timeout_ms / 1000, url=url)
    pool.open(wait=False)
    atexit.register(pool.close)
    return pool


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app: defaults, then the environment, then `overrides` (tests)."""
    settings = settings or load_settings(**overrides)
    configure_logging(settings)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config.update(SETTINGS=settings, MAX_CONTENT_LENGTH=settings.max_body_bytes)

    db = _open_pool(settings, f"collector-api-{settings.instance_name}")
    # The query views' database: a read replica (DATABASE_READ_URL), else the primary.
    read_db = (_open_pool(settings, f"collector-api-read-{settings.instance_name}", settings.database_read_url)
               if settings.read_replica else db)
    client = make_redis(settings)
    check_eviction_policy(client)
    check_layout(client, settings)
    stream_shards = shards.shards(settings)
    appenders = tuple(Appender(client, shard.stream, counters.accepted_counter(shard)) for shard in stream_shards)
    app.extensions["collector"] = Backends(redis=client, db=db, read_db=read_db, gate=Gate(settings),
                                           shards=stream_shards, appenders=appenders,
                                           keyring=Keyring(client, settings),
                                           cache=QueryCache(make_cache_redis(settings, client), settings))

    register_error_handlers(app)
    _instrument(app)
    auth.register(app)
    install_decompression(app)  # compressed ingest bodies, within MAX_BODY_BYTES once inflated (after the key check)
    app.register_blueprint(api)
    app.register_blueprint(docs)
    logging.getLogger(__name__).info("app ready", extra={"instance": settings.instance_name})
    return app


def _instrument(app: Flask) -> None:
    """Request latency per endpoint, and the request id on every log line of a request."""

    @app.before_request
    def start() -> None:
        g.started = time.perf_counter()
        request_id = request.headers.get("X-Request-Id")
        g.log_token = log_context.set({"request_id": request_id} if request_id else None)

    @app.after_request
    def observe(response: Response) -> Response:
        endpoint = request.url_rule.endpoint if request.url_rule else "unmatched"
        method = request.method if request.method in _METHODS else "other"  # bounded label values
        metrics.REQUEST_SECONDS.labels(endpoint, method, response.status_code).observe(
            time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.teardown_request
    def forget(exc: BaseException | None) -> None:
        token = g.pop("log_token", None)
        if token is not None:
            log_context.reset(token)
