"""The `dead_letters` table: stream entries that could not be stored, with the reason.

A dead letter keeps the entry's fields as text (`payload`) under its original
stream id, so a replay can store exactly the log that was accepted.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb


def add(conn: psycopg.Connection, stream: str, letters: Sequence[tuple[str, dict, str, int]]) -> None:
    """Record (stream_id, payload, reason, delivery_count) of entries of `stream`; a repeat
    updates the reason and count."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO dead_letters (stream, stream_id, payload, reason, delivery_count)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (stream, stream_id) DO UPDATE SET
                reason = EXCLUDED.reason, delivery_count = EXCLUDED.delivery_count, last_failed_at = now()
            """,
            [(stream, stream_id, Jsonb(payload), reason, count) for stream_id, payload, reason, count in letters],
        )


def page(conn: psycopg.Connection, limit: int, after_id: int = 0) -> list[dict]:
    """Dead letters after `after_id`, times in UTC whatever the session's TimeZone."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT id, stream, stream_id, payload, reason, delivery_count,
                   first_failed_at AT TIME ZONE 'UTC' AS first_failed_at,
                   last_failed_at AT TIME ZONE 'UTC' AS last_failed_at
            FROM dead_letters WHERE id > %s ORDER BY id LIMIT %s
            """,
            (after_id, limit),
        )
        rows = cur.fetchall()
    for row in rows:
        row["first_failed_at"] = row["first_failed_at"].replace(tzinfo=UTC)
        row["last_failed_at"] = row["last_failed_at"].replace(tzinfo=UTC)
    return rows


def count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]



def lock_for_replay(conn: psycopg.Connection, ids: list[int] | None) -> list[tuple[int, str, str, dict]]:
    """(id, stream, stream_id, payload) of the dead letters with these ids (all when None), locked
    for the caller's transaction; letters another replay holds are skipped, not waited for."""
    return conn.execute(
        """
        SELECT id, stream, stream_id, payload FROM dead_letters
        WHERE %(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s)
        ORDER BY id FOR UPDATE SKIP LOCKED
        """,
        {"ids": ids},
    ).fetchall()


def delete(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    conn.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (list(ids),))


def record_failures(conn: psycopg.Connection, failures: Sequence[tuple[int, str]]) -> None:
    """(id, reason) of letters that failed again: the new reason replaces the old."""
    if failures:
        with conn.cursor() as cur:
            cur.executemany("UPDATE dead_letters SET reason = %s, last_failed_at = now() WHERE id = %s",
                            [(reason, letter_id) for letter_id, reason in failures])
