"""HTTP endpoints, seed-compatible: ingest, per-device queries, stats, health.

Ingest is the hot path: parse, validate, XADD, answer. It never touches
PostgreSQL, so it keeps accepting logs while the database is down.
"""

from __future__ import annotations

import datetime as dt
import time

import orjson
from flask import Blueprint, Response, g, request

from collector import cache, counters, metrics, storage, stream
from collector.app import backends, settings
from collector.errors import ApiError, Overloaded
from collector.schemas import (
    DEVICE_ID_RE,
    DeadLetterOut,
    LogOut,
    batch_schema,
    dead_letter_args_schema,
    log_schema,
    query_args_schema,
)

api = Blueprint("api", __name__)
_log_out = LogOut(many=True)
_dead_letter_out = DeadLetterOut(many=True)
_METHODS = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"}


@api.before_app_request
def _start_timer() -> None:
    g.started = time.perf_counter()


@api.after_app_request
def _observe(response: Response) -> Response:
    endpoint = request.url_rule.endpoint if request.url_rule else "unmatched"
    method = request.method if request.method in _METHODS else "other"  # bounded label values
    metrics.REQUEST_SECONDS.labels(endpoint, method, response.status_code).observe(
        time.perf_counter() - g.get("started", time.perf_counter()))
    return response


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _json_body() -> object:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}.")
    body = request.get_data(cache=False)  # raises 413 past MAX_BODY_BYTES
    if not body or body.isspace():
        raise ApiError(400, "empty_body", "The request body is empty; send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"The request body is not valid JSON: {exc}.") from None


def _enqueue(logs: list[dict]) -> tuple[list[str], dt.datetime]:
    b = backends()
    if not b.gate.is_open(b.redis):
        raise Overloaded(b.gate.backlog, b.gate.memory_ratio)
    received = _utcnow()
    ids = b.appender.append([stream.encode_entry(log, received) for log in logs], request.content_length or 0)
    metrics.LOGS_ACCEPTED.inc(len(ids))
    return ids, received


@api.post("/api/log")
def ingest_log():
    s = settings()
    log = log_schema(s.max_message_chars, s.max_log_data_bytes).load(_json_body())
    [entry_id], received = _enqueue([log])
    return {"status": "queued", "message_id": entry_id, "received_at": received.isoformat()}


@api.post("/api/logs/batch")
def ingest_batch():
    s = settings()
    batch = batch_schema(s.max_batch_logs, s.max_message_chars, s.max_log_data_bytes).load(_json_body())
    ids, received = _enqueue(batch["logs"])
    return {"status": "queued", "count": len(ids), "message_ids": ids, "received_at": received.isoformat()}


@api.get("/api/logs/<device_id>")
def device_logs(device_id: str):
    s = settings()
    if not DEVICE_ID_RE.match(device_id):
        raise ApiError(422, "validation_failed", "The device id in the path is invalid; see fields.",
                       {"device_id": ["Must be 1-100 characters: letters, digits and . _ : @ -."]})
    limit = query_args_schema(s.max_query_limit).load(request.args.to_dict())["limit"]
    b = backends()

    def from_database() -> list[dict]:
        with b.db.connection() as conn:
            return _log_out.dump(storage.device_logs(conn, device_id, limit))

    data, source = cache.cached(b.redis, s.key_prefix, cache.device_scope(device_id), str(limit),
                                s.logs_cache_ttl, from_database)
    return {"total": len(data), "source": source, "data": data}


@api.get("/api/stats")
def stats():
    s = settings()
    b = backends()

    def from_database() -> dict:
        with b.db.connection() as conn:
            return {**storage.table_stats(conn), "dead_lettered": storage.count_dead_letters(conn)}

    table, source = cache.cached(b.redis, s.key_prefix, cache.STATS_SCOPE, "table", s.stats_cache_ttl,
                                 from_database)
    dead_lettered = table.pop("dead_lettered")
    pipeline = stream.pipeline_stats(b.redis, s.stream, s.consumer_group)
    pipeline.update(persisted=table["total_logs"], dead_lettered=dead_lettered, **counters.read(b.redis, s))
    return {**table, "pipeline": pipeline, "source": source}


@api.get("/api/dead-letters")
def dead_letters():
    args = dead_letter_args_schema(settings().max_query_limit).load(request.args.to_dict())
    with backends().db.connection() as conn:
        rows = storage.list_dead_letters(conn, args["limit"], args["after_id"])
        total = storage.count_dead_letters(conn)
    return {"total": total, "data": _dead_letter_out.dump(rows)}


@api.get("/health")
def health():
    s = settings()
    b = backends()
    checks, errors = {}, {}
    started = time.perf_counter()
    try:
        b.redis.ping()
        checks["redis"] = True
    except Exception as exc:  # any failure is a failed check, reported by name
        checks["redis"], errors["redis"] = False, repr(exc)
    try:
        with b.db.connection(timeout=min(1.0, s.db_timeout)) as conn:
            storage.ping(conn)
        checks["postgres"] = True
    except Exception as exc:
        checks["postgres"], errors["postgres"] = False, repr(exc)
    healthy = all(checks.values())
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "instance": s.instance_name,
        "checks": checks,
        "timestamp": _utcnow().isoformat(),
        "seconds": round(time.perf_counter() - started, 4),
    }
    if errors:
        body["errors"] = errors
    headers = {} if healthy else {"Retry-After": str(s.retry_after)}
    return body, 200 if healthy else 503, headers


@api.get("/metrics")
def prometheus_metrics():
    body, content_type = metrics.render(backends().redis, settings())
    return Response(body, content_type=content_type)
