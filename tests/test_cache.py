"""The query cache can never stop ingest or the drain: every key expires, values and
variants are capped, it stops adding once the shared Redis fills, it can live in a
Redis of its own, and the drain acknowledges even when Redis refuses every write."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from collector.pipeline import cache, group
from collector.pipeline.drain import drain_batch
from tests.stack import ThrowawayRedis
from tests.test_delivery import drain_all
from tests.test_drain import enqueue

DEVICES = 10
LOGS_PER_DEVICE = 100
MAXMEMORY = 12 * 1024 * 1024


@pytest.fixture
def small_redis(tmp_path):
    """A Redis of 12 MB, noeviction, like a production one that is nearly full."""
    server = ThrowawayRedis(tmp_path, "--maxmemory", str(MAXMEMORY), "--appendfsync", "no")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def small_settings(settings, small_redis):
    return dataclasses.replace(settings, redis_url=small_redis.url)


def store_fleet(client, redis_client, settings, db) -> None:
    """100 logs of ~500 bytes for each of 10 devices, ingested and drained."""
    for d in range(DEVICES):
        logs = [{"device_id": f"dev-{d}", "log_level": "INFO", "message": f"{i:04d}" + "x" * 500}
                for i in range(LOGS_PER_DEVICE)]
        assert client.post("/api/logs/batch", json={"logs": logs}).status_code == 200
    drain_all(redis_client, db, settings)


def cache_keys(client: redis.Redis, settings) -> list[bytes]:
    return list(client.scan_iter(match=f"{settings.key_prefix}cache:*", count=1000))


def test_a_client_asking_for_every_limit_cannot_fill_redis(small_settings, db, make_app):
    """Every device with every limit would cache ~30 MB: more than this Redis holds. Before
    the caps, the cache filled it and ingest answered 503 from then on."""
    app = make_app(small_settings)
    client = app.test_client()
    stream_redis = redis.Redis.from_url(small_settings.redis_url)
    store_fleet(client, stream_redis, small_settings, db)

    for d in range(DEVICES):
        for limit in range(1, LOGS_PER_DEVICE + 1):
            assert client.get(f"/api/logs/dev-{d}?limit={limit}").status_code == 200

    used = stream_redis.info("memory")["used_memory"]
    assert used < small_settings.cache_memory_limit * MAXMEMORY * 1.2
    for key in cache_keys(stream_redis, small_settings):
        assert stream_redis.ttl(key) > 0, key  # version keys included
        if b":ver:" not in key:
            assert stream_redis.hlen(key) <= small_settings.cache_max_variants
    # Ingest and the drain go on.
    log = {"device_id": "dev-0", "log_level": "ERROR", "message": "after the flood"}
    assert client.post("/api/log", json=log).status_code == 200
    drain_all(stream_redis, db, small_settings)
    newest = client.get("/api/logs/dev-0?limit=1").get_json()
    assert newest["data"][0]["message"] == "after the flood"


def test_values_over_the_size_cap_are_not_cached(settings, redis_client, db, make_app):
    small = dataclasses.replace(settings, cache_max_value_bytes=2048)
    client = make_app(small).test_client()
    store_fleet(client, redis_client, small, db)
    assert client.get("/api/logs/dev-1?limit=100").get_json()["source"] == "database"
    assert client.get("/api/logs/dev-1?limit=100").get_json()["source"] == "database"
    assert client.get("/api/logs/dev-1?limit=2").get_json()["source"] == "database"
    assert client.get("/api/logs/dev-1?limit=2").get_json()["source"] == "cache"


def test_a_lost_version_key_never_brings_back_older_values(settings, redis_client, db, make_app):
    client = make_app(settings).test_client()
    store_fleet(client, redis_client, settings, db)
    assert client.get("/api/logs/dev-1?limit=5").get_json()["source"] == "database"
    assert client.get("/api/logs/dev-1?limit=5").get_json()["source"] == "cache"
    redis_client.delete(f"{settings.key_prefix}cache:ver:{cache.device_scope('dev-1')}")  # evicted, expired
    assert client.get("/api/logs/dev-1?limit=5").get_json()["source"] == "database"


def test_the_drain_acknowledges_when_redis_refuses_every_write(small_settings, db):
    stream_redis = redis.Redis.from_url(small_settings.redis_url)
    group.ensure_group(stream_redis, small_settings.stream, small_settings.consumer_group)
    enqueue(stream_redis, small_settings, 50)
    chunk = b"x" * 65536
    with pytest.raises(redis.exceptions.OutOfMemoryError):  # fill it up to maxmemory
        for n in range(MAXMEMORY // len(chunk) + 10):
            stream_redis.set(f"junk:{n}", chunk)
    result = drain_batch(stream_redis, db, small_settings, "c1")
    assert (result.read, result.inserted) == (50, 50)
    assert stream_redis.xpending(small_settings.stream, small_settings.consumer_group)["pending"] == 0


def test_a_separate_cache_redis_holds_every_cache_key(settings, redis_client, small_redis, db, make_app):
    separate = dataclasses.replace(settings, cache_redis_url=small_redis.url)
    assert not separate.cache_shares_stream_redis
    assert dataclasses.replace(settings, cache_redis_url=settings.redis_url.replace("/0", "/3")) \
        .cache_shares_stream_redis  # another database of one server shares its memory
    client = make_app(separate).test_client()
    cache_redis = redis.Redis.from_url(small_redis.url)
    store_fleet(client, redis_client, separate, db)
    assert client.get("/api/logs/dev-1?limit=5").get_json()["source"] == "database"
    assert client.get("/api/logs/dev-1?limit=5").get_json()["source"] == "cache"
    assert cache_keys(cache_redis, separate) and not cache_keys(redis_client, separate)
    # The drain invalidates on the cache's Redis: the new log is in the very next query.
    log = {"device_id": "dev-1", "log_level": "ERROR", "message": "fresh"}
    assert client.post("/api/log", json=log).status_code == 200
    drain_batch(redis_client, db, separate, "c1", cache_client=cache_redis)
    newest = client.get("/api/logs/dev-1?limit=5").get_json()
    assert newest["source"] == "database" and newest["data"][0]["message"] == "fresh"
