"""Reading logs back: a device's logs, its sequence audit, and the collector's stats
(cached, invalidated on commit)."""

from __future__ import annotations

from flask import request

from collector.core.model import DEVICE_ID_RE
from collector.pipeline import cache, counters
from collector.pipeline.group import pipeline_stats
from collector.store import deadletters, partitions, sequences
from collector.store import logs as storage
from collector.web.auth import forbidden, principal
from collector.web.errors import ApiError
from collector.web.extensions import backends, settings
from collector.web.schemas import LogOut, query_args_schema

_log_out = LogOut(many=True)
# Missing ranges listed per boot in the sequence audit; the total missing count is always exact.
MAX_MISSING_RANGES = 1000


def _check_device_id(device_id: str) -> None:
    if not DEVICE_ID_RE.match(device_id):
        raise ApiError(422, "validation_failed", "The device id in the path is invalid; see fields.",
                       {"device_id": ["Must be 1-100 characters: letters, digits and . _ : @ -."]})
    who = principal()
    if who is not None and not who.may_read(device_id):
        raise forbidden(f"Device {device_id!r} is outside this key's scope ({who.scope}).")


def device_logs(device_id: str):
    s = settings()
    _check_device_id(device_id)
    limit = query_args_schema(s.max_query_limit).load(request.args.to_dict())["limit"]
    b = backends()

    def from_database() -> list[dict]:
        with b.db.connection() as conn:
            return _log_out.dump(storage.device_logs(conn, device_id, limit))

    data, source = b.cache.cached(cache.device_scope(device_id), str(limit), s.logs_cache_ttl, from_database)
    return {"total": len(data), "source": source, "data": data}


def device_sequence(device_id: str):
    """Per boot_id: the seq numbers seen and the ones missing (lost before they reached us)."""
    _check_device_id(device_id)
    with backends().db.connection() as conn:
        boots = sequences.audit(conn, device_id, MAX_MISSING_RANGES)
    return {"device_id": device_id, "boots": boots}


def stats():
    s = settings()
    b = backends()

    def from_database() -> dict:
        with b.db.connection() as conn:
            return {**storage.table_stats(conn), "dead_lettered": deadletters.count(conn),
                    "expired": partitions.expired_totals(conn)}

    table, source = b.cache.cached(cache.STATS_SCOPE, "table", s.stats_cache_ttl, from_database)
    dead_lettered, expired = table.pop("dead_lettered"), table.pop("expired")
    pipeline = pipeline_stats(b.redis, s.stream, s.consumer_group)
    pipeline.update(persisted=table["total_logs"], dead_lettered=dead_lettered, **expired,
                    **counters.read(b.redis, s))
    return {**table, "pipeline": pipeline, "source": source}
