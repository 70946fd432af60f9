"""Per-device rate limits, counted in logs and checked in the same Redis script as the XADDs."""

from __future__ import annotations

import dataclasses

import pytest

from collector.web.app import create_app


@pytest.fixture
def limited(settings, db):
    app = create_app(dataclasses.replace(settings, rate_limit_per_device=10.0, rate_limit_burst=20))
    yield app.test_client()
    app.extensions["collector"].db.close()


def logs(n: int, device: str = "dev-1") -> dict:
    return {"logs": [{"device_id": device, "log_level": "INFO", "message": f"m{i}"} for i in range(n)]}


def test_every_2xx_carries_the_rate_limit_headers(limited):
    response = limited.post("/api/logs/batch", json=logs(5))
    assert response.status_code == 200
    assert response.headers["RateLimit-Policy"] == '"device";q=20;w=2'
    # A new device's bucket starts full (20) and the batch costs 5, whatever the time.
    assert response.headers["RateLimit-Remaining"] == "15"
    assert response.headers["RateLimit"] == f'"device";r=15;t={response.headers["RateLimit-Reset"]}'


def test_over_the_limit_is_a_429_with_retry_after_and_nothing_is_queued(limited, redis_client, settings):
    assert limited.post("/api/logs/batch", json=logs(18)).status_code == 200
    response = limited.post("/api/logs/batch", json=logs(10))  # a batch of 10 costs 10, not 1
    assert response.status_code == 429
    body = response.get_json()
    assert body["error"] == "rate_limited" and "logs[0]" in body["message"] and "dev-1" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1 and "RateLimit" in response.headers
    assert redis_client.xlen(settings.stream) == 18


def test_a_batch_over_the_burst_can_never_fit_and_says_so(limited, redis_client, settings):
    response = limited.post("/api/logs/batch", json=logs(21))
    assert response.status_code == 429 and "split" in response.get_json()["message"]
    assert redis_client.xlen(settings.stream) == 0


def test_each_device_has_its_own_bucket_and_the_most_constrained_is_reported(limited, redis_client, settings):
    assert limited.post("/api/logs/batch", json=logs(15, "dev-a")).status_code == 200
    mixed = {"logs": logs(2, "dev-b")["logs"] + logs(4, "dev-a")["logs"]}
    response = limited.post("/api/logs/batch", json=mixed)
    assert response.status_code == 200 and int(response.headers["RateLimit-Remaining"]) <= 2  # dev-a's
    refused = limited.post("/api/logs/batch", json={"logs": logs(1, "dev-c")["logs"] + logs(5, "dev-a")["logs"]})
    assert refused.status_code == 429 and "logs[1]" in refused.get_json()["message"]
    assert redis_client.xlen(settings.stream) == 21


def test_a_limit_of_zero_turns_limits_off(settings, db):
    app = create_app(dataclasses.replace(settings, rate_limit_per_device=0.0))
    response = app.test_client().post("/api/logs/batch", json=logs(3))
    app.extensions["collector"].db.close()
    assert response.status_code == 200 and "RateLimit" not in response.headers
