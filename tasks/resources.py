"""The Redis client and PostgreSQL pool of one worker process.

Opened by worker_process_init (or lazily on first use, for the solo pool and
tests), never at import time, so nothing is shared across a fork.
"""

from __future__ import annotations

import logging
import os

import redis
from psycopg_pool import ConnectionPool

from collector.core.clients import check_eviction_policy, make_cache_redis, make_db_pool, make_redis
from collector.core.settings import Settings
from collector.pipeline import shards
from collector.pipeline.consumers import ConsumerLease
from collector.pipeline.group import ensure_group, register_consumer
from collector.pipeline.layout import check_layout

log = logging.getLogger(__name__)
_state: dict = {}


def open_backends(settings: Settings) -> None:
    close_backends()
    # Workers can afford to wait longer on Redis than the API, which must answer at once.
    client = make_redis(settings, timeout=max(settings.redis_timeout, 5.0), retries=1)
    pool = make_db_pool(settings, 2, name=f"collector-worker-{settings.instance_name}", check=True,
                        statement_timeout=settings.drain_statement_timeout)
    check_eviction_policy(client)
    check_layout(client, settings)
    pool.open(wait=False)
    _state.update(pid=os.getpid(), redis=client, db=pool, cache=make_cache_redis(settings, client))
    for shard in shards.shards(settings):
        try:
            ensure_group(client, shard.stream, settings.consumer_group)
        except redis.RedisError as exc:
            log.warning("consumer group of %s not ensured yet (the drain retries): %s", shard.stream, exc)


def backends(settings: Settings) -> tuple[redis.Redis, ConnectionPool]:
    if _state.get("pid") != os.getpid():
        open_backends(settings)
    return _state["redis"], _state["db"]


def cache_client(settings: Settings) -> redis.Redis:
    """The query cache's Redis (the stream's own client unless CACHE_REDIS_URL is set)."""
    backends(settings)
    return _state["cache"]


def consumer(settings: Settings, index: int, preferred: str) -> str:
    """The consumer name this process drains stream shard `index` under now: `preferred`
    when its lease is free (pipeline.consumers), registered in the shard's group the first
    time it is used. Each shard has its own leases, beside its stream (pipeline.shards)."""
    client, _ = backends(settings)
    shard = shards.shard(settings, index)
    leases = _state.setdefault("leases", {})
    lease = leases.get(shard.stream)
    if lease is None:
        lease = leases[shard.stream] = ConsumerLease(client, shard, preferred)
    name = lease.current()
    if (shard.stream, name) not in _state.setdefault("registered", set()):
        register_consumer(client, shard.stream, shard.consumer_group, name)
        _state["registered"].add((shard.stream, name))
    return name


def close_backends() -> None:
    if _state.get("pid") == os.getpid():
        for lease in _state.get("leases", {}).values():
            lease.release()
        if (pool := _state.get("db")) is not None:
            pool.close()
    _state.clear()
