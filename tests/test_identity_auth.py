"""Keys, roles and scopes, through the real app against the real Redis and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis as redis_lib

from collector import keys as keys_cli
from collector.devtools.processes import ROOT
from collector.web.app import create_app


@pytest.fixture
def cli(settings, db, monkeypatch, capsys):
    """Runs `python -m collector.keys ...` in-process against the test database and Redis namespace."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)

    def run(*argv: str) -> tuple[int, str, str]:
        code = keys_cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def secured(settings, db):
    app = create_app(dataclasses.replace(settings, auth_enabled=True, metrics_token="scrape-me"))
    yield app.test_client()
    app.extensions["collector"].db.close()


def create(cli, *argv: str) -> str:
    code, out, err = cli("create", *argv)
    assert code == 0 and "created key" in err
    return out.splitlines()[-1]


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def log(device: str = "device_001") -> dict:
    return {"device_id": device, "log_level": "INFO", "message": "m"}


def assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["error"] == error and body["message"]
    return body


def test_anonymous_callers_get_only_the_public_endpoints(secured):
    for path in ("/", "/health", "/openapi.json", "/docs"):
        assert secured.get(path).status_code == 200, path
    assert "errors" not in secured.get("/health").get_json()
    for method, path in (("post", "/api/log"), ("get", "/api/logs/device_001"), ("get", "/api/stats"),
                         ("get", "/api/dead-letters"), ("get", "/metrics"),
                         ("get", "/api/devices/device_001/sequence")):
        response = getattr(secured, method)(path, json=log() if method == "post" else None)
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="collector"'


def test_unknown_and_malformed_keys_are_a_401(secured):
    for secret in ("dlc.000000000000.nope", "not-a-key", ""):
        assert_error(secured.post("/api/log", json=log(), headers=bearer(secret)), 401, "unauthorized")


def test_a_device_key_sends_and_reads_only_its_own_device(secured, cli):
    secret = create(cli, "--device", "device_001", "--name", "one device")
    assert secured.post("/api/log", json=log(), headers=bearer(secret)).status_code == 200
    body = assert_error(secured.post("/api/logs/batch", json={"logs": [log(), log("device_002")]},
                                     headers=bearer(secret)), 403, "forbidden")
    assert "logs[1]" in body["message"] and "device_002" in body["message"]
    assert secured.get("/api/logs/device_001", headers=bearer(secret)).status_code == 200
    assert secured.get("/api/devices/device_001/sequence", headers=bearer(secret)).status_code == 200
    assert_error(secured.get("/api/logs/device_002", headers=bearer(secret)), 403, "forbidden")
    for path in ("/api/stats", "/api/dead-letters", "/metrics"):
        assert_error(secured.get(path, headers=bearer(secret)), 403, "forbidden")


def test_a_fleet_key_covers_its_prefix_and_nothing_else(secured, cli):
    secret = create(cli, "--prefix", "device_")
    ok = {"logs": [log("device_001"), log("device_099")]}
    assert secured.post("/api/logs/batch", json=ok, headers={"X-API-Key": secret}).status_code == 200
    body = assert_error(secured.post("/api/logs/batch", json={"logs": [log("device_001"), log("sensor_1")]},
                                     headers=bearer(secret)), 403, "forbidden")
    assert "logs[1]" in body["message"] and "device_*" in body["message"]


def test_readers_read_everything_and_send_nothing(secured, cli):
    secret = create(cli, "--role", "reader")
    for path in ("/api/logs/device_001", "/api/stats", "/api/devices/x/sequence"):
        assert secured.get(path, headers=bearer(secret)).status_code == 200, path
    assert "errors" not in secured.get("/health", headers=bearer(secret)).get_json()  # healthy: nothing to say
    assert_error(secured.post("/api/log", json=log(), headers=bearer(secret)), 403, "forbidden")
    assert_error(secured.get("/api/dead-letters", headers=bearer(secret)), 403, "forbidden")


def test_admins_do_everything_and_scrapers_only_scrape(secured, cli):
    secret = create(cli, "--role", "admin")
    assert secured.post("/api/log", json=log("anything"), headers=bearer(secret)).status_code == 200
    for path in ("/api/dead-letters", "/metrics", "/api/stats"):
        assert secured.get(path, headers=bearer(secret)).status_code == 200, path
    assert secured.get("/metrics", headers=bearer("scrape-me")).status_code == 200
    assert_error(secured.get("/api/stats", headers=bearer("scrape-me")), 401, "unauthorized")


def test_revocation_applies_to_ingest_at_once_and_to_reads_within_a_second(secured, cli):
    secret = create(cli, "--prefix", "device_")
    reader = create(cli, "--role", "reader")
    assert secured.post("/api/log", json=log(), headers=bearer(secret)).status_code == 200
    assert secured.get("/api/stats", headers=bearer(reader)).status_code == 200
    for key in (secret, reader):
        code, _, err = cli("revoke", key.split(".")[1])
        assert code == 0 and "revoked" in err
    assert_error(secured.post("/api/log", json=log(), headers=bearer(secret)), 401, "unauthorized")
    time.sleep(1.1)  # the bound the README promises for reads (REVALIDATE_SECONDS)
    assert_error(secured.get("/api/stats", headers=bearer(reader)), 401, "unauthorized")


