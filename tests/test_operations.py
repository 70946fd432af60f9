"""Operations: ingest health without PostgreSQL, and no Redis that would evict the stream."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from collector.core.settings import SettingsError
from collector.devtools.processes import Process, free_port, redis_server_binary, wait_until
from collector.web.app import create_app
from tests.deployment import compose_services


def test_livez_stays_up_while_postgres_is_unreachable(settings):
    app = create_app(dataclasses.replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x",
                                         db_timeout=0.2, auth_enabled=True))
    client = app.test_client()
    live = client.get("/livez")
    assert live.status_code == 200 and live.get_json() == {"status": "up", "checks": {"redis": True}}
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["checks"]["postgres"] is False
    app.extensions["collector"].db.close()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
def test_an_evicting_redis_is_refused_at_start(settings, tmp_path, policy):
    port = free_port()
    server = Process(f"redis-{policy}", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no", "--maxmemory-policy", policy],
                     {}, tmp_path / "redis.log").start()
    try:
        wait_until(lambda: redis.Redis(port=port).ping(), 20, "throwaway Redis")
        with pytest.raises(SettingsError, match=policy):
            create_app(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{port}/0"))
    finally:
        server.stop()


def test_compose_checks_api_health_without_postgres():
    for name in ("api1", "api2"):
        test = " ".join(compose_services()[name]["healthcheck"]["test"])
        assert "/livez" in test and "/health'" not in test
