"""Exactly once from the device, with real processes: lost replies, a killed API
instance, copies through both instances, keys and limits through nginx."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest
import redis
import requests

from collector.devtools.processes import ROOT, Process, free_port, nginx_binary, wait_until
from tests.stack import BIN, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Redis busy for longer than REDIS_TIMEOUT (0.5 s): requests in flight time out and get
# a 503, although Redis runs their scripts once it is free again. A script, not CLIENT
# PAUSE: a paused client's commands are dropped when it times out.
BUSY_SCRIPT = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
    local n = redis.call('TIME')
    if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) then break end
end
return 1
"""


class Devices:
    """Devices that number their logs, send each batch with an Idempotency-Key, and
    resend the same body with the same key on 502/503/504 and connection errors."""

    def __init__(self, urls: list[str], devices: int = 8, batches: int = 40, size: int = 5,
                 headers: dict | None = None, pause: float = 0.0) -> None:
        self.urls, self.devices, self.batches, self.size = urls, devices, batches, size
        self.pause = pause  # seconds between batches: a lower bound on how long the devices send
        self.headers = headers or {}
        self.sent: set[str] = set()  # messages that got a 200
        self.retried = 0
        self.replayed = 0
        self.statuses: dict[int | str, int] = {}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._device, args=(d,), daemon=True) for d in range(devices)]

    def start(self) -> Devices:
        for t in self._threads:
            t.start()
        return self

    def sending(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wait(self, timeout: float = 240) -> None:
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "devices still sending"
        assert not self.failures, self.failures[:5]

    def _count(self, what) -> None:
        with self._lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1

    def _device(self, d: int) -> None:
        urls = itertools.cycle(self.urls[d % len(self.urls):] + self.urls[:d % len(self.urls)])
        session = requests.Session()
        boot = f"boot-{uuid.uuid4().hex[:6]}"
        seq = itertools.count(1)
        for b in range(self.batches):
            time.sleep(self.pause)
            logs = [{"device_id": f"device_{d:03d}", "log_level": "INFO", "message": f"d{d}-b{b}-{i}",
                     "seq": next(seq), "boot_id": boot} for i in range(self.size)]
            key = str(uuid.uuid4())
            for _attempt in range(200):
                try:
                    r = session.post(f"{next(urls)}/api/logs/batch", json={"logs": logs}, timeout=10,
                                     headers={"Idempotency-Key": key, **self.headers})
                    self._count(r.status_code)
                    if r.status_code == 200:
                        with self._lock:
                            self.sent.update(log["message"] for log in logs)
                            self.replayed += r.headers.get("Idempotent-Replayed") == "true"
                        break
                    if r.status_code not in (502, 503, 504):
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
                        return
                except requests.RequestException as exc:
                    self._count(type(exc).__name__)
                with self._lock:
                    self.retried += 1
                time.sleep(0.1)  # quicker than Retry-After: the test is about correctness
            else:
                self.failures.append(f"device {d} gave up on batch {b}")
                return


def stored_messages(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [m for (m,) in conn.execute("SELECT message FROM logs")]


def assert_each_stored_once(devices: Devices, database_url: str) -> None:
    expected = devices.devices * devices.batches * devices.size
    assert len(devices.sent) == expected
    wait_until(lambda: len(stored_messages(database_url)) >= expected, 180, f"{expected} rows", interval=0.5)
    time.sleep(2)  # a late duplicate would land now
    stored = stored_messages(database_url)
    assert len(stored) == len(set(stored)) == expected, f"{len(stored)} rows, {len(set(stored))} distinct"
    assert set(stored) == devices.sent


@pytest.fixture
def make_stack(base_settings, tmp_path, request):
    stacks = []

    def make(**env) -> Stack:
        env = {"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
               "KEY_PREFIX": f"{base_settings.key_prefix}{request.node.name}:", "DRAIN_INTERVAL": "0.5", **env}
        stacks.append(Stack(env, tmp_path))
        return stacks[-1]

    yield make
    for stack in stacks:
        stack.stop()


def test_lost_replies_while_redis_is_busy_store_every_log_exactly_once(make_stack, fresh_db, base_settings):
    stack = make_stack()
    urls = [stack.start_api(0), stack.start_api(1)]
    stack.start_worker()
    stack.start_beat()
    # Paced, so that however fast the machine, the devices are still sending when Redis is busy.
    devices = Devices(urls, devices=16, batches=30, pause=0.1).start()
    busy = redis.Redis.from_url(base_settings.redis_url)
    for _ in range(3):
        time.sleep(0.5)
        if devices.sending():
            busy.eval(BUSY_SCRIPT, 0, 1_500_000)  # 1.5 s, three times REDIS_TIMEOUT
    devices.wait()
    assert devices.statuses.get(503, 0) > 0, f"Redis being busy refused nothing: {devices.statuses}"
    assert devices.replayed > 0, "no request was executed by Redis after its 503: the fault did not happen"
    assert_each_stored_once(devices, fresh_db)


def test_kill_9_of_an_api_instance_under_retrying_load_stores_every_log_exactly_once(make_stack, fresh_db):
    if nginx_binary() is None:
        pytest.fail("nginx is required: apt-get install -y nginx")
    stack = make_stack()
    stack.start_all()
    front = f"http://127.0.0.1:{stack.front_port}"
    devices = Devices([front], devices=12, batches=40).start()
    wait_until(lambda: len(devices.sent) > 300, 60, "load under way")
    stack.kill("api1")
    time.sleep(1.0)
    stack.start_api(0, port=stack.api_ports[0])
    devices.wait()
    assert_each_stored_once(devices, fresh_db)


def test_the_same_seq_through_both_instances_and_a_replay_is_stored_once(make_stack, fresh_db, base_settings):
    stack = make_stack()
    api1, api2 = stack.start_api(0), stack.start_api(1)
    stack.start_worker()
    stack.start_beat()
    log = {"device_id": "device_042", "log_level": "WARNING", "message": "fan stalled", "seq": 7, "boot_id": "b1"}
    assert requests.post(f"{api1}/api/log", json=log, timeout=10).status_code == 200
    assert requests.post(f"{api2}/api/log", json={**log, "message": "fan stalled (resent)"}, timeout=10
                         ).status_code == 200
    wait_until(lambda: requests.get(f"{api1}/api/stats", timeout=5).json()["pipeline"]["duplicates_skipped"] == 1,
               60, "the second copy to be skipped")
    # A third copy comes back through the dead-letter store and is replayed.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dead_letters (stream, stream_id, payload, reason, delivery_count) VALUES (%s, %s, %s, %s, 1)",
            ("elsewhere#1", "1-1", psycopg.types.json.Jsonb(
                {"d": "device_042", "l": "WARNING", "m": "fan stalled (replayed)", "t": "2026-01-01T00:00:00+00:00",
                 "r": "2026-01-01T00:00:00+00:00", "b": "b1", "s": "7"}), "test"))
    env = {"DATABASE_URL": fresh_db, "REDIS_URL": base_settings.redis_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "collector.deadletters", "replay", "--all"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT message FROM logs").fetchall() == [("fan stalled",)]
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0


def keys_cli(base_settings, prefix: str, *argv: str) -> str:
    env = {"DATABASE_URL": base_settings.database_url, "REDIS_URL": base_settings.redis_url, "KEY_PREFIX": prefix,
           "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "collector.keys", *argv], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def test_keys_and_limits_through_nginx_and_revocation_on_both_instances(make_stack, fresh_db, base_settings,
                                                                       request):
    if nginx_binary() is None:
        pytest.fail("nginx is required: apt-get install -y nginx")
    stack = make_stack(AUTH_ENABLED="true", RATE_LIMIT_PER_DEVICE="5", RATE_LIMIT_BURST="10")
    prefix = stack.env["KEY_PREFIX"]
    api_urls = [stack.start_api(0), stack.start_api(1)]
    front = stack.start_nginx()
    fleet = keys_cli(base_settings, prefix, "create", "--prefix", "device_")
    reader = keys_cli(base_settings, prefix, "create", "--role", "reader")

    def post(logs, secret=fleet, url=front):
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return requests.post(f"{url}/api/logs/batch", json={"logs": logs}, headers=headers, timeout=10)

    def one(device="device_001"):
        return {"device_id": device, "log_level": "INFO", "message": "m"}

    anonymous = post([one()], secret=None)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    outside = post([one(), one("sensor_9")])
    assert outside.status_code == 403 and "logs[1]" in outside.json()["message"]
    ok = post([one()] * 8)
    assert ok.status_code == 200 and ok.headers["RateLimit-Policy"] == '"device";q=10;w=2'
    limited = post([one()] * 8)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1 and limited.headers["RateLimit"].startswith('"device";r=')
    assert requests.get(f"{front}/health", timeout=5).json()["checks"] == {"redis": True, "postgres": True}

    for url in api_urls:  # both instances know the reader now
        assert requests.get(f"{url}/api/stats", headers={"X-API-Key": reader}, timeout=5).status_code == 200
    keys_cli(base_settings, prefix, "revoke", fleet.split(".")[1])
    keys_cli(base_settings, prefix, "revoke", reader.split(".")[1])
    for url in api_urls:  # ingest checks the key in its Redis script: refused at once
        assert post([one("device_002")], url=url).status_code == 401
    time.sleep(1.1)  # reads re-check a cached key after one second (keyring.REVALIDATE_SECONDS)
    for url in api_urls:
        assert requests.get(f"{url}/api/stats", headers={"X-API-Key": reader}, timeout=5).status_code == 401


def test_https_mode_serves_tls_and_refuses_plain_http(make_stack, fresh_db, tmp_path):
    if nginx_binary() is None:
        pytest.fail("nginx is required: apt-get install -y nginx")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    stack = make_stack()
    api = stack.start_api(0).removeprefix("http://")
    port = free_port()
    nginx = Process("nginx-tls", [sys.executable, str(ROOT / "nginx" / "run_local.py")],
                    {**stack.env, "API1_ADDR": api, "API2_ADDR": api, "LISTEN": f"127.0.0.1:{port}",
                     "NGINX_STATE_DIR": str(tmp_path / "nginx"), "TLS_CERT": str(cert), "TLS_KEY": str(key)},
                    tmp_path / "nginx-tls.log").start()
    try:
        health = wait_until(lambda: requests.get(f"https://127.0.0.1:{port}/health", verify=str(cert), timeout=3),
                            30, "nginx over HTTPS")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        plain = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert plain.status_code == 400 and plain.json()["error"] == "https_required"
    finally:
        nginx.stop()


def test_locust_fleet_with_keys_on_stores_every_log_once_while_redis_stalls(make_stack, fresh_db, base_settings,
                                                                           tmp_path):
    """The headless fleet as shipped (Idempotency-Key, retries, seq/boot_id) against a
    stack with keys and limits on, while Redis stalls past REDIS_TIMEOUT twice: no
    request fails for good, and every log it was told was accepted is stored once."""
    if nginx_binary() is None:
        pytest.fail("nginx is required: apt-get install -y nginx")
    stack = make_stack(AUTH_ENABLED="true")
    stack.start_all()
    fleet_key = keys_cli(base_settings, stack.env["KEY_PREFIX"], "create", "--prefix", "fleet")
    reader_key = keys_cli(base_settings, stack.env["KEY_PREFIX"], "create", "--role", "reader")
    accepted_file = tmp_path / "accepted"
    locust = subprocess.Popen(
        [str(BIN / "locust"), "-f", "locustfiles/devices.py", "--headless", "-u", "20", "-r", "20", "-t", "8s",
         "--stop-timeout", "20",
         "--host", f"http://127.0.0.1:{stack.front_port}", "--rate", "10", "--batch-ratio", "0.5",
         "--device-prefix", "fleet", "--api-key", fleet_key, "--reader-key", reader_key, "--read-ratio", "0.1",
         "--max-fail-ratio", "0", "--max-p95-ms", "0",
         "--accepted-file", str(accepted_file), "--only-summary"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    busy = redis.Redis.from_url(base_settings.redis_url)
    for pause in (2.0, 1.5):
        time.sleep(pause)
        busy.eval(BUSY_SCRIPT, 0, 1_500_000)
    out, err = locust.communicate(timeout=120)
    assert locust.returncode == 0, err[-3000:]
    accepted = int(accepted_file.read_text())

    def rows():
        with psycopg.connect(fresh_db) as conn:
            return conn.execute("SELECT count(*), count(DISTINCT (device_id, boot_id, seq)) FROM logs "
                                "WHERE device_id LIKE 'fleet-%'").fetchone()

    wait_until(lambda: rows()[0] >= accepted > 0, 120, f"{accepted} fleet logs in PostgreSQL", interval=0.5)
    time.sleep(2)  # a late duplicate would land now
    assert rows() == (accepted, accepted)
