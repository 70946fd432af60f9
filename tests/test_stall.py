"""A stalled drain is visible (stats, metric, /health degraded), and scheduled ticks do not
depend on the clocks of beat and the workers agreeing."""

from __future__ import annotations

import dataclasses
import time

from collector.pipeline import group
from collector.pipeline.drain import drain_batch, read_batch
from collector.pipeline.ticks import claim_tick
from collector.web.app import create_app


def add_old_entry(redis_client, settings, seconds_ago: float) -> None:
    """An entry whose id says Redis added it `seconds_ago` (as one waiting that long would)."""
    now_s, now_us = redis_client.time()
    stamp = now_s * 1000 + now_us // 1000 - int(seconds_ago * 1000)
    fields = {b"d": b"dev-1", b"l": b"INFO", b"m": b"old", b"t": b"2026-01-01T00:00:00+00:00",
              b"r": b"2026-01-01T00:00:00+00:00"}
    redis_client.xadd(settings.stream, fields, id=f"{stamp}-0")


def test_nothing_waiting_has_no_age_and_health_is_green(client, redis_client, settings):
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    assert client.get("/api/stats").get_json()["pipeline"]["oldest_unstored_age_seconds"] is None
    body = client.get("/health").get_json()
    assert body["status"] == "healthy" and body["oldest_unstored_age_seconds"] is None


def test_an_old_undelivered_entry_makes_health_degraded_until_it_is_stored(settings, redis_client, db):
    app = create_app(dataclasses.replace(settings, drain_stall_seconds=60.0))
    client = app.test_client()
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    add_old_entry(redis_client, settings, 120)
    age = client.get("/api/stats").get_json()["pipeline"]["oldest_unstored_age_seconds"]
    assert age >= 120
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "degraded"
    assert "collector_oldest_unstored_age_seconds" in client.get("/metrics").get_data(as_text=True)
    for _ in range(5):
        drain_batch(redis_client, db, settings, "c1")
    assert client.get("/health").get_json()["status"] == "healthy"
    app.extensions["collector"].db.close()


def test_a_pending_entry_counts_as_unstored(redis_client, settings, db):
    group.ensure_group(redis_client, settings.stream, settings.consumer_group)
    add_old_entry(redis_client, settings, 300)
    read_batch(redis_client, settings, "dies-before-storing")  # delivered, never acknowledged
    figures = group.pipeline_stats(redis_client, settings.stream, settings.consumer_group)
    assert figures["oldest_unstored_age_seconds"] >= 300


def test_a_tick_runs_once_per_interval_by_redis_clock(redis_client, settings):
    assert claim_tick(redis_client, settings, "drain", 0.2)
    assert not claim_tick(redis_client, settings, "drain", 0.2)  # a second tick queued meanwhile: no-op
    assert claim_tick(redis_client, settings, "trim", 0.2)  # each schedule has its own
    time.sleep(0.25)  # a lower bound only: the token lives 90% of the interval
    assert claim_tick(redis_client, settings, "drain", 0.2)
