"""Query results cached in Redis, invalidated the moment new logs commit.

The seed cached results for five minutes with no invalidation. Here every
cached value is keyed by a version number per scope (one per device, one for
the stats); the drain bumps the versions of the devices in a batch right after
its commit, so the next read misses and goes to PostgreSQL. A reader that
raced a commit stores its result under the old version, which nobody reads
again. Cache trouble never fails a query: it falls back to the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

import orjson
import redis

log = logging.getLogger(__name__)
T = TypeVar("T")

STATS_SCOPE = "stats"


def _version_key(prefix: str, scope: str) -> str:
    return f"{prefix}cache:ver:{scope}"


def device_scope(device_id: str) -> str:
    return f"logs:{device_id}"


def cached(
    client: redis.Redis, prefix: str, scope: str, variant: str, ttl: int, compute: Callable[[], T]
) -> tuple[T, str]:
    """`compute()`'s JSON-able result, from the cache when fresh; returns (value, source)."""
    if ttl <= 0:
        return compute(), "database"
    try:
        version = int(client.get(_version_key(prefix, scope)) or 0)
        key = f"{prefix}cache:{scope}:{version}:{variant}"
        hit = client.get(key)
    except redis.RedisError as exc:
        log.warning("cache unavailable, reading the database: %s", exc)
        return compute(), "database"
    if hit is not None:
        return orjson.loads(hit), "cache"
    value = compute()
    try:
        client.set(key, orjson.dumps(value), ex=ttl)
    except redis.RedisError as exc:
        log.warning("could not cache %s: %s", key, exc)
    return value, "database"


def invalidate(pipe: redis.client.Pipeline, prefix: str, scopes: Iterable[str]) -> None:
    """Queue version bumps on `pipe` (the caller executes it with its XACK)."""
    for scope in scopes:
        pipe.incr(_version_key(prefix, scope))
