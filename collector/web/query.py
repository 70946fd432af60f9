"""Reading logs back: a device's logs, its sequence audit, and the collector's stats
(cached, invalidated on commit).

Every view here reads through `_read`: from the read replica when DATABASE_READ_URL is
set, else from the primary. A value about to be cached is read from the replica only
if the replica has replayed the scope's freshness fence (collector.pipeline.cache),
else from the primary, so a lagging replica can neither fill the cache with a stale
value nor hide a log that the next query must show once its entry is acknowledged.
Without a replica `_read` is the plain pool: no statement or round trip more."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

import psycopg
from flask import request

from collector.core.model import DEVICE_ID_RE
from collector.pipeline import cache, counters, shards
from collector.store import deadletters, partitions, search, sequences
from collector.store import logs as storage
from collector.store.search import LogFilter
from collector.web.auth import TOKEN_IN_QUERY, forbidden, principal
from collector.web.errors import ApiError
from collector.web.extensions import backends, settings
from collector.web.schemas import LogOut
from collector.web.search_schemas import DeviceOut, device_list_args_schema, query_args_schema

_log_out = LogOut(many=True)
_device_out = DeviceOut(many=True)
# Missing ranges listed per boot in the sequence audit; the total missing count is always exact.
MAX_MISSING_RANGES = 1000
T = TypeVar("T")


def _read(work: Callable[[psycopg.Connection], T], fence: int | None = 0) -> T:
    """`work(conn)` on the read pool. `fence`: the WAL position the answer must include
    (0: none; None: unknown); a replica behind it is left for the primary."""
    b = backends()
    if fence is not None:
        with b.read_db.connection() as conn:
            if not fence or not b.replica or _replayed(conn) >= fence:
                return work(conn)
    with b.db.connection() as conn:
        return work(conn)


def _replayed(conn: psycopg.Connection) -> int:
    """How far the replica has replayed the primary's WAL; a server not in recovery (a
    promoted replica) has everything it will ever have."""
    lsn = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()[0]
    return 2**64 if lsn is None else int(lsn)


def _check_device_id(device_id: str) -> None:
    if not DEVICE_ID_RE.match(device_id):
        raise ApiError(422, "validation_failed", "The device id in the path is invalid; see fields.",
                       {"device_id": ["Must be 1-100 characters: letters, digits and . _ : @ -."]})
    who = principal()
    if who is not None and not who.may_read(device_id):
        raise forbidden(f"Device {device_id!r} is outside this key's scope ({who.scope}).")


def filter_args(device_id: str | None = None) -> tuple[LogFilter, dict]:
    """The filter and the other arguments (limit, order, cursor) of a log query or tail: for
    one device (in the path) or, with device_id None, the fleet, within the caller's scope."""
    s = settings()
    args = request.args.to_dict()
    if request.endpoint in TOKEN_IN_QUERY:  # a tail's own parameters, not filters
        args.pop("access_token", None)
        args.pop("last_event_id", None)
    for repeatable in ("level", "device_id"):  # level=A,B and level=A&level=B alike
        if repeatable in args:
            values = request.args.getlist(repeatable)
            args[repeatable] = values if repeatable == "device_id" else ",".join(values)
    loaded = query_args_schema(s.max_query_limit, fleet=device_id is None).load(args)
    if device_id is not None:
        _check_device_id(device_id)
        devices, prefix = (device_id,), None
    else:
        devices, prefix = tuple(dict.fromkeys(loaded.pop("device_id", ()))), loaded.pop("device_prefix", None)
        _check_fleet_scope(devices, prefix)
    filt = LogFilter(device_ids=devices, device_prefix=prefix, levels=loaded.pop("level", ()),
                     min_level=loaded.pop("min_level", None), since=loaded.pop("since", None),
                     until=loaded.pop("until", None), q=loaded.pop("q", None), data=loaded.pop("data", None))
    return filt, loaded


def _check_fleet_scope(devices: tuple[str, ...], prefix: str | None) -> None:
    """Readers and admins read the fleet; a device key only what its scope covers, named."""
    who = principal()
    if who is None or who.may_read():
        return
    if devices:
        for device in devices:
            if not who.may_read(device):
                raise forbidden(f"Device {device!r} is outside this key's scope ({who.scope}).")
    elif prefix is None or who.device_prefix is None or not prefix.startswith(who.device_prefix):
        raise forbidden(f"A device key reads only its own devices ({who.scope}): name them with device_id"
                        + (" or a device_prefix within its prefix." if who.device_prefix else "."))


