"""The partitions of `logs` (migration 0007): created ahead, the default partition emptied
into partitions of its own, and whole partitions dropped once past retention.

A partition covers `interval` UTC days of receive time, starting at a multiple of
`interval` days since the Unix epoch, and is named logs_YYYYMMDD after its first day.
Every step is a short transaction with a lock timeout: a step that cannot get its lock
in time (a long query holds the table) fails and is tried again at the next run,
rather than queueing the drain behind it. Rows are never deleted one by one: retention
is DROP TABLE of a detached partition, and the per-day counters of its days are removed
in the same transaction, so /api/stats stays exact.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

EPOCH_DAY = dt.date(1970, 1, 1)
DEFAULT_PARTITION = "logs_default"
# How long a step waits for its lock before giving up until the next run.
LOCK_TIMEOUT = "5s"
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    start: dt.date  # first day
    end: dt.date    # first day after it


@dataclass
class MaintenanceResult:
    created: list[str] = field(default_factory=list)
    moved_from_default: int = 0
    dropped: list[tuple[str, int]] = field(default_factory=list)  # (partition, rows)
    dead_letters_expired: int = 0


def bucket(day: dt.date, interval: int) -> Partition:
    """The partition that holds receive times on `day`."""
    offset = (day - EPOCH_DAY).days // interval * interval
    start = EPOCH_DAY + dt.timedelta(days=offset)
    return Partition(f"logs_{start:%Y%m%d}", start, start + dt.timedelta(days=interval))


def existing(conn: psycopg.Connection) -> list[Partition]:
    """The range partitions of `logs`, oldest first (the default partition is not listed)."""
    rows = conn.execute(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'logs'::regclass
        """).fetchall()
    found = []
    for name, bound in rows:
        match = _BOUNDS.search(bound)
        if match:  # bounds print in the session's TimeZone: compare as instants
            start, end = (dt.datetime.fromisoformat(b).astimezone(dt.UTC).date() for b in match.groups())
            found.append(Partition(name, start, end))
    return sorted(found, key=lambda p: p.start)


def _set_lock_timeout(conn: psycopg.Connection) -> None:
    """For the transaction in progress: give up on a lock after LOCK_TIMEOUT (see the module doc)."""
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))


def _create(conn: psycopg.Connection, part: Partition) -> None:
    with conn.transaction():
        _set_lock_timeout(conn)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF logs FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(part.name), sql.Literal(f"{part.start} 00:00:00+00"),
            sql.Literal(f"{part.end} 00:00:00+00")))
    log.info("created partition", extra={"partition": part.name, "from": str(part.start), "to": str(part.end)})


def create_ahead(conn: psycopg.Connection, interval: int, ahead: int, today: dt.date) -> list[str]:
    """Create the current partition and `ahead` more after it, where missing (emptying the
    default partition first if it holds rows); returns the new ones."""
    created = empty_default(conn, interval)[1]
    last = bucket(today, interval).end + dt.timedelta(days=ahead * interval - 1)
    return created + create_covering(conn, interval, today, last)


def create_covering(conn: psycopg.Connection, interval: int, first: dt.date, last: dt.date) -> list[str]:
    """Partitions for every day from `first` to `last` that none covers (the default partition
    must hold no rows of those days: empty_default first when it holds any)."""
    have = existing(conn)
    created = []
    day = first
    while day <= last:
        covering = next((p for p in have if p.start <= day < p.end), None)
        if covering is None:
            part = bucket(day, interval)
            # Clip to the neighbours a different PARTITION_INTERVAL may have left.
            start = max([part.start, *[p.end for p in have if p.end <= day]])
            end = min([part.end, *[p.start for p in have if p.start > day]])
            covering = Partition(f"logs_{start:%Y%m%d}", start, end)
            _create(conn, covering)
            have.append(covering)
            created.append(covering.name)
        day = covering.end
    return created


def default_is_empty(conn: psycopg.Connection) -> bool:
    return conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(
        sql.Identifier(DEFAULT_PARTITION))).fetchone()[0]


