"""Project invariants: migrations, beat schedule, README truthfulness."""

from __future__ import annotations

import re
import subprocess
import sys

import psycopg
from psycopg import sql

from collector.core.settings import settings_table
from collector.store.migrations import migrate
from tests.conftest import ADMIN_DATABASE_URL, database_url
from tests.processes import ROOT


def test_migrations_apply_on_an_empty_database_and_again_as_no_ops(run_id):
    name = f"collector_migrate_{run_id}"
    url = database_url(name)
    try:
        assert migrate(url) == ["0001.create-logs", "0002.dead-letters"]
        assert migrate(url) == []
        with psycopg.connect(url) as conn:
            columns = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'logs'")}
        assert {"id", "device_id", "log_level", "message", "log_data", "created_at"} <= columns
    finally:
        with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_every_beat_entry_names_a_registered_task_and_expires_before_its_next_run():
    code = (
        "from tasks.celery_app import app; app.loader.import_default_modules(); "
        "import json; print(json.dumps({k: [v['task'], v['task'] in app.tasks, v['schedule'], "
        "v['options']['expires']] for k, v in app.conf.beat_schedule.items()}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    entries = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert entries, "no beat schedule"
    for name, (task, registered, every, expires) in entries.items():
        assert registered, f"beat entry {name} names unknown task {task}"
        assert expires < every, f"beat entry {name} could pile up"


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
    assert "PORT=8001" in procfile and "PORT=8002" in procfile and "--port=5555" in procfile
