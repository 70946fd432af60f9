"""The `device_keys` table: credentials, stored as SHA-256 hashes of their secrets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

COLUMNS = ("id, name, role, device_id, device_prefix, secret_sha256, rate_limit, rate_burst, created_at, "
           "last_used_at, revoked_at")


@dataclass(frozen=True)
class KeyRow:
    id: str
    name: str
    role: str
    device_id: str | None
    device_prefix: str | None
    secret_sha256: str
    rate_limit: float | None
    rate_burst: int | None
    created_at: object
    last_used_at: object
    revoked_at: object


def lock(conn: psycopg.Connection) -> None:
    """Serialise changes to the keys with the copy to Redis (beat's sync), for the rest of
    the caller's transaction: a sync that read the table before a revocation must not
    write the revoked key back to Redis after it."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('collector.device_keys'))")


def add(conn: psycopg.Connection, key_id: str, name: str, role: str, device_id: str | None,
        device_prefix: str | None, secret_sha256: str, rate_limit: float | None = None,
        rate_burst: int | None = None) -> KeyRow:
    with conn.cursor(row_factory=class_row(KeyRow)) as cur:
        cur.execute(
            f"""
            INSERT INTO device_keys (id, name, role, device_id, device_prefix, secret_sha256, rate_limit, rate_burst)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}
            """,
            (key_id, name, role, device_id, device_prefix, secret_sha256, rate_limit, rate_burst),
        )
        return cur.fetchone()


def every(conn: psycopg.Connection) -> list[KeyRow]:
    with conn.cursor(row_factory=class_row(KeyRow)) as cur:
        cur.execute(f"SELECT {COLUMNS} FROM device_keys ORDER BY created_at, id")
        return cur.fetchall()


def revoke(conn: psycopg.Connection, key_id: str) -> bool:
    """True if the key existed (revoking twice is harmless)."""
    row = conn.execute("UPDATE device_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING 1",
                       (key_id,)).fetchone()
    return row is not None


def record_use(conn: psycopg.Connection, last_used: Sequence[tuple[str, float]]) -> None:
    """(key id, unix time) of the latest use seen; never moves a time backwards."""
    if last_used:
        with conn.cursor() as cur:
            cur.executemany(
                """
                UPDATE device_keys SET last_used_at = to_timestamp(%s)
                WHERE id = %s AND (last_used_at IS NULL OR last_used_at < to_timestamp(%s))
                """,
                [(when, key_id, when) for key_id, when in last_used],
            )