def empty_default(conn: psycopg.Connection, interval: int) -> tuple[int, list[str]]:
    """Move the rows of the default partition into partitions of their own; returns
    (rows moved, partitions created). Their counters need no change: they count per day."""
    if default_is_empty(conn):
        return 0, []
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        _set_lock_timeout(conn)
        # Inserts routed to the default partition wait until the rows are in place.
        conn.execute("LOCK TABLE logs IN SHARE ROW EXCLUSIVE MODE")
        conn.execute("CREATE TEMPORARY TABLE moving ON COMMIT DROP AS SELECT * FROM logs WITH NO DATA")
        moved = conn.execute(sql.SQL(
            "WITH m AS (DELETE FROM {} RETURNING *) INSERT INTO moving SELECT * FROM m").format(
            sql.Identifier(DEFAULT_PARTITION))).rowcount
        first, last = conn.execute(
            "SELECT min(received_at)::date, max(received_at)::date FROM moving").fetchone()
        created = create_covering(conn, interval, first, last)
        conn.execute("INSERT INTO logs SELECT * FROM moving")
    log.info("moved rows out of the default partition", extra={"rows": moved, "partitions_created": created})
    return moved, created


def drop_expired(conn: psycopg.Connection, retention_days: int, now: dt.datetime) -> list[tuple[str, int]]:
    """Drop every partition whose rows are all older than `retention_days`; returns
    (partition, rows) per drop. Rows come from the per-day counters, which leave with it."""
    from collector.core import metrics

    if retention_days <= 0:
        return []
    cutoff = (now - dt.timedelta(days=retention_days)).astimezone(dt.UTC)
    dropped = []
    for part in existing(conn):
        if dt.datetime.combine(part.end, dt.time(), dt.UTC) > cutoff:
            continue
        with conn.transaction():
            _set_lock_timeout(conn)
            conn.execute(sql.SQL("ALTER TABLE logs DETACH PARTITION {}").format(sql.Identifier(part.name)))
            rows = conn.execute(
                "WITH gone AS (DELETE FROM log_counts WHERE day >= %s AND day < %s RETURNING n)"
                " SELECT coalesce(sum(n), 0)::bigint FROM gone", (part.start, part.end)).fetchone()[0]
            conn.execute("DELETE FROM device_counts WHERE day >= %s AND day < %s", (part.start, part.end))
            _add_expired(conn, "logs", rows)
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
        dropped.append((part.name, rows))
        metrics.PARTITIONS_DROPPED.inc()
        metrics.LOGS_EXPIRED.inc(rows)
        log.info("dropped expired partition", extra={"partition": part.name, "rows": rows,
                                                      "from": str(part.start), "to": str(part.end)})
    return dropped


def expire_dead_letters(conn: psycopg.Connection, days: int, now: dt.datetime) -> int:
    """Delete dead letters whose last failure is older than `days` (0: never); returns how many."""
    from collector.core import metrics

    if days <= 0:
        return 0
    with conn.transaction():
        gone = conn.execute("DELETE FROM dead_letters WHERE last_failed_at < %s",
                            (now - dt.timedelta(days=days),)).rowcount
        _add_expired(conn, "dead_letters", gone)
    if gone:
        metrics.DEAD_LETTERS_EXPIRED.inc(gone)
        log.info("deleted expired dead letters", extra={"dead_letters": gone, "days": days})
    return gone


def _add_expired(conn: psycopg.Connection, kind: str, n: int) -> None:
    conn.execute("INSERT INTO expired_counts (kind, n) VALUES (%s, %s)"
                 " ON CONFLICT (kind) DO UPDATE SET n = expired_counts.n + EXCLUDED.n", (kind, n))


def expired_totals(conn: psycopg.Connection) -> dict[str, int]:
    totals = {"logs_expired": 0, "dead_letters_expired": 0}
    for kind, n in conn.execute("SELECT kind, n FROM expired_counts"):
        totals[f"{kind}_expired"] = int(n)
    return totals


def maintain(conn: psycopg.Connection, interval: int, ahead: int, retention_days: int,
             dead_letter_retention_days: int, now: dt.datetime | None = None) -> MaintenanceResult:
    """One maintenance run, in this order: the default partition emptied (its rows may be
    due for retention), partitions created ahead, expired ones dropped, dead letters expired."""
    now = now or dt.datetime.now(dt.UTC)
    result = MaintenanceResult()
    result.moved_from_default, created = empty_default(conn, interval)
    result.created = created + create_ahead(conn, interval, ahead, now.astimezone(dt.UTC).date())
    result.dropped = drop_expired(conn, retention_days, now)
    result.dead_letters_expired = expire_dead_letters(conn, dead_letter_retention_days, now)
    return result
