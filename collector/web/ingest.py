"""Ingest, the hot path: parse, validate, XADD, answer.

It never touches PostgreSQL, so it keeps accepting logs while the database is down.
"""

from __future__ import annotations

import datetime as dt

import orjson
from flask import request

from collector.core import metrics
from collector.pipeline.codec import encode_entry
from collector.web.errors import ApiError, Overloaded
from collector.web.extensions import backends, settings
from collector.web.schemas import batch_schema, log_schema


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
    received = dt.datetime.now(dt.UTC)
    ids = b.appender.append([encode_entry(log, received) for log in logs], request.content_length or 0)
    metrics.LOGS_ACCEPTED.inc(len(ids))
    return ids, received


def ingest_log():
    s = settings()
    log = log_schema(s.max_message_chars, s.max_log_data_bytes).load(_json_body())
    [entry_id], received = _enqueue([log])
    return {"status": "queued", "message_id": entry_id, "received_at": received.isoformat()}


def ingest_batch():
    s = settings()
    batch = batch_schema(s.max_batch_logs, s.max_message_chars, s.max_log_data_bytes).load(_json_body())
    ids, received = _enqueue(batch["logs"])
    return {"status": "queued", "count": len(ids), "message_ids": ids, "received_at": received.isoformat()}
