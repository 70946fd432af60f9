"""Apply the SQL migrations in migrations/ with yoyo (the CLI is `python -m collector.migrate`).

Creates the database named in DATABASE_URL if it does not exist yet, then
applies whatever migrations are new; running it again changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from psycopg import sql
from yoyo import get_backend, read_migrations

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


def migrate(database_url: str) -> list[str]:
    """Apply pending migrations; returns the ids applied (empty when up to date)."""
    create_database_if_missing(database_url)
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(str(MIGRATIONS))
    try:
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
    finally:
        backend.connection.close()
    return [m.id for m in pending]