def test_keys_list_shows_no_secret_and_revoking_an_unknown_key_fails(secured, cli):
    secret = create(cli, "--device", "device_007", "--name", "lab bench")
    secured.post("/api/log", json=log("device_007"), headers=bearer(secret))
    code, out, _ = cli("list")
    [line] = out.splitlines()
    key_id, name, role, scope, created, last_used, revoked = line.split("\t")
    assert (key_id, name, role, scope, revoked) == (secret.split(".")[1], "lab bench", "device", "device_007", "-")
    assert secret.split(".")[2] not in out
    assert cli("revoke", "nope")[0] == 1


def test_secrets_never_reach_logs_or_error_messages(secured, cli, caplog):
    secret = create(cli, "--device", "device_001")
    with caplog.at_level(logging.DEBUG):
        responses = [secured.post("/api/log", json=log("device_002"), headers=bearer(secret)),
                     secured.post("/api/log", data="{bad", content_type="application/json", headers=bearer(secret)),
                     secured.get("/api/logs/device_002", headers=bearer(secret)),
                     secured.post("/api/log", json=log(), headers=bearer(secret + "x"))]
    text = caplog.text + "".join(r.get_data(as_text=True) for r in responses)
    assert secret not in text and secret.split(".")[2] not in text


def test_the_cli_prints_the_secret_alone_on_the_last_line(settings, db):
    env = {"DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url,
           "KEY_PREFIX": settings.key_prefix, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "collector.keys", "create", "--role", "reader"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60, check=True)
    secret = out.stdout.splitlines()[-1]
    assert secret.startswith("dlc.") and secret.split(".")[1] in out.stderr and secret not in out.stderr


def test_without_auth_everything_is_open(settings, db):
    app = create_app(dataclasses.replace(settings, auth_enabled=False))
    client = app.test_client()
    assert client.get("/api/dead-letters").status_code == 200
    assert client.post("/api/log", json=log()).status_code == 200
    app.extensions["collector"].db.close()


def local_ports(app) -> set[str]:
    """The local ports of the app's open Redis connections (to tell its commands apart)."""
    pool = app.extensions["collector"].redis.connection_pool
    return {str(c._sock.getsockname()[1]) for c in [*pool._available_connections, *pool._in_use_connections]
            if c._sock is not None}


def monitored(settings, action, ports: set[str]) -> list[str]:
    """The commands the client(s) on `ports` sent Redis during `action()` (not those their
    scripts ran: those cost no round trip)."""
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def watch() -> None:
        with redis_lib.Redis.from_url(settings.redis_url).monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"] == "PING done":
                    break
                if event.get("client_type") != "lua" and str(event.get("client_port")) in ports:
                    seen.append(event["command"].split(" ", 1)[0].upper())
        done.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(10)
    time.sleep(0.2)
    action()
    redis_lib.Redis.from_url(settings.redis_url).execute_command("PING", "done")
    done.wait(10)
    return seen


def test_keys_and_limits_cost_no_extra_redis_round_trip(settings, db, cli):
    secret = create(cli, "--prefix", "device_")
    plain_app = create_app(dataclasses.replace(settings, auth_enabled=False, rate_limit_per_device=0.0,
                                               backpressure_check_interval=3600.0))
    guarded_app = create_app(dataclasses.replace(settings, auth_enabled=True, backpressure_check_interval=3600.0))
    plain, guarded = plain_app.test_client(), guarded_app.test_client()
    body = {"logs": [log(f"device_{i:03d}") for i in range(5)]}
    for client in (plain, guarded):  # warm up: back-pressure reading, key lookup, script load
        assert client.post("/api/logs/batch", json=body, headers=bearer(secret)).status_code == 200

    def send(client, n: int = 20, key: bool = False):
        def run():
            for i in range(n):
                headers = {**bearer(secret), **({"Idempotency-Key": f"k{i}-{uuid.uuid4()}"} if key else {})}
                assert client.post("/api/logs/batch", json=body, headers=headers).status_code == 200
        return run

    without = monitored(settings, send(plain), local_ports(plain_app))
    with_all = monitored(settings, send(guarded, key=True), local_ports(guarded_app))
    # One MULTI/EXEC per request either way: plain XADDs, or one script doing it all.
    assert without.count("EXEC") == with_all.count("EXEC") == 20
    assert set(with_all) == {"MULTI", "EVALSHA", "EXEC"}, sorted(set(with_all))
    assert set(without) == {"MULTI", "XADD", "HINCRBY", "EXEC"}, sorted(set(without))


def test_idempotency_keys_are_scoped_by_the_credential(secured, cli, redis_client, settings):
    fleet_a, fleet_b = create(cli, "--prefix", "device_"), create(cli, "--prefix", "device_")
    body = {"logs": [log("device_001")]}
    first = secured.post("/api/logs/batch", json=body, headers={**bearer(fleet_a), "Idempotency-Key": "same"})
    again = secured.post("/api/logs/batch", json=body, headers={**bearer(fleet_a), "Idempotency-Key": "same"})
    other = secured.post("/api/logs/batch", json=body, headers={**bearer(fleet_b), "Idempotency-Key": "same"})
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in other.headers
    assert first.get_json()["message_ids"] == again.get_json()["message_ids"] != other.get_json()["message_ids"]
    assert redis_client.xlen(settings.stream) == 2


@pytest.mark.parametrize("argv", [("--rate", "-1"), ("--rate", "nan"), ("--rate", "inf"), ("--burst", "0")])
def test_keys_with_unusable_limits_are_refused(cli, argv):
    code, out, err = cli("create", "--prefix", "device_", *argv)
    assert code == 2 and out == "" and "error" in err
