"""Ingest, the hot path: parse, validate, XADD, answer.

It never touches PostgreSQL, so it keeps accepting logs while the database is down.
A request with an `Idempotency-Key` header (the IETF httpapi draft's) is queued
at most once: its answer is remembered for IDEMPOTENCY_TTL seconds, and a repeat
with the same body gets the same answer (`Idempotent-Replayed: true`) and queues
nothing. Remembering and queueing are one Redis script (pipeline.producer), so
concurrent repeats wait for the first in Redis and are answered as replays.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

import orjson
from flask import request
from marshmallow import Schema

from collector.core import metrics
from collector.core.settings import Settings
from collector.pipeline import shards
from collector.pipeline.admission import Admission, Credential, Limits, Remember
from collector.pipeline.codec import encode_entry
from collector.pipeline.keyring import registry_key, uses_key
from collector.pipeline.producer import Appender
from collector.web.auth import Unauthorized, forbidden, principal
from collector.web.errors import ApiError, Overloaded
from collector.web.extensions import backends, settings
from collector.web.logdata import AmbiguousNumber
from collector.web.schemas import batch_schema, check_sequence_pairs, log_schema


def _raw_body() -> bytes:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be application/json, not {request.mimetype or 'missing'!r}.")
    body = request.get_data(cache=False)  # raises 413 past MAX_BODY_BYTES
    if not body or body.isspace():
        raise ApiError(400, "empty_body", "The request body is empty; send a JSON object.")
    return body


def _malformed(exc: Exception) -> ApiError:
    return ApiError(400, "malformed_json", f"The request body is not valid JSON: {exc}.")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _exact_json(raw: bytes) -> object:
    """The body read by the standard library, which keeps every integer exact and reads
    1e400 as inf, so that validation can refuse them naming the field. About 4 times
    slower than orjson: only for the rare bodies orjson cannot read exactly."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, "malformed_json", "The request body is nested too deeply.") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of more than 4300 digits
        raise _malformed(exc) from None


def _load(schema_for: Callable[[bool], Schema]) -> tuple[object, dict]:
    """(body, validated) for this request; `schema_for(orjson_parsed)` gives the schema.

    orjson reads the body, except that it reads an integer beyond 64 bits as a float
    (2**64 + 1 would be stored as 2**64) and refuses 1e400 as a syntax error. Both are
    rare, and then the body is read again exactly: a log_data float that large
    (AmbiguousNumber) or an infinite number costs that request a second parse, and
    the answer is a 422 naming the field rather than a silently changed number or a 400.
    """
    raw = _raw_body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if not exc.msg.startswith("number is infinity"):
            raise _malformed(exc) from None
    else:
        try:
            return body, schema_for(True).load(body)
        except AmbiguousNumber:
            pass
    body = _exact_json(raw)
    return body, schema_for(False).load(body)


IDEMPOTENCY_KEY_RE = re.compile(r"\A[\x21-\x7e]{1,255}\Z")  # 1-255 visible ASCII characters


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY_RE.match(key):
        raise ApiError(422, "validation_failed", "The Idempotency-Key header is invalid; see fields.",
                       {"Idempotency-Key": ["Must be 1 to 255 visible ASCII characters."]})
    return key


def _fingerprint(body: object) -> str:
    """The same logs give the same fingerprint however the JSON was spelled (key order, spacing)."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(request.path.encode() + b"\0" + canonical, digest_size=16).hexdigest()


class _Ask(NamedTuple):
    """What every shard's part of one request shares."""

    key: str | None  # its Idempotency-Key
    fingerprint: str  # of its body, with a key (taken once, however many shards it spans)
    first_device: str  # the key's scope without a credential: the request's first log's device
    received: str


def _admission(shard: Settings, logs: list[dict], ask: _Ask) -> Admission | None:
    """What the admission script must check for this request's logs on one stream shard
    (their keys all carry the shard's hash tag); None when plain XADDs do."""
    s = settings()
    who = principal()
    credential = None
    if who is not None and who.key_id is not None:
        credential = Credential(registry_key(shard), uses_key(shard), who.key_id, who.digest)
    remember = None
    if ask.key is not None:
        # Idempotency keys are chosen by clients: scope them by who is speaking, the
        # credential when there is one, else the device (of the request's first log).
        scope = f"k:{credential.key_id}" if credential else f"d:{ask.first_device}"
        remember = Remember(key=shard.local_key(f"idem:{scope}:{ask.key}"), fingerprint=ask.fingerprint,
                            ttl=s.idempotency_ttl)
    limits = None
    rate = who.rate_limit if who is not None and who.rate_limit is not None else s.rate_limit_per_device
    if rate > 0:
        burst = who.rate_burst if who is not None and who.rate_burst is not None else s.rate_limit_burst
        costs: dict[str, int] = {}
        for log in logs:
            costs[log["device_id"]] = costs.get(log["device_id"], 0) + 1
        limits = Limits(rate, burst, [(device, shard.local_key(f"rl:{device}"), n) for device, n in costs.items()])
    if remember is None and limits is None and credential is None:
        return None
    return Admission(received_at=ask.received, remember=remember, credential=credential, limits=limits)


def _check_scope(logs: list[dict]) -> None:
    who = principal()
    if who is None:
        return
    for index, log in enumerate(logs):
        if not who.may_send_for(log["device_id"]):
            raise forbidden(f"logs[{index}]: device {log['device_id']!r} is outside this key's scope ({who.scope}).")


