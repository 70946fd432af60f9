"""Moving the rows of the unpartitioned `logs` of before migration 0007 (renamed
logs_legacy by it) into the partitioned table, while the drain goes on.

Each batch is one transaction: it deletes up to `batch` rows from logs_legacy (newest
ids first, so recent queries are whole again soonest), inserts them under their
stream-entry identity with ON CONFLICT DO NOTHING, and moves their counts from the
"-infinity" day (the counts of logs_legacy) to their days. An entry stored before the
upgrade and stored again after it (a crash between commit and XACK across the
upgrade) meets its new copy here and is counted once. Interrupted, it loses nothing:
run it again. When logs_legacy is empty it is dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import psycopg

from collector.store import partitions

LEGACY = "logs_legacy"

_RANGE = """
    SELECT min(split_part(stream_id, '-', 1)::bigint), max(split_part(stream_id, '-', 1)::bigint)
    FROM logs_legacy WHERE id > %(lo)s AND id <= %(hi)s
"""

_MOVE = """
    WITH moved AS (
        DELETE FROM logs_legacy WHERE id > %(lo)s AND id <= %(hi)s RETURNING *
    ), stored AS (
        INSERT INTO logs (received_at, created_at, id, seq, entry_seq, log_level, stream, device_id,
                          message, log_data, boot_id)
        SELECT 'epoch'::timestamptz + split_part(stream_id, '-', 1)::bigint * interval '1 millisecond',
               created_at, id, seq, split_part(stream_id, '-', 2)::int, log_level::log_severity,
               (SELECT s.id FROM log_streams s WHERE s.name = moved.stream),  -- NULL fails: nothing lost
               device_id, message, log_data, boot_id
        FROM moved
        ON CONFLICT (received_at, entry_seq, stream) DO NOTHING
        RETURNING received_at, device_id, log_level
    ), device_counted AS (  -- migration 0008's device list counts moved rows as the drain does
        INSERT INTO device_counts (writer, day, device_id, debug, info, warning, error, critical, last_seen)
        SELECT 'migration', (received_at AT TIME ZONE 'UTC')::date, device_id,
               count(*) FILTER (WHERE log_level = 'DEBUG'), count(*) FILTER (WHERE log_level = 'INFO'),
               count(*) FILTER (WHERE log_level = 'WARNING'), count(*) FILTER (WHERE log_level = 'ERROR'),
               count(*) FILTER (WHERE log_level = 'CRITICAL'), max(received_at)
        FROM stored GROUP BY 2, 3
        ON CONFLICT (writer, day, device_id) DO UPDATE
        SET debug = device_counts.debug + EXCLUDED.debug, info = device_counts.info + EXCLUDED.info,
            warning = device_counts.warning + EXCLUDED.warning, error = device_counts.error + EXCLUDED.error,
            critical = device_counts.critical + EXCLUDED.critical,
            last_seen = greatest(device_counts.last_seen, EXCLUDED.last_seen)
    )
    SELECT '-infinity', log_level::text, -count(*) FROM moved GROUP BY log_level
    UNION ALL
    SELECT (received_at AT TIME ZONE 'UTC')::date::text, log_level::text, count(*) FROM stored GROUP BY 1, 2
"""

_ADD_COUNTS = """
    INSERT INTO log_counts (writer, day, log_level, n) VALUES ('migration', %s::date, %s, %s)
    ON CONFLICT (writer, day, log_level) DO UPDATE SET n = log_counts.n + EXCLUDED.n
"""


def pending(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LEGACY,)).fetchone()[0]


def move_batch(conn: psycopg.Connection, interval: int, batch: int) -> int:
    """Move the `batch` newest ids of logs_legacy; returns the rows taken from it (0: it is empty)."""
    hi = conn.execute("SELECT max(id) FROM logs_legacy").fetchone()[0]
    if hi is None:
        return 0
    bounds = {"lo": hi - batch, "hi": hi}
    first_ms, last_ms = conn.execute(_RANGE, bounds).fetchone()
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    partitions.empty_default(conn, interval)  # rows the drain stored before partitions existed
    partitions.create_covering(conn, interval, (epoch + dt.timedelta(milliseconds=first_ms)).date(),
                               (epoch + dt.timedelta(milliseconds=last_ms)).date())
    with conn.transaction():
        conn.execute("INSERT INTO log_streams (name) SELECT DISTINCT stream FROM logs_legacy"
                     " WHERE id > %(lo)s AND id <= %(hi)s ON CONFLICT (name) DO NOTHING", bounds)
        counts = conn.execute(_MOVE, bounds).fetchall()
        with conn.cursor() as cur:
            cur.executemany(_ADD_COUNTS, counts)
    return -sum(n for day, _, n in counts if day == "-infinity")


def finish(conn: psycopg.Connection) -> None:
    """Drop the empty logs_legacy, and the -infinity counters once they add up to nothing."""
    with conn.transaction():
        if conn.execute("SELECT EXISTS (SELECT FROM logs_legacy)").fetchone()[0]:
            return
        conn.execute("DROP TABLE logs_legacy")
        left = conn.execute("SELECT coalesce(sum(abs(n)), 0) FROM (SELECT sum(n) AS n FROM log_counts"
                            " WHERE day = '-infinity' GROUP BY log_level) AS t").fetchone()[0]
        if left == 0:
            conn.execute("DELETE FROM log_counts WHERE day = '-infinity'")


def move_all(conn: psycopg.Connection, interval: int, batch: int = 10_000,
             progress: Callable[[int], None] | None = None) -> int:
    """Move every row of logs_legacy (if there is one), then drop it; returns rows moved.
    `progress(moved so far)` is called after each batch."""
    if not pending(conn):
        return 0
    total = 0
    while moved := move_batch(conn, interval, batch):
        total += moved
        if progress is not None:
            progress(total)
    finish(conn)
    return total
