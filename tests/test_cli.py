"""The command-line tools say what they did and fail with one clear line (collector.cli).

Each tool runs as `python -m ...` in a subprocess with an environment of its own, as an
operator runs it: against the test database, a closed port, a database that does not
exist, one without the tables, and bad settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from collector.devtools.processes import ROOT, free_port
from collector.store import deadletters
from tests.conftest import ADMIN_DATABASE_URL, database_url

TOOLS = {  # module -> arguments of a harmless run
    "collector.deadletters": ["list"],
    "collector.keys": ["list"],
    "collector.migrate": [],
    "collector.devtools.demo_keys": ["--file", "{tmp}/demo-keys.env"],
}


def run_tool(module: str, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=60)


def harmless(module: str, tmp_path) -> list[str]:
    return [arg.format(tmp=tmp_path) for arg in TOOLS[module]]


def assert_one_line_failure(out: subprocess.CompletedProcess, *words: str, status: int = 1) -> str:
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert out.returncode == status, (out.returncode, out.stderr)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def env(settings) -> dict[str, str]:
    """The test database and this test's Redis namespace."""
    return {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url, "KEY_PREFIX": settings.key_prefix}


def closed_port_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/logs"


@pytest.mark.parametrize("module", sorted(TOOLS))
def test_postgres_unreachable_is_one_line_naming_database_url(module, env, tmp_path):
    url = closed_port_url()
    line = assert_one_line_failure(run_tool(module, {**env, "DATABASE_URL": url}, *harmless(module, tmp_path)),
                                   "cannot reach PostgreSQL", url, "(DATABASE_URL)")
    assert line.endswith("connection refused")
    assert not (tmp_path / "demo-keys.env").exists()


@pytest.mark.parametrize("module", sorted(set(TOOLS) - {"collector.migrate"}))  # migrate creates it
def test_a_database_that_does_not_exist_is_one_line_and_hides_the_password(module, env, tmp_path):
    name = f"collector_cli_missing_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(database_url(name))  # a password, which trust authentication ignores
    url = urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:s3cret@{parts.netloc.rpartition('@')[2]}"))
    out = run_tool(module, {**env, "DATABASE_URL": url}, *harmless(module, tmp_path))
    line = assert_one_line_failure(out, "cannot reach PostgreSQL", "(DATABASE_URL)",
                                   f'database "{name}" does not exist', "make migrate")
    assert "s3cret" not in out.stdout + out.stderr and ":***@" in line


@pytest.fixture
def unmigrated_database(run_id):
    name = f"collector_cli_empty_{run_id}"
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url(name)
    with psycopg.connect(ADMIN_DATABASE_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.mark.parametrize("module", ["collector.deadletters", "collector.keys"])
def test_a_database_without_the_tables_says_to_migrate(module, env, unmigrated_database):
    assert_one_line_failure(run_tool(module, {**env, "DATABASE_URL": unmigrated_database}, "list"),
                            unmigrated_database, "(DATABASE_URL)", "does not exist", "make migrate")


@pytest.mark.parametrize("module", sorted(TOOLS))
@pytest.mark.parametrize(("variable", "value"), [("DATABASE_URL", "mysql://127.0.0.1/logs"), ("DB_TIMEOUT", "soon"),
                                                 ("DATABASE_URL", "postgresql://u:s3cret@127.0.0.1/logs?bogus=1")])
def test_a_bad_setting_is_one_line_naming_it(module, variable, value, env, tmp_path):
    out = run_tool(module, {**env, variable: value}, *harmless(module, tmp_path))
    assert_one_line_failure(out, "invalid setting", variable, status=2)
    assert "s3cret" not in out.stderr


def test_demo_keys_with_redis_unreachable_is_one_line_and_makes_no_key(env, db, tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    out = run_tool("collector.devtools.demo_keys", {**env, "REDIS_URL": url}, *harmless("collector.devtools.demo_keys",
                                                                                        tmp_path))
    assert_one_line_failure(out, "cannot reach Redis", url, "(REDIS_URL)")
    assert db.execute("SELECT count(*) FROM device_keys").fetchone()[0] == 0
    assert not (tmp_path / "demo-keys.env").exists()


def test_keys_without_redis_still_work_and_warn_once(env, db):
    out = run_tool("collector.keys", {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                   "create", "--role", "reader")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("warning: Redis unreachable") == 1
    assert out.stdout.splitlines()[-1].startswith("dlc.")


def test_deadletters_list_says_when_there_are_none(env, db):
    out = run_tool("collector.deadletters", env, "list")
    assert (out.returncode, out.stdout, out.stderr.strip()) == (0, "", "no dead letters")


def test_deadletters_list_prints_them_and_counts_them(env, db):
    deadletters.add(db, "cli-test#1", [("1-0", {"d": "x"}, "why", 1), ("2-0", {"d": "y"}, "why", 1)])
    out = run_tool("collector.deadletters", env, "list")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["stream_id"] for line in out.stdout.splitlines()] == ["1-0", "2-0"]
    assert out.stderr.strip() == "2 dead letter(s)"
    first = run_tool("collector.deadletters", env, "list", "--limit", "1")
    assert len(first.stdout.splitlines()) == 1 and first.stderr.strip() == "1 of 2 dead letter(s) (--limit to see more)"


def test_deadletters_replay_says_what_it_did(env, db):
    nothing = run_tool("collector.deadletters", env, "replay", "--all")
    assert (nothing.returncode, nothing.stdout.strip()) == (0, "no dead letters to replay")
    unknown = run_tool("collector.deadletters", env, "replay", "--id", "424242")
    assert unknown.returncode == 0, unknown.stderr
    assert unknown.stdout.splitlines() == [
        "stored 0 dead letter(s); 0 still failing (see `list`)",
        "1 of the 1 id(s) given are not dead letters (already replayed, deleted, or never were)"]


def test_keys_list_says_when_there_are_none(env, db):
    out = run_tool("collector.keys", env, "list")
    assert (out.returncode, out.stdout, out.stderr.strip()) == (0, "", "no keys")


def test_make_help_lists_the_new_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    targets = {line.split()[1] for line in out.stdout.splitlines() if line.strip().startswith("make ")}
    assert {"deadletters", "keys", "locust"} <= targets
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/locust -f locustfiles/devices.py --web-host 127.0.0.1" in makefile
