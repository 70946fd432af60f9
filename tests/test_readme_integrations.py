"""The README's Integrations examples, run as written against a real stack (nginx, two
Gunicorn APIs, a worker and beat, keys on): the OpenTelemetry SDK snippet and the
gzip'd curl post. Only the address changes, to the test stack's nginx."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import psycopg
import pytest

from collector.devtools.processes import ROOT, wait_until
from tests.stack import Stack
from tests.test_identity_e2e import keys_cli

pytestmark = [pytest.mark.e2e]

README = (ROOT / "README.md").read_text()
README_URL = "http://127.0.0.1:18723"


def readme_block(name: str) -> str:
    """The code block that follows `<!-- tested: name ... -->` in the README."""
    match = re.search(rf"<!-- tested: {re.escape(name)}\b.*?-->\s*```\w*\n(.*?)```", README, re.S)
    assert match, f"no block marked 'tested: {name}' in README.md"
    return match.group(1)


@pytest.fixture
def stack(base_settings, empty_tables, tmp_path, request):
    empty_tables()
    stack = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                   "KEY_PREFIX": f"{base_settings.key_prefix}{request.node.name}:", "DRAIN_INTERVAL": "0.5",
                   "AUTH_ENABLED": "true"}, tmp_path)
    request.addfinalizer(stack.stop)
    stack.front = stack.start_all()
    stack.key = keys_cli(base_settings, stack.env["KEY_PREFIX"], "create", "--prefix", "device_")
    return stack


def stored(database_url: str) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute("SELECT device_id, log_level::text, message, log_data::text FROM logs").fetchall()


def run(command: list[str], stack: Stack) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLLECTOR_KEY": stack.key}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_opentelemetry_sdk_example_stores_its_log(stack, base_settings):
    code = readme_block("otlp-sdk")
    assert README_URL in code
    done = run([sys.executable, "-c", code.replace(README_URL, stack.front)], stack)
    assert done.returncode == 0, done.stderr
    assert "Failed to export" not in done.stderr, done.stderr
    rows = wait_until(lambda: stored(base_settings.database_url), 60, "the SDK's log in PostgreSQL")
    [(device, level, message, data)] = rows
    assert (device, level, message) == ("device_001", "WARNING", "battery low")
    data = json.loads(data)
    assert data["attributes"]["battery_pct"] == 7 and data["resource"]["device.id"] == "device_001"
    assert data["scope"]["name"] == "sensor" and data["severity_number"] == 13


def test_the_gzip_curl_example_is_queued_and_stored(stack, base_settings):
    code = readme_block("curl-gzip")
    command, _, expected = code.partition("\n# ")
    done = run(["bash", "-c", command.replace(README_URL, stack.front)], stack)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) == set(json.loads(expected.replace('"..."', '""').replace('["..."]', '[]')))
    assert answer["status"] == "queued" and answer["count"] == 1
    rows = wait_until(lambda: stored(base_settings.database_url), 60, "the gzipped log in PostgreSQL")
    assert [(d, lvl, m) for d, lvl, m, _ in rows] == [("device_001", "INFO", "sent gzipped")]
