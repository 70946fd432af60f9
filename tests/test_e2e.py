"""The whole stack as real processes: nginx -> two Gunicorn/gevent APIs -> Redis Stream
-> Celery worker driven by beat -> PostgreSQL, and back out through the query API."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from collector.devtools.processes import ROOT, nginx_binary, wait_until
from tests.stack import BIN, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEVICES = 100
LOGS_PER_DEVICE = 100
BATCH = 20
SINGLES = 500


@pytest.fixture(scope="module")
def stack(base_settings, empty_tables, tmp_path_factory):
    if nginx_binary() is None:
        pytest.fail("nginx is required for the end-to-end tests: apt-get install -y nginx")
    empty_tables()
    stack = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                   "KEY_PREFIX": base_settings.key_prefix + "e2e:", "DRAIN_INTERVAL": "0.5"},
                  tmp_path_factory.mktemp("stack"))
    try:
        url = stack.start_all()
        yield {"url": url, "stack": stack, "db": base_settings.database_url}
    finally:
        stack.stop()
        sys.stderr.write(f"--- worker (tail) ---\n{stack.tail('worker')}\n")


def db_count(url: str, where: str = "", params: tuple = ()) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM logs {where}", params).fetchone()[0]


def post_device(url: str, device: int) -> list[str]:
    """One device: its logs in batches, then its share of single logs."""
    ids: list[str] = []
    with requests.Session() as http:
        for start in range(0, LOGS_PER_DEVICE, BATCH):
            logs = [{"device_id": f"dev-{device:03d}", "log_level": ("INFO", "ERROR", "DEBUG")[i % 3],
                     "message": f"batch log {start + i}", "log_data": {"seq": start + i}} for i in range(BATCH)]
            response = http.post(f"{url}/api/logs/batch", json={"logs": logs}, timeout=30)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["status"] == "queued" and body["count"] == BATCH
            ids += body["message_ids"]
        for n in range(SINGLES // DEVICES):
            response = http.post(f"{url}/api/log", json={"device_id": f"dev-{device:03d}", "log_level": "WARNING",
                                                         "message": f"single {n}"}, timeout=30)
            assert response.status_code == 200, response.text
            ids.append(response.json()["message_id"])
    return ids


def test_every_accepted_log_is_stored_exactly_once_and_queryable(stack):
    url, database = stack["url"], stack["db"]
    with ThreadPoolExecutor(max_workers=25) as pool:
        accepted = [i for ids in pool.map(lambda d: post_device(url, d), range(DEVICES)) for i in ids]
    expected = DEVICES * LOGS_PER_DEVICE + SINGLES
    assert len(accepted) == len(set(accepted)) == expected

    wait_until(lambda: db_count(database) >= expected, 180, f"{expected} rows in PostgreSQL", interval=0.5)
    with psycopg.connect(database) as conn:
        stored = [r[0] for r in conn.execute("SELECT stream_entry_id(received_at, entry_seq) FROM logs")]
    assert len(stored) == expected
    assert set(stored) == set(accepted)  # every 2xx'd log, each exactly once

    page = requests.get(f"{url}/api/logs/dev-007?limit=1000", timeout=10).json()
    assert page["total"] == LOGS_PER_DEVICE + SINGLES // DEVICES
    times = [row["created_at"] for row in page["data"]]
    assert times == sorted(times, reverse=True)

    # A newly persisted log shows in the very next query, cache or not.
    requests.get(f"{url}/api/logs/dev-007?limit=5", timeout=10)
    new_id = requests.post(f"{url}/api/log", json={"device_id": "dev-007", "log_level": "CRITICAL",
                                                   "message": "the newest"}, timeout=10).json()["message_id"]
    wait_until(lambda: db_count(database, "WHERE stream_entry_id(received_at, entry_seq) = %s", (new_id,)) == 1,
               60, "the new log to persist")
    newest = requests.get(f"{url}/api/logs/dev-007?limit=5", timeout=10).json()
    assert newest["data"][0]["message"] == "the newest"

    # Once idle, the stats agree with the table.
    def idle_stats():
        stats = requests.get(f"{url}/api/stats", timeout=10).json()
        return stats if stats["pipeline"]["pending"] == 0 and stats["pipeline"]["lag"] == 0 else None

    stats = wait_until(idle_stats, 60, "an idle pipeline")
    with psycopg.connect(database) as conn:
        by_level = dict(conn.execute("SELECT log_level, count(*) FROM logs GROUP BY 1").fetchall())
    assert stats["total_logs"] == expected + 1 == stats["pipeline"]["persisted"]
    assert {k: v for k, v in stats["logs_by_level"].items() if v} == by_level
    assert "dev-007" in stats["recent_devices"]


def test_bad_requests_through_nginx_are_json_and_change_nothing(stack):
    url, database = stack["url"], stack["db"]
    before = db_count(database)
    cases = [
        (requests.post, "/api/log", {"data": "{", "headers": {"Content-Type": "application/json"}}, 400),
        (requests.post, "/api/log", {"data": "x", "headers": {"Content-Type": "text/plain"}}, 415),
        (requests.post, "/api/log", {"json": {"device_id": "d"}}, 422),
        (requests.post, "/api/logs/batch", {"json": {"logs": []}}, 422),
        (requests.post, "/api/logs/batch", {"data": "x" * (2 * 1024 * 1024),
                                            "headers": {"Content-Type": "application/json"}}, 413),
    ]
    for method, path, kwargs, status in cases:
        response = method(f"{url}{path}", timeout=10, **kwargs)
        assert response.status_code == status, (path, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"]
    assert db_count(database) == before


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples in a Prometheus text exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_metrics_move_when_logs_are_posted_and_persisted(stack):
    api_stack = stack["stack"]
    worker_metrics = f"http://127.0.0.1:{api_stack.worker_metrics_port}/metrics"
    api1 = f"http://127.0.0.1:{api_stack.api_ports[0]}/metrics"

    def persisted() -> float:
        return metric(requests.get(worker_metrics, timeout=5).text, "collector_logs_persisted_total")

    before_accepted = metric(requests.get(api1, timeout=5).text, "collector_logs_accepted_total")
    before_persisted = wait_until(lambda: persisted() + 1, 60, "the worker's metrics server") - 1
    logs = [{"device_id": "metrics", "log_level": "INFO", "message": f"m{i}"} for i in range(40)]
    with requests.Session() as http:
        for _ in range(4):  # least_conn spreads these; go straight to api1 to read its counter
            http.post(f"http://127.0.0.1:{api_stack.api_ports[0]}/api/logs/batch", json={"logs": logs}, timeout=10)
    text = requests.get(api1, timeout=5).text
    assert metric(text, "collector_logs_accepted_total") == before_accepted + 160
    assert re.search(r'collector_http_request_duration_seconds_count\{[^}]*endpoint="api.ingest_batch"', text)
    assert "collector_stream_length" in text
    wait_until(lambda: persisted() >= before_persisted + 160, 60, "the worker's persisted counter")


def test_headless_locust_fleet_has_no_failures_and_every_log_is_stored(stack, tmp_path):
    """The simulated fleet, small and short: no request failed, and what it was told was
    accepted is all in PostgreSQL. Correctness only: `--max-p95-ms 0` switches the
    fleet's latency threshold off (its default would make this test measure the
    machine's speed); `--max-fail-ratio 0` fails the run on any failed request."""
    url, database = stack["url"], stack["db"]
    accepted_file = tmp_path / "accepted"
    run = subprocess.run(
        [str(BIN / "locust"), "-f", "locustfiles/devices.py", "--headless", "-u", "10", "-r", "10", "-t", "4s",
         "--stop-timeout", "10", "--host", url, "--rate", "5", "--batch-ratio", "0.5", "--read-ratio", "0.1",
         "--device-prefix", "locust", "--max-fail-ratio", "0", "--max-p95-ms", "0",
         "--accepted-file", str(accepted_file), "--only-summary"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    accepted = int(accepted_file.read_text())
    assert accepted > 0
    wait_until(lambda: db_count(database, "WHERE device_id LIKE 'locust-%%'") == accepted, 60,
               f"{accepted} locust logs in PostgreSQL")
