"""Apply the SQL migrations in migrations/ with yoyo (the CLI is `python -m collector.migrate`).

Creates the database named in DATABASE_URL if it does not exist yet, then
applies whatever migrations are new; running it again changes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

from collector.store import legacy, partitions

# migrations/ sits beside the package in the checkout (and in the image: see the Dockerfile).
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def create_database_if_missing(database_url: str) -> bool:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    name = info.get("dbname") or info.get("user") or "postgres"
    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def yoyo_url(database_url: str) -> str:
    """yoyo speaks psycopg 3 under the postgresql+psycopg scheme."""
    scheme, rest = database_url.split("://", 1)
    return f"postgresql+psycopg://{rest}"


def apply_migrations(database_url: str, upto: str | None = None) -> list[str]:
    """Create the database if needed and apply the pending SQL migrations (those up to and
    including `upto`, when given); returns the ids applied."""
    create_database_if_missing(database_url)
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(str(MIGRATIONS))
    if upto is not None:
        migrations = migrations.filter(lambda m: m.id <= upto)
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    return [m.id for m in pending]


def migrate(database_url: str, partition_interval: int = 1, partitions_ahead: int = 3,
            progress: Callable[[int], None] | None = None) -> list[str]:
    """Apply pending migrations, finish moving the rows of before migration 0007 into the
    partitioned `logs` (store.legacy; `progress(rows moved so far)` after each batch), and
    create partitions ahead; returns the ids of the migrations applied (empty when up to date)."""
    applied = apply_migrations(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Partitions first, so that the drain's new rows go straight into theirs during the copy.
        partitions.create_ahead(conn, partition_interval, partitions_ahead, dt.datetime.now(dt.UTC).date())
        legacy.move_all(conn, partition_interval, progress=progress)
    return applied
