"""Stream shards: the accepted logs split over STREAM_SHARDS streams by device.

A device's logs always go to the same shard (a hash of its device_id), so its order
in the stream, its rate limit and its sequence claims stay on one shard. Each
shard is a whole stream of its own: its consumer group, epoch, leases, in-flight
markers, counters, idempotency records and rate-limit buckets. All of a shard's
keys carry its hash tag (`logs:stream:{s3}`, `{s3}:counters`, ...), so on a Redis
Cluster they live in one slot and the ingest transaction, the admission script and
the drain's scripts run as before; Settings.local_key builds them.

A shard is handed around as a Settings whose STREAM_KEY is the shard's stream:
every function that takes (client, settings) works on one shard unchanged.

With STREAM_SHARDS=1 on a plain Redis there is one shard, the settings themselves:
the stream is exactly STREAM_KEY and no key changes. On a cluster even one shard
is tagged, or its bookkeeping keys would fall in other slots than the stream.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace
from functools import cache

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from collector.core.clients import fullest_memory_ratio
from collector.core.settings import Settings
from collector.pipeline import group


def tagged(settings: Settings) -> bool:
    return settings.stream_shards > 1 or settings.redis_cluster


@cache
def tags(count: int) -> tuple[str, ...]:
    """One hash tag per shard: tag i is the first "s<j>" whose slot falls in the i-th of
    `count` equal slot ranges, so the shards spread evenly over a cluster whose masters
    hold equal ranges (as redis-cli --cluster create assigns them), not by luck."""
    found = []
    for i in range(count):
        low, high = i * REDIS_CLUSTER_HASH_SLOTS // count, (i + 1) * REDIS_CLUSTER_HASH_SLOTS // count
        j = 0
        while not low <= key_slot(f"s{j}".encode()) < high:
            j += 1
        found.append(f"s{j}")
    return tuple(found)


@cache
def shards(settings: Settings) -> tuple[Settings, ...]:
    """Every shard, in order: each a Settings whose stream is that shard's."""
    if not tagged(settings):
        return (settings,)
    return tuple(replace(settings, stream_key=f"{settings.stream_key}:{{{tag}}}")
                 for tag in tags(settings.stream_shards))


def shard(settings: Settings, index: int) -> Settings:
    return shards(settings)[index]


def index_of(settings: Settings, device_id: str) -> int:
    """The shard of a device: CRC-32 of its id, so every process and version agrees."""
    if settings.stream_shards == 1:
        return 0
    return zlib.crc32(device_id.encode()) % settings.stream_shards


def split(settings: Settings, device_ids: Sequence[str]) -> dict[int, list[int]]:
    """Positions of a request's logs per shard, each list in request order."""
    out: dict[int, list[int]] = {}
    for position, device_id in enumerate(device_ids):
        out.setdefault(index_of(settings, device_id), []).append(position)
    return out


def pipeline_stats(client: redis.Redis, settings: Settings) -> dict:
    """group.pipeline_stats over every shard: lengths, pending and lags summed, the oldest
    unstored age the largest; sharded, each shard's own figures under "shards" too."""
    per = group.pipeline_stats_of(client, [s.stream for s in shards(settings)], settings.consumer_group)
    if len(per) == 1:
        return per[0]
    ages = [f["oldest_unstored_age_seconds"] for f in per if f["oldest_unstored_age_seconds"] is not None]
    lags = [f["lag"] for f in per]
    return {"stream_length": sum(f["stream_length"] for f in per), "pending": sum(f["pending"] for f in per),
            "lag": None if None in lags else sum(lags), "oldest_unstored_age_seconds": max(ages, default=None),
            "shards": [{"stream": s.stream, **f} for s, f in zip(shards(settings), per, strict=True)]}


def backlogs(client: redis.Redis, settings: Settings) -> list[int]:
    """Each shard's entries not yet stored, in shard order: one round trip (per node on a cluster)."""
    return group.backlogs(client, [s.stream for s in shards(settings)], settings.consumer_group)


def backlog_and_memory(client: redis.Redis, settings: Settings) -> tuple[int, float]:
    """(entries not yet stored in every shard, the fullest Redis server's used_memory /
    maxmemory), for back-pressure: one round trip unsharded, two otherwise (the memory of
    each master, on a cluster)."""
    if not tagged(settings):
        return group.backlog_and_memory(client, settings.stream, settings.consumer_group)
    return sum(backlogs(client, settings)), fullest_memory_ratio(client)