def _after(cursor: str, fingerprint: str) -> tuple[dt.datetime, int]:
    try:
        return search.decode_cursor(cursor, fingerprint)
    except ValueError as exc:
        raise ApiError(422, "validation_failed", "The query is invalid; see fields.", {"cursor": [str(exc)]}) from None


def _page(filt: LogFilter, limit: int, order: str, cursor: str | None, fence: int | None = 0) -> dict:
    fingerprint = filt.fingerprint(order)
    after = _after(cursor, fingerprint) if cursor is not None else None
    try:
        page = _read(lambda conn: search.search(conn, filt, order=order, limit=limit, after=after), fence)
    except psycopg.errors.QueryCanceled:
        raise ApiError(422, "query_too_broad",
                       f"The query ran longer than QUERY_TIMEOUT_MS ({settings().query_timeout_ms} ms): narrow "
                       "it with since/until, a device, or a level.") from None
    return {"data": _log_out.dump(page.rows),
            "next_cursor": search.encode_cursor(page.next_key, fingerprint) if page.next_key else None}


def device_logs(device_id: str):
    """A device's logs, newest first, filtered and paged; the plain first page is cached."""
    s = settings()
    filt, args = filter_args(device_id)
    limit, order, cursor = args["limit"], args["order"], args.get("cursor")
    if filt != LogFilter(device_ids=(device_id,)) or order != "desc" or cursor is not None:
        page, source = _page(filt, limit, order, cursor), "database"
    else:
        page, source = backends().cache.cached(cache.device_scope(device_id), str(limit), s.logs_cache_ttl,
                                               lambda fence: _page(filt, limit, order, None, fence))
    return {"total": len(page["data"]), "source": source, **page}


def fleet_logs():
    """Logs of every device (or those named, or of a prefix), with the same filters and pages."""
    filt, args = filter_args()
    page = _page(filt, args["limit"], args["order"], args.get("cursor"))
    return {"total": len(page["data"]), "source": "database", **page}


def devices():
    """Devices with stored logs: last seen (receive time) and totals per level, most recent first."""
    s = settings()
    args = device_list_args_schema(s.max_query_limit).load(request.args.to_dict())
    who = principal()
    prefix = args.get("device_prefix")
    scope_devices: tuple[str, ...] = ()
    if who is not None and not who.may_read():  # a device key: its own device(s) only
        if who.device_id is not None:
            scope_devices = (who.device_id,)
        elif prefix is None or not prefix.startswith(who.device_prefix or "\0"):
            prefix = who.device_prefix
    b = backends()

    def from_database(fence: int | None = 0) -> list[dict]:
        return _read(lambda conn: _device_out.dump(search.devices(conn, scope_devices, prefix)), fence)

    found, source = b.cache.cached(cache.STATS_SCOPE, f"devices:{scope_devices}:{prefix}", s.stats_cache_ttl,
                                   from_database)
    return {"total": len(found), "source": source, "devices": found[:args["limit"]]}


def device_sequence(device_id: str):
    """Per boot_id: the seq numbers seen and the ones missing (lost before they reached us)."""
    _check_device_id(device_id)
    boots = _read(lambda conn: sequences.audit(conn, device_id, MAX_MISSING_RANGES))
    return {"device_id": device_id, "boots": boots}


def stats():
    s = settings()
    b = backends()

    def from_database(fence: int | None = 0) -> dict:
        return _read(lambda conn: {**storage.table_stats(conn), "dead_lettered": deadletters.count(conn),
                                   "expired": partitions.expired_totals(conn)}, fence)

    table, source = b.cache.cached(cache.STATS_SCOPE, "table", s.stats_cache_ttl, from_database)
    dead_lettered, expired = table.pop("dead_lettered"), table.pop("expired")
    pipeline = shards.pipeline_stats(b.redis, s)
    pipeline.update(persisted=table["total_logs"], dead_lettered=dead_lettered, **expired,
                    **counters.read(b.redis, s))
    return {**table, "pipeline": pipeline, "source": source}