def _rate_headers(admission: Admission) -> dict[str, str]:
    """The IETF httpapi draft's RateLimit / RateLimit-Policy (-07 on), and the older three."""
    limits = admission.limits
    if limits is None or not admission.device:
        return {}
    window = max(1, math.ceil(limits.burst / limits.rate))
    reset = max(0, math.ceil((limits.burst - admission.tokens_left) / limits.rate))
    return {
        "RateLimit-Policy": f'"device";q={limits.burst};w={window}',
        "RateLimit": f'"device";r={admission.tokens_left};t={reset}',
        "RateLimit-Limit": str(limits.burst),
        "RateLimit-Remaining": str(admission.tokens_left),
        "RateLimit-Reset": str(reset),
    }


def enqueue(logs: list[dict], body: object, key: str | None) -> tuple[list[str], str, dict]:
    """Queue validated logs (log_schema's output), after the scope, admission and rate-limit
    checks; returns (ids, received_at, extra response headers). `body` is what the
    Idempotency-Key fingerprint is taken of: JSON-able, the same for the same logs.
    Every ingest endpoint (/api/log, /api/logs/batch, OTLP's /v1/logs) queues through here.

    With STREAM_SHARDS > 1 a request whose devices fall in several shards is queued by one
    transaction per shard, in shard order, each all-or-nothing. Everything that can refuse
    the whole request (validation, scope, back-pressure) has been checked before the
    first; a shard that still refuses (a rate limit, a Redis error, a reused
    Idempotency-Key, a key revoked meanwhile) leaves the earlier shards' logs queued, and
    the answer is that shard's error. With an Idempotency-Key
    (remembered per shard) the client's retry is then answered from the queued shards'
    records and queues only the rest: exactly once (docs/scaling.md).
    """
    _check_scope(logs)
    b = backends()
    if not b.gate.is_open(b.redis):
        raise Overloaded(b.gate.backlog, b.gate.memory_ratio)
    now = dt.datetime.now(dt.UTC)
    ask = _Ask(key, _fingerprint(body) if key is not None else "", logs[0]["device_id"], now.isoformat())
    entries = [encode_entry(log, now) for log in logs]
    s = settings()
    if s.stream_shards == 1:
        return _enqueue_shard(b.shards[0], b.appenders[0], range(len(logs)), logs, entries, ask)[:3]
    parts = shards.split(s, [log["device_id"] for log in logs])
    if len(parts) == 1:
        [index] = parts
        return _enqueue_shard(b.shards[index], b.appenders[index], range(len(logs)), logs, entries, ask)[:3]
    ids: list[str] = [""] * len(logs)
    first_received, headers, tokens_left, replayed = None, {}, None, True
    for index, positions in sorted(parts.items()):
        part_ids, part_received, part_headers, admission = _enqueue_shard(
            b.shards[index], b.appenders[index], positions, [logs[p] for p in positions],
            [entries[p] for p in positions], ask)
        for position, entry_id in zip(positions, part_ids, strict=True):
            ids[position] = entry_id
        first_received = first_received or part_received
        replayed = replayed and "Idempotent-Replayed" in part_headers
        part_headers.pop("Idempotent-Replayed", None)
        if admission is not None and admission.device and (tokens_left is None or admission.tokens_left < tokens_left):
            headers, tokens_left = part_headers, admission.tokens_left  # the most constrained device's
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return ids, first_received, headers


def _enqueue_shard(shard: Settings, appender: Appender, positions: Sequence[int], logs: list[dict],
                   entries: list[dict], ask: _Ask) -> tuple[list[str], str, dict, Admission | None]:
    """Queue one shard's part of a request (`positions`: its logs' places in the request)."""
    admission = _admission(shard, logs, ask)
    if admission is None:
        ids = appender.append(entries, request.content_length or 0)
        metrics.LOGS_ACCEPTED.inc(len(ids))
        return ids, ask.received, {}, None
    result = appender.admit(entries, admission, request.content_length or 0)
    if result.status == "unauthorized":  # revoked since this process cached it
        raise Unauthorized("The key is unknown or revoked.")
    headers = _rate_headers(result)
    if result.status == "limited":
        index = positions[next(i for i, log in enumerate(logs) if log["device_id"] == result.device)]
        if result.retry_after_ms < 0:
            message = (f"logs[{index}]: device {result.device!r} may send at most {result.limits.burst} logs "
                       "at once; split the request.")
        else:
            message = f"logs[{index}]: device {result.device!r} is over its rate limit; retry later."
        retry = 1 if result.retry_after_ms < 0 else max(1, math.ceil(result.retry_after_ms / 1000))
        raise ApiError(429, "rate_limited", message, retry_after=retry, headers=headers)
    if remember := admission.remember:
        if result.fingerprint != remember.fingerprint:
            raise ApiError(422, "idempotency_key_reused",
                           "This Idempotency-Key was used for a different request; use a new key for new logs.",
                           {"Idempotency-Key": ["Already used with a different body."]})
        if result.status == "replayed":
            headers["Idempotent-Replayed"] = "true"
    if result.status == "queued":
        metrics.LOGS_ACCEPTED.inc(len(result.ids))
    return result.ids, result.received_at, headers, result


def ingest_log():
    s = settings()
    key = idempotency_key()
    body, log = _load(lambda orjson_parsed: log_schema(s.max_message_chars, s.max_log_data_bytes, orjson_parsed))
    check_sequence_pairs([log], in_batch=False)
    [entry_id], received, headers = enqueue([log], body, key)
    return {"status": "queued", "message_id": entry_id, "received_at": received}, 200, headers


def ingest_batch():
    s = settings()
    key = idempotency_key()
    body, batch = _load(lambda orjson_parsed: batch_schema(s.max_batch_logs, s.max_message_chars,
                                                            s.max_log_data_bytes, orjson_parsed))
    check_sequence_pairs(batch["logs"], in_batch=True)
    ids, received, headers = enqueue(batch["logs"], body, key)
    return {"status": "queued", "count": len(ids), "message_ids": ids, "received_at": received}, 200, headers
