"""Redis going away and coming back, against a throwaway redis-server."""

from __future__ import annotations

import dataclasses

import pytest

from collector.devtools.processes import free_port, wait_until
from tests.stack import ThrowawayRedis

pytestmark = pytest.mark.slow

LOG = {"device_id": "dev-1", "log_level": "INFO", "message": "hello"}


@pytest.fixture
def own_redis(tmp_path):
    server = ThrowawayRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_down_means_503_with_retry_after_and_recovery_without_restart(own_redis, base_settings, db,
                                                                                make_app):
    server = own_redis
    settings = dataclasses.replace(base_settings, redis_url=server.url)
    client = make_app(settings).test_client()
    wait_until(lambda: client.post("/api/log", json=LOG).status_code == 200, 10, "ingest with Redis up")

    server.stop()
    for path, payload in (("/api/log", LOG), ("/api/logs/batch", {"logs": [LOG, LOG]})):
        response = client.post(path, json=payload)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(settings.retry_after)
        assert response.get_json()["error"] == "redis_unavailable"
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["checks"] == {"redis": False, "postgres": True}
    assert "redis" in health.get_json()["errors"]

    server.start()
    wait_until(lambda: client.post("/api/log", json=LOG).status_code == 200, 10, "ingest after Redis returns")
    assert client.get("/health").status_code == 200


def test_database_down_does_not_stop_ingest(base_settings, settings, db, make_app):
    broken = dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
                                 db_timeout=0.5)
    client = make_app(broken).test_client()
    assert client.post("/api/log", json=LOG).status_code == 200
    health = client.get("/health")
    assert health.status_code == 503
    assert health.get_json()["checks"] == {"redis": True, "postgres": False}
    query = client.get("/api/logs/dev-1")
    assert query.status_code == 503 and query.headers["Retry-After"]
    assert query.get_json()["error"] == "database_unavailable"
