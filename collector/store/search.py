"""Finding logs: filters, in SQL for queries and in Python for live tails, and keyset pages.

A page is ordered by (created_at, id), newest first unless asked otherwise, and the
next page starts strictly after the last row's key: no OFFSET, so a page costs the
same however deep it is, and rows inserted meanwhile cannot shift what comes next.
Both columns are set once at insert and never change, and (created_at, id) is unique,
so following the cursors returns every matching row that existed when the first page
was read exactly once (a row stored later shows up only if its key falls after the
page being read; retention may drop old partitions in between).

Bounds: a page holds at most MAX_QUERY_LIMIT rows and every search runs under
QUERY_TIMEOUT_MS (the API's connections' statement_timeout); `q` needs at least MIN_Q_CHARS characters
so that the trigram index (migration 0008) can serve it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from collector.core.model import LEVELS

MIN_Q_CHARS = 3  # trigrams: a shorter substring cannot use the index


@dataclass(frozen=True)
class LogFilter:
    """Which logs: every field set must hold (devices: any of them; levels: any of them)."""

    device_ids: tuple[str, ...] = ()
    device_prefix: str | None = None
    levels: tuple[str, ...] = ()
    min_level: str | None = None
    since: dt.datetime | None = None  # created_at >= since
    until: dt.datetime | None = None  # created_at < until
    q: str | None = None  # case-insensitive substring of message
    data: Mapping | None = None  # JSON containment on log_data, as jsonb's @>

    def fingerprint(self, order: str) -> str:
        """A short digest of the filter and order: a cursor only continues the query it came from."""
        spec = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in asdict(self).items()}
        return hashlib.blake2b(orjson.dumps([spec, order], option=orjson.OPT_SORT_KEYS), digest_size=6).hexdigest()

    def where(self) -> tuple[list[sql.Composable], list]:
        """SQL conditions (joined by AND) and their parameters."""
        conds: list[sql.Composable] = []
        params: list = []
        if len(self.device_ids) == 1:
            conds.append(sql.SQL("device_id = %s"))
            params.append(self.device_ids[0])
        elif self.device_ids:
            conds.append(sql.SQL("device_id = ANY(%s)"))
            params.append(list(self.device_ids))
        if self.device_prefix is not None:
            # The database's collation is C (docs/storage.md), so a prefix LIKE is a range of the device index.
            conds.append(sql.SQL("device_id LIKE %s"))
            params.append(_like_escape(self.device_prefix) + "%")
        if self.levels:
            conds.append(sql.SQL("log_level = ANY(%s::log_severity[])"))
            params.append(list(self.levels))
        if self.min_level is not None:
            conds.append(sql.SQL("log_level >= %s::log_severity"))  # the enum is ordered DEBUG < ... < CRITICAL
            params.append(self.min_level)
        if self.since is not None:
            conds.append(sql.SQL("created_at >= %s"))
            params.append(self.since)
        if self.until is not None:
            conds.append(sql.SQL("created_at < %s"))
            params.append(self.until)
        if self.q is not None:
            conds.append(sql.SQL("message ILIKE %s"))  # served by logs_message_trgm_idx
            params.append("%" + _like_escape(self.q) + "%")
        if self.data is not None:
            conds.append(sql.SQL("log_data::jsonb @> %s::jsonb"))
            params.append(orjson.dumps(self.data).decode())
        return conds, params

    def matches(self, log: Mapping) -> bool:
        """The same test in Python, on a log as LogOut gives it (live tails filter in the API)."""
        device = log["device_id"]
        if self.device_ids and device not in self.device_ids:
            return False
        if self.device_prefix is not None and not device.startswith(self.device_prefix):
            return False
        level = log["log_level"]
        if self.levels and level not in self.levels:
            return False
        if self.min_level is not None and LEVELS.index(level) < LEVELS.index(self.min_level):
            return False
        created = log["created_at"]
        if self.since is not None and created < self.since:
            return False
        if self.until is not None and created >= self.until:
            return False
        if self.q is not None and self.q.lower() not in log["message"].lower():
            return False
        return self.data is None or json_contains(log["log_data"], self.data, top=True)


def json_contains(doc: object, pattern: object, top: bool = False) -> bool:
    """PostgreSQL's jsonb @> on parsed JSON: objects by subset of keys, arrays by each
    pattern element contained in some element (order and count ignored), scalars by
    equality of type and value; at the top, an array also contains a scalar it holds."""
    if isinstance(pattern, dict):
        return isinstance(doc, dict) and all(k in doc and json_contains(doc[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(doc, list) and all(any(json_contains(d, p) for d in doc) for p in pattern)
    if top and isinstance(doc, list):
        return any(_scalar_equal(d, pattern) for d in doc)
    return _scalar_equal(doc, pattern)


def _scalar_equal(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b  # true, false and null equal only themselves (never 1 or 0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # jsonb compares numbers by value: 1 = 1.0
    return type(a) is type(b) is str and a == b


def encode_cursor(key: tuple[dt.datetime, int], fingerprint: str) -> str:
    """An opaque cursor: the last row's key and the query it belongs to."""
    created, last_id = key
    return base64.urlsafe_b64encode(orjson.dumps([created.isoformat(), last_id, fingerprint])).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> tuple[dt.datetime, int]:
    """The key a cursor continues after; ValueError (saying why) for a cursor this query did not make."""
    try:
        created, last_id, made_for = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        key = (dt.datetime.fromisoformat(created), int(last_id))
    except (ValueError, TypeError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        raise ValueError("Not a cursor this API gave: pass next_cursor as it came.") from None
    if key[0].tzinfo is None or made_for != fingerprint:
        raise ValueError("This cursor continues another query: pass the same filters and order as the page "
                         "it came with.")
    return key


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass
class Page:
    rows: list[dict]
    next_key: tuple[dt.datetime, int] | None  # (created_at, id) of the last row, when more follow


COLUMNS = sql.SQL("""id, device_id, log_level::text AS log_level, message, log_data::text AS log_data,
    created_at AT TIME ZONE 'UTC' AS created_at""")


def page_query(filt: LogFilter, *, order: str = "desc", limit: int,
               after: tuple[dt.datetime, int] | None = None) -> tuple[sql.Composed, list]:
    """The SQL of one page (and its parameters): `limit` + 1 rows after the key `after`."""
    conds, params = filt.where()
    if after is not None:
        created, last_id = after
        op, bound = (sql.SQL("<"), sql.SQL("<=")) if order == "desc" else (sql.SQL(">"), sql.SQL(">="))
        # The plain bound on created_at is redundant with the row comparison, but it is what the
        # device index (device_id, created_at) can use as an index condition.
        conds.append(sql.SQL("created_at {} %s AND (created_at, id) {} (%s, %s)").format(bound, op))
        params += [created, created, last_id]
    direction = sql.SQL("DESC" if order == "desc" else "ASC")
    query = sql.SQL("SELECT {} FROM logs{} ORDER BY logs.created_at {d}, logs.id {d} LIMIT %s").format(
        COLUMNS, sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL(""), d=direction)
    return query, [*params, limit + 1]  # one more than asked: whether a next page exists


def search(conn: psycopg.Connection, filt: LogFilter, *, order: str = "desc", limit: int,
           after: tuple[dt.datetime, int] | None = None) -> Page:
    """One page of matching logs, starting after the key `after` (a previous page's next_key)."""
    query, params = page_query(filt, order=order, limit=limit, after=after)
    with conn.cursor(row_factory=dict_row) as cur:  # the API's connections carry QUERY_TIMEOUT_MS
        cur.execute(query, params)
        rows = cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    for row in rows:
        finish_row(row)
    next_key = (rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return Page(rows, next_key)


def finish_row(row: dict) -> dict:
    """A row as read (log_data as text, created_at naive UTC) made into the API's values."""
    # orjson, as ingest: rows stored as jsonb before migration 0006 print 1e20 as a 21-digit
    # integer, which orjson reads back as the float it was (the stdlib would make it an
    # integer no answer can write).
    if row["log_data"] is not None:
        row["log_data"] = orjson.loads(row["log_data"])
    row["created_at"] = row["created_at"].replace(tzinfo=UTC)
    return row


# Per device: last seen (receive time) and stored logs per level, from device_counts
# (kept by the drain with the rows, migration 0008): no scan of `logs`.
DEVICES = """
    SELECT device_id, max(last_seen), sum(debug)::bigint, sum(info)::bigint, sum(warning)::bigint,
           sum(error)::bigint, sum(critical)::bigint
    FROM device_counts WHERE true {where}
    GROUP BY device_id ORDER BY max(last_seen) DESC, device_id DESC
"""


def devices(conn: psycopg.Connection, device_ids: Sequence[str] = (), prefix: str | None = None) -> list[dict]:
    """Every device with stored logs, most recently seen first."""
    where, params = "", []
    if device_ids:
        where, params = "AND device_id = ANY(%s)", [list(device_ids)]
    elif prefix is not None:
        where, params = "AND device_id LIKE %s", [_like_escape(prefix) + "%"]
    return [{"device_id": device_id, "last_seen": last_seen, "total": sum(counts),
             "by_level": dict(zip(LEVELS, counts, strict=True))}
            for device_id, last_seen, *counts in conn.execute(DEVICES.format(where=where), params)]
