"""The `logs` table and its counters: storing drained batches and reading logs back.

Every function takes an open psycopg connection; callers own pools and
transactions' lifetimes, so the API, the Celery tasks, the CLI and the tests
all share this code.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from collector.core.model import LEVELS, Row, entry_identity
from collector.store import sequences

# log_data is a `json` column (migration 0006): PostgreSQL keeps the text ingest
# wrote, so numbers keep their form (jsonb would print 1e20 as 100000000000000000000
# and -0.0 as 0.0). Timestamps arrive with an explicit offset, so the session's
# TimeZone never changes what is stored; reads convert to UTC in SQL for the same reason.
#
# A row's identity is its stream entry (migration 0007): the stream (log_streams.id),
# the entry id's milliseconds as received_at (also the partition key) and its n as
# entry_seq. A redelivered entry is skipped by ON CONFLICT on that identity. A
# numbered row is inserted only if its (device_id, boot_id, seq) was not stored yet
# (sequences.Claims), so a copy that reached us any other way (an HTTP retry, a
# resend after a reboot, a replay) is skipped as a duplicate too.
INSERT_LOG = """
    INSERT INTO logs (received_at, created_at, seq, entry_seq, log_level, stream, device_id, message,
                      log_data, boot_id)
    VALUES (%s, %s::timestamptz, %s, %s, %s, %s, %s, %s, %s::json, %s)
    ON CONFLICT (received_at, entry_seq, stream) DO NOTHING
    RETURNING log_level
"""

# Per (writer, UTC day of receive time, level): a day's counts go with its partition.
# One statement for the whole batch: arrays, one element per day and level, in key order.
# Arrays go in binary (%b): psycopg's text form checks every element for quoting.
ADD_COUNTS = """
    INSERT INTO log_counts (writer, day, log_level, n)
    SELECT %s, * FROM unnest(%b::date[], %b::text[], %b::bigint[])
    ON CONFLICT (writer, day, log_level) DO UPDATE SET n = log_counts.n + EXCLUDED.n
