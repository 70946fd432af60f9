"""The `logs` table and its counters: storing drained batches and reading logs back.

Every function takes an open psycopg connection; callers own pools and
transactions' lifetimes, so the API, the Celery tasks, the CLI and the tests
all share this code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC

import orjson
import psycopg
from psycopg.rows import dict_row

from collector.core.model import LEVELS, Row
from collector.store import sequences

# log_data is a `json` column (migration 0006): PostgreSQL keeps the text ingest
# wrote, so numbers keep their form (jsonb would print 1e20 as 100000000000000000000
# and -0.0 as 0.0). Timestamps arrive with an explicit offset, so the session's
# TimeZone never changes what is stored; reads convert to UTC in SQL for the same reason.
#
# A redelivered stream entry is skipped by ON CONFLICT on its stream identity. A
# numbered row is inserted only if its (device_id, boot_id, seq) was not stored yet
# (sequences.Claims), so a copy that reached us any other way (an HTTP retry, a
# resend after a reboot, a replay) is skipped as a duplicate too.
INSERT_LOG = """
    INSERT INTO logs (stream, stream_id, device_id, log_level, message, log_data, created_at, received_at,
                      boot_id, seq)
    VALUES (%s, %s, %s, %s, %s, %s::json, %s::timestamptz, %s::timestamptz, %s, %s)
    ON CONFLICT (stream, stream_id) DO NOTHING
    RETURNING log_level
"""

ADD_COUNTS = """
    INSERT INTO log_counts (writer, log_level, n) VALUES (%s, %s, %s)
    ON CONFLICT (writer, log_level) DO UPDATE SET n = log_counts.n + EXCLUDED.n
"""


def insert_logs(conn: psycopg.Connection, rows: Sequence[Row], writer: str) -> Counter[str]:
    """Insert rows and commit; returns how many were new, per level.

    Rows whose (stream, stream id) is already stored are skipped, so a batch redelivered
    after a crash between commit and XACK stores nothing twice; so are rows whose
    (device_id, boot_id, seq) is (sequences.Claims). The per-level
    totals move in the same transaction, keyed by `writer` so that concurrent
    drains never update the same counter row.
    """
    inserted: Counter[str] = Counter()
    if not rows:
        return inserted
    numbered = [row for row in rows if row[9] is not None]
    with conn.transaction(), conn.cursor() as cur:
        claims = None
        if numbered:
            claims = sequences.Claims.check(cur, numbered)
            fresh = {id(row) for row in claims.fresh}
            rows = [row for row in rows if row[9] is None or id(row) in fresh]
        stored = []
        if rows:
            cur.executemany(INSERT_LOG, rows, returning=True)
            for row in rows:  # one result set per row, in order: empty when ON CONFLICT skipped it
                for (level,) in cur.fetchall():
                    inserted[level] += 1
                    stored.append(row)
                cur.nextset()
        if claims is not None:
            # Only numbers whose log is now stored count as received: a row skipped because
            # its stream identity is taken (a Redis restored from an old snapshot) must not
            # hide its number from the gap audit.
            claims.record(cur, [row for row in stored if row[9] is not None])
        if inserted:
            cur.executemany(ADD_COUNTS, [(writer, level, n) for level, n in sorted(inserted.items())])
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
    rows = conn.execute("SELECT stream_id FROM logs WHERE stream = %s AND stream_id = ANY(%s)",
                        (stream, list(stream_ids)))
    return {stream_id for (stream_id,) in rows}


def device_logs(conn: psycopg.Connection, device_id: str, limit: int) -> list[dict]:
    """A device's newest logs first, with the seed's fields: log_data as the JSON it was
    sent as, created_at in UTC whatever the session's TimeZone."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT id, device_id, log_level, message, log_data::text AS log_data,
                   created_at AT TIME ZONE 'UTC' AS created_at
            FROM logs WHERE device_id = %s
            ORDER BY logs.created_at DESC, logs.id DESC  -- qualified: the column (and its index), not the alias
            LIMIT %s
            """,
            (device_id, limit),
        )
        rows = cur.fetchall()
    for row in rows:
        # orjson, as ingest: rows stored as jsonb before migration 0006 print 1e20 as a
        # 21-digit integer, which orjson reads back as the float it was (the stdlib would
        # make it an integer no answer can write).
        if row["log_data"] is not None:
            row["log_data"] = orjson.loads(row["log_data"])
        row["created_at"] = row["created_at"].replace(tzinfo=UTC)
    return rows


def table_stats(conn: psycopg.Connection, recent_window: int = 1000, recent_devices: int = 10) -> dict:
    """Totals from log_counts and the devices seen in the newest rows: no table scan."""
    with conn.cursor() as cur:
        cur.execute("SELECT log_level, sum(n)::bigint FROM log_counts GROUP BY log_level")
        by_level = dict.fromkeys(LEVELS, 0)
        by_level.update((level, int(n)) for level, n in cur.fetchall())
        cur.execute(
            """
            SELECT device_id FROM (
                SELECT device_id, id FROM logs ORDER BY id DESC LIMIT %s
            ) AS newest
            GROUP BY device_id ORDER BY max(id) DESC LIMIT %s
            """,
            (recent_window, recent_devices),
        )
        devices = [device_id for (device_id,) in cur.fetchall()]
    return {"total_logs": sum(by_level.values()), "logs_by_level": by_level, "recent_devices": devices}


def ping(conn: psycopg.Connection) -> None:
    conn.execute("SELECT 1")
