"""One JSON error shape for every failure, registered centrally.

    {"error": "<code>", "message": "<human text>", "fields": {...}}   (fields only for validation)

Devices parse JSON, so even Flask's own 404/405/413 are rewritten here. The answers
made before a request reaches Flask have the same shape: nginx's own
(nginx/collector.conf.template) and Gunicorn's (collector/web/gunicorn_worker.py);
docs/limits.md lists them all.
"""

from __future__ import annotations

import logging

import psycopg
import psycopg_pool
import redis
from flask import Flask, jsonify, request
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkExtension, InvalidChunkSize
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from collector.core import metrics
from collector.pipeline import counters
from collector.web.extensions import backends, settings

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str, fields: dict | None = None,
                 retry_after: int = 0, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.fields = status, error, message, fields
        self.retry_after, self.headers = retry_after, headers or {}


class Overloaded(ApiError):
    """The backlog is over the high-water mark: 503 with Retry-After until it drains."""

    def __init__(self, backlog: int, memory_ratio: float) -> None:
        super().__init__(503, "overloaded",
                         f"The collector is overloaded ({backlog} logs waiting to be stored, Redis memory at "
                         f"{memory_ratio:.0%}); retry later")


def error_response(status: int, error: str, message: str, fields: dict | None = None, retry_after: int = 0):
    body = {"error": error, "message": message}
    if fields is not None:
        body["fields"] = fields
    response = jsonify(body)
    response.status_code = status
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response


INGEST_ENDPOINTS = {"api.ingest_log", "api.ingest_batch", "api.otlp_logs"}


def _count_if_rejected_log(status: int, error: str) -> None:
    """Rejected ingest requests are part of the pipeline's accounting (by reason)."""
    if 400 <= status < 500 and request.endpoint in INGEST_ENDPOINTS:
        counters.add_rejected(backends().redis, settings(), error)
        metrics.REQUESTS_REJECTED.labels(error).inc()


def register_error_handlers(app: Flask) -> None:
    retry_after = app.config["SETTINGS"].retry_after

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        _count_if_rejected_log(exc.status, exc.error)
        response = error_response(exc.status, exc.error, exc.message, exc.fields,
                                  exc.retry_after or (retry_after if exc.status == 503 else 0))
        response.headers.update(exc.headers)
        return response

    @app.errorhandler(ValidationError)
    def validation_error(exc: ValidationError):
        _count_if_rejected_log(422, "validation_failed")
        return error_response(422, "validation_failed", "The request body or query is invalid; see fields.",
                              _stringify_keys(exc.messages))

    @app.errorhandler(redis.RedisError)
    def redis_down(exc: redis.RedisError):
        log.warning("redis error: %r", exc)
        return error_response(503, "redis_unavailable", f"Redis is unavailable ({type(exc).__name__}); retry later",
                              retry_after=retry_after)

    @app.errorhandler(psycopg.OperationalError)
    @app.errorhandler(psycopg_pool.PoolTimeout)
    def database_down(exc: Exception):
        log.warning("database error: %r", exc)
        return error_response(503, "database_unavailable",
                              f"PostgreSQL is unavailable ({type(exc).__name__}); retry later",
                              retry_after=retry_after)

    # Gunicorn decodes a chunked body while the view reads it, so a malformed one is
    # the client's error raised inside the app (behind nginx it never is: nginx reads
    # the whole body and sends it with a Content-Length).
    @app.errorhandler(InvalidChunkSize)
    @app.errorhandler(ChunkMissingTerminator)
    @app.errorhandler(InvalidChunkExtension)
    def malformed_chunked_body(exc: Exception):
        _count_if_rejected_log(400, "bad_request")
        return error_response(400, "bad_request", f"The chunked request body is malformed: {exc}"[:300])

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        name = (exc.name or "error").lower().replace(" ", "_")
        _count_if_rejected_log(exc.code or 500, name)
        return error_response(exc.code or 500, name, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal_error", "An unexpected error occurred; it has been logged.")


def _stringify_keys(messages):
    """marshmallow keys list errors by int index; JSON object keys must be strings."""
    if isinstance(messages, dict):
        return {str(k): _stringify_keys(v) for k, v in messages.items()}
    if isinstance(messages, list):
        return [_stringify_keys(m) for m in messages]
    return messages
