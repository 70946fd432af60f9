"""Project invariants: migrations, beat schedule, README truthfulness."""

from __future__ import annotations

import re

import psycopg
import pytest
from celery import current_app
from psycopg import sql

from collector.core.settings import load_settings, settings_table
from collector.devtools.processes import ROOT
from collector.store.migrations import MIGRATIONS, migrate
from tasks.celery_app import make_celery
from tests.conftest import ADMIN_DATABASE_URL, database_url


def migration_ids() -> list[str]:
    """The migrations in migrations/, in the order yoyo applies them (by file name)."""
    return sorted(path.name.removesuffix(".sql") for path in MIGRATIONS.glob("*.sql")
                  if not path.name.endswith(".rollback.sql"))


def test_migrations_apply_on_an_empty_database_and_again_as_no_ops(run_id):
    name = f"collector_migrate_{run_id}"
    url = database_url(name)
    expected = migration_ids()
    assert expected, f"no migrations found in {MIGRATIONS}"
    try:
        assert migrate(url) == expected
        assert migrate(url) == []
        with psycopg.connect(url) as conn:
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'logs'")}
        assert {"id", "device_id", "log_level", "message", "log_data", "created_at"} <= columns
    finally:
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_the_table_cleanup_covers_every_table_the_migrations_create(empty_tables):
    created = {name.lower() for path in MIGRATIONS.glob("*.sql") if not path.name.endswith(".rollback.sql")
               for name in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", path.read_text(), re.I)}
    emptied = {name.rsplit(".", 1)[1] for name in empty_tables()}
    # log_streams is kept on purpose: a stream's id never changes, and store.logs relies on it.
    assert created and created - {"log_streams"} <= emptied and "log_streams" not in emptied
    assert not [name for name in emptied if "yoyo" in name]  # yoyo's bookkeeping is kept


@pytest.fixture
def build_celery():
    """make_celery, with the process's current Celery app restored afterwards (a new app
    makes itself the current one)."""
    previous = current_app._get_current_object()
    yield make_celery
    previous.set_current()


@pytest.mark.parametrize("drain_interval, trim_interval", [(0.3, 2.0), (5.0, 45.0)])
def test_every_beat_entry_names_a_registered_task_and_is_a_tick_without_expiry(build_celery, drain_interval,
                                                                                trim_interval):
    app = build_celery(load_settings({}, drain_interval=drain_interval, trim_interval=trim_interval))
    app.loader.import_default_modules()
    entries = app.conf.beat_schedule
    assert entries, "no beat schedule"
    for name, entry in entries.items():
        assert entry["task"] in app.tasks, f"beat entry {name} names unknown task {entry['task']}"
        # Piling up is prevented by a tick token in Redis (pipeline.ticks), not by `expires`,
        # which a worker clock ahead of beat's would turn into "revoke every tick".
        assert "expires" not in entry.get("options", {}), f"beat entry {name} depends on the clocks agreeing"
        assert entry["kwargs"] == {"tick": True}, f"beat entry {name} is not a tick"
    # The schedule is the one these settings ask for (not one frozen when tasks/ was imported).
    every = {entry["task"]: entry["schedule"] for entry in entries.values()}
    assert every["tasks.drain.drain_tick"] == drain_interval
    assert every["tasks.drain.trim_stream"] == trim_interval


def test_readme_settings_table_matches_the_settings_module():
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README's settings table is stale: python -m collector.core.settings"


def test_readme_gives_the_commands_ci_and_make_use():
    readme = (ROOT / "README.md").read_text()
    for command in ("make install", "make run", "make test", "make up", "make bench"):
        assert command in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t\$\(BIN\)/pytest$", makefile, re.M)
    procfile = (ROOT / "Procfile").read_text()
    for process in ("api1", "api2", "worker", "beat", "flower", "nginx"):
        assert re.search(rf"^{process}:", procfile, re.M)
    # The fixed ports, which a test of `make run` may move (API1_PORT, API2_PORT, FLOWER_PORT).
    assert "PORT=${API1_PORT:-8001}" in procfile and "PORT=${API2_PORT:-8002}" in procfile
    assert "--port=${FLOWER_PORT:-5555}" in procfile