"""

# The same per device (a column per level), with the newest receive time: the device
# list (migration 0008), one element per device and day.
ADD_DEVICE_COUNTS = """
    INSERT INTO device_counts (writer, day, device_id, debug, info, warning, error, critical, last_seen)
    SELECT %s, * FROM unnest(%b::date[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[],
                             %b::bigint[], %b::timestamptz[])
    ON CONFLICT (writer, day, device_id) DO UPDATE
    SET debug = device_counts.debug + EXCLUDED.debug, info = device_counts.info + EXCLUDED.info,
        warning = device_counts.warning + EXCLUDED.warning, error = device_counts.error + EXCLUDED.error,
        critical = device_counts.critical + EXCLUDED.critical,
        last_seen = greatest(device_counts.last_seen, EXCLUDED.last_seen)
"""
_LEVEL_COLUMN = {level: i for i, level in enumerate(LEVELS)}


# Stream identity -> log_streams.id, per connection: a stream's id never changes (rows of
# log_streams are never deleted), and a new connection asks again, so a cache entry can
# only outlive its database together with its connection.
_stream_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stream_ref(conn: psycopg.Connection, name: str) -> int:
    """log_streams.id of a stream identity, registered on first sight."""
    known = _stream_ids.setdefault(conn, {})
    if name not in known:
        conn.execute("INSERT INTO log_streams (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,))
        known[name] = conn.execute("SELECT id FROM log_streams WHERE name = %s", (name,)).fetchone()[0]
    return known[name]


def insert_logs(conn: psycopg.Connection, rows: Sequence[Row], writer: str) -> Counter[str]:
    """Insert rows and commit; returns how many were new, per level.

    Rows whose stream entry is already stored are skipped, so a batch redelivered
    after a crash between commit and XACK stores nothing twice; so are rows whose
    (device_id, boot_id, seq) is (sequences.Claims). The per-level, per-day
    totals move in the same transaction, keyed by `writer` so that concurrent
    drains never update the same counter row.
    """
    inserted: Counter[str] = Counter()
    if not rows:
        return inserted
    numbered = [row for row in rows if row[8] is not None]
    with conn.transaction(), conn.cursor() as cur:
        claims = None
        if numbered:
            claims = sequences.Claims.check(cur, numbered)
            fresh = {id(row) for row in claims.fresh}
            rows = [row for row in rows if row[8] is None or id(row) in fresh]
        stored = []
        if rows:
            streams = {name: stream_ref(conn, name) for name in {row[0] for row in rows}}
            params, days = [], []
            for stream, stream_id, device, level, message, data, created, boot, seq in rows:
                received, entry_seq, day = entry_identity(stream_id)
                params.append((received, created, seq, entry_seq, level, streams[stream], device, message,
                               data, boot))
                days.append((day, device, received))
            cur.executemany(INSERT_LOG, params, returning=True)
            # (day, device) -> [DEBUG, INFO, WARNING, ERROR, CRITICAL counts, last seen]
            by_device: dict[tuple[dt.date, str], list] = {}
            for row, (day, device, received) in zip(rows, days, strict=True):  # one result set per row
                for (level,) in cur.fetchall():  # empty when skipped
                    inserted[level] += 1
                    count = by_device.setdefault((day, device), [0, 0, 0, 0, 0, received])
                    count[_LEVEL_COLUMN[level]] += 1
                    count[5] = max(count[5], received)
                    stored.append(row)
                cur.nextset()
        if claims is not None:
            # Only numbers whose log is now stored count as received: a row skipped because
            # its stream identity is taken (a Redis restored from an old snapshot) must not
            # hide its number from the gap audit.
            claims.record(cur, [row for row in stored if row[8] is not None])
        if inserted:
            # In key order, so that two transactions of one writer (a run overlapping its retry)
            # lock counter rows in the same order and cannot deadlock.
            by_day: Counter[tuple[dt.date, str]] = Counter()
            for (day, _), count in by_device.items():
                for level, column in _LEVEL_COLUMN.items():
                    by_day[day, level] += count[column]
            counts = [(day, level, n) for (day, level), n in sorted(by_day.items()) if n]
            cur.execute(ADD_COUNTS, [writer, *(list(column) for column in zip(*counts, strict=True))])
            keys = sorted(by_device)
            cur.execute(ADD_DEVICE_COUNTS, [writer, [day for day, _ in keys], [device for _, device in keys],
                                            *([by_device[key][column] for key in keys] for column in range(6))])
    return inserted


# Errors that belong to the rows themselves: retrying cannot help, isolating can.
# Anything else (connection trouble, a missing table) is raised for the caller to retry.
ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError)


@dataclass
class StoreOutcome:
    inserted: Counter = field(default_factory=Counter)
    rejected: list[tuple[Row, str]] = field(default_factory=list)


def store_rows(conn: psycopg.Connection, rows: Sequence[Row], writer: str) -> StoreOutcome:
    """insert_logs, isolating rows PostgreSQL rejects: the batch is split in halves until
    each bad row stands alone, so every good row is committed and each bad one is
    returned with the database's error. One bad row costs about 2*log2(n) retries."""
    outcome = StoreOutcome()
    pending = [list(rows)]
    while pending:
        part = pending.pop()
        try:
            outcome.inserted.update(insert_logs(conn, part, writer))
        except ROW_ERRORS as exc:
            if len(part) == 1:
                outcome.rejected.append((part[0], f"{type(exc).__name__}: {exc}".strip()))
            else:
                middle = len(part) // 2
                pending += [part[middle:], part[:middle]]
    return outcome


def stored_stream_ids(conn: psycopg.Connection, stream: str, stream_ids: Sequence[str]) -> set[str]:
    """Which of these entries of `stream` already have their row."""
    keys = [entry_identity(stream_id)[:2] for stream_id in stream_ids]
    rows = conn.execute(
        """
        SELECT stream_entry_id(received_at, entry_seq) FROM logs
        JOIN unnest(%s::timestamptz[], %s::int[]) AS wanted (received_at, entry_seq) USING (received_at, entry_seq)
        WHERE stream = (SELECT id FROM log_streams WHERE name = %s)
        """,
        ([received for received, _ in keys], [n for _, n in keys], stream))
    return {stream_id for (stream_id,) in rows}


LEVEL_TOTALS = "SELECT log_level, sum(n)::bigint FROM log_counts GROUP BY log_level"

# The devices of the newest `window` rows by receive time (the top of each partition's
# entry index, merged), most recent first.
RECENT_DEVICES = """
    SELECT device_id FROM (
        SELECT device_id, row_number() OVER (ORDER BY received_at DESC, entry_seq DESC) AS rank
        FROM (SELECT device_id, received_at, entry_seq FROM logs
              ORDER BY received_at DESC, entry_seq DESC LIMIT %s) AS newest
    ) AS ranked
    GROUP BY device_id ORDER BY min(rank) LIMIT %s
"""


def table_stats(conn: psycopg.Connection, recent_window: int = 1000, recent_devices: int = 10) -> dict:
    """Totals from log_counts and the devices seen in the newest rows: no table scan."""
    with conn.cursor() as cur:
        cur.execute(LEVEL_TOTALS)
        by_level = dict.fromkeys(LEVELS, 0)
        by_level.update((level, int(n)) for level, n in cur.fetchall())
        cur.execute(RECENT_DEVICES, (recent_window, recent_devices))
        devices = [device_id for (device_id,) in cur.fetchall()]
    return {"total_logs": sum(by_level.values()), "logs_by_level": by_level, "recent_devices": devices}


def ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1")
