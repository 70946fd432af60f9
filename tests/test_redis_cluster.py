"""Redis Cluster end to end (issue 16, items 1 to 3): a real three-master cluster of
redis-server processes holds the stream, split in six shards (two per master); the
Celery broker is the machine's plain Redis. One API, four workers under four node
names and beat take a skewed load (one device sends half the logs), and one worker is
killed with SIGKILL while it holds entries. Every accepted log is stored exactly once,
every shard was drained, and the API's queries and stats read through the cluster."""

from __future__ import annotations

import dataclasses
import signal
import sys

import pytest
import redis
import requests

from collector.core.settings import Settings, load_settings
from collector.pipeline import keyring, shards
from collector.pipeline.drain import drain_for
from collector.store import keys
from tests.redis_cluster import RedisClusterServers
from tests.test_faults import assert_exactly_once
from tests.test_scale_workers import (
    freeze_a_worker_holding_entries,
    make_fleet,
    reclaimed_from,
    start_workers,
    stored_by_node,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
__all__ = ["make_fleet"]  # the fixture, used here by name

SHARDS = 6
HALF = 4_000


@pytest.fixture(scope="module")
def cluster():
    with RedisClusterServers() as servers:
        yield servers


def held_by(client: redis.RedisCluster, settings: Settings, consumer: str) -> int:
    return sum(len(client.xpending_range(shard.stream, settings.consumer_group, "-", "+", 100_000,
                                         consumername=consumer)) for shard in shards.shards(settings))


def test_ingest_drain_and_query_through_a_three_master_cluster_with_a_worker_killed_under_load(
        cluster, make_fleet, fresh_db, start_load, base_settings):
    fleet = make_fleet(REDIS_URL=cluster.url, REDIS_CLUSTER="true", CELERY_BROKER_URL=base_settings.redis_url,
                       STREAM_SHARDS=str(SHARDS))
    settings = load_settings(fleet.env)
    client = cluster.client()
    try:
        # Two shards on each master: the shards' hash tags spread them over the slot ranges.
        masters = [cluster.node_of(shard.stream) for shard in shards.shards(settings)]
        assert sorted(masters) == sorted(cluster.ports * 2), masters

        api = fleet.start_api(0)
        fleet.start_beat_on("host1")
        start_workers(fleet, settings)
        # 16 devices share half the logs; one device sends the other half.
        fleet_load = start_load(api, target=HALF, threads=16, tag="cluster")
        hot_load = start_load(api, target=HALF, threads=1, batch=100, tag="hot")
        node, consumer = freeze_a_worker_holding_entries(fleet, client, settings)
        held = held_by(client, settings, consumer)
        fleet.kill(node, signal.SIGKILL)  # the worker and its pool child, mid-batch
        after = start_load(api, target=2_000, threads=16, tag="after")  # the three others drain it
        for load in (fleet_load, hot_load, after):
            load.wait()
        assert_exactly_once([fleet_load, hot_load, after], fresh_db, api)
        assert reclaimed_from(fleet, consumer) == held > 0

        # Every shard was drained, the hot device's among them, and nothing waits anywhere.
        for shard in shards.shards(settings):
            [group] = client.xinfo_groups(shard.stream)
            assert group["entries-read"] > 0 and group["lag"] == 0 and group["pending"] == 0, shard.stream
        stats = requests.get(f"{api}/api/stats", timeout=5).json()["pipeline"]
        assert len(stats["shards"]) == SHARDS
        assert stats["accepted"] == stats["persisted"] == sum(
            len(load.accepted) for load in (fleet_load, hot_load, after))
        hot = requests.get(f"{api}/api/logs/hot-00", params={"limit": 5}, timeout=5).json()
        assert len(hot["data"]) == 5 and all(log["device_id"] == "hot-00" for log in hot["data"]), hot
        by_node = stored_by_node(fresh_db)
        assert len(by_node) >= 3, f"the live workers did not share the drain: {dict(by_node)}"
        sys.stderr.write(f"killed {node} holding {held} entries; stored by node {dict(by_node)}; "
                         f"shards on masters {masters}\n")
    finally:
        client.close()


def test_keys_idempotency_limits_and_the_cache_work_on_the_cluster(cluster, settings, db, make_app):
    """In process, against the same cluster: a device key checked by each shard's copy of
    the registry, a batch over many shards repeated with its Idempotency-Key, the drain of
    every shard, a cached query invalidated by the next drain, and a revocation."""
    on_cluster = dataclasses.replace(settings, redis_url=cluster.url, redis_cluster=True,
                                     broker_url=settings.redis_url, stream_shards=SHARDS, auth_enabled=True)
    client = cluster.client()
    try:
        key_id, secret, digest = keyring.new_secret()
        row = keys.add(db, key_id, "cluster test", "device", None, "dev-", digest)
        keyring.publish(client, on_cluster, row)
        api = make_app(on_cluster).test_client()
        headers = {"Authorization": f"Bearer {secret}", "Idempotency-Key": "batch-1"}
        body = {"logs": [{"device_id": f"dev-{n % 30}", "log_level": "INFO", "message": f"m{n}"} for n in range(60)]}
        assert len(shards.split(on_cluster, [log["device_id"] for log in body["logs"]])) == SHARDS
        first = api.post("/api/logs/batch", json=body, headers=headers)
        assert first.status_code == 200, first.json
        again = api.post("/api/logs/batch", json=body, headers=headers)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json

        def drain() -> int:
            return sum(r.inserted for shard in shards.shards(on_cluster) for r in drain_for(client, db, shard, "c1"))

        assert drain() == 60
        read = {"Authorization": f"Bearer {secret}"}
        assert api.get("/api/logs/dev-1", headers=read).json["source"] == "database"
        assert api.get("/api/logs/dev-1", headers=read).json["source"] == "cache"
        assert api.post("/api/log", json={"device_id": "dev-1", "log_level": "INFO", "message": "late"},
                        headers=read).status_code == 200
        assert drain() == 1
        page = api.get("/api/logs/dev-1", headers=read).json
        assert page["source"] == "database" and page["data"][0]["message"] == "late"  # invalidated
        stats = api.get("/api/stats", headers=read)
        assert stats.status_code == 403  # a device key reads its own devices only

        assert keys.revoke(db, key_id)
        keyring.publish(client, on_cluster, next(r for r in keys.every(db) if r.id == key_id))
        assert api.post("/api/log", json={"device_id": "dev-1", "log_level": "INFO", "message": "x"},
                        headers=read).status_code == 401
    finally:
        client.close()
