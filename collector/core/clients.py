"""Building the Redis client and the PostgreSQL pool from settings.

Nothing here runs at import time: the Flask factory and the Celery worker's
process init call these after forking, so no socket is shared across processes.
"""

from __future__ import annotations

import redis
from psycopg_pool import ConnectionPool
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector.core.settings import Settings, SettingsError

# Policies under which Redis deletes keys by itself when full: it would delete the
# stream (accepted logs not yet stored) and the Celery queues.
SAFE_POLICY = "noeviction"


def check_eviction_policy(client: redis.Redis) -> str | None:
    """Refuse a Redis that evicts keys (SettingsError); returns the policy, or None when
    it cannot be read (Redis down: checked by the next start; CONFIG disabled, as on some
    managed services: their documentation must say noeviction)."""
    try:
        policies = [reply.get("maxmemory-policy") for reply in each_server(client, "config_get", "maxmemory-policy")]
    except redis.RedisError:
        return None
    policy = next((p for p in policies if p and p != SAFE_POLICY), policies[0] if policies else None)
    if policy and policy != SAFE_POLICY:
        raise SettingsError(f"Redis maxmemory-policy is {policy!r}: it would evict accepted logs not yet stored; "
                            f"set it to {SAFE_POLICY!r} (redis-server --maxmemory-policy {SAFE_POLICY})")
    return policy


def each_server(client: redis.Redis, command: str, *args: str) -> list:
    """A keyless command's reply from every server that holds our keys: each master of a
    Redis Cluster (the cluster client would ask one node only), else the one server."""
    if isinstance(client, redis.RedisCluster):
        return [getattr(client, command)(*args, target_nodes=node) for node in client.get_primaries()]
    return [getattr(client, command)(*args)]


def memory_ratio(info: dict) -> float:
    """used_memory / maxmemory from an INFO memory reply; 0.0 when unbounded (maxmemory 0)."""
    maxmemory = info.get("maxmemory", 0)
    return info["used_memory"] / maxmemory if maxmemory else 0.0


def fullest_memory_ratio(client: redis.Redis) -> float:
    """memory_ratio of the fullest server (every master of a cluster)."""
    return max(memory_ratio(info) for info in each_server(client, "info", "memory"))


def make_redis(settings: Settings, timeout: float | None = None, retries: int = 0) -> redis.Redis:
    """A pooled client that fails fast, so callers can answer 503 at once.

    No retries by default: redis-py retries a command whose reply was lost, and an
    XADD that Redis executed but could not answer would then be stored twice. A
    stale pooled socket after a Redis restart therefore costs one 503, which the
    client retries after Retry-After. Only the workers ask for a retry: their
    reads, acks and trims are safe to repeat (a repeated counter increment can
    only over-count duplicates_skipped, which is informational).
    """
    timeout = settings.redis_timeout if timeout is None else timeout
    if settings.redis_cluster:
        # The same timeouts, per node (redis-py's cluster client passes no health checks on).
        return redis.RedisCluster.from_url(
            settings.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout,
            retry=Retry(NoBackoff(), retries))
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=30,
    )


def make_cache_redis(settings: Settings, stream_client: redis.Redis) -> redis.Redis:
    """The query cache's Redis: CACHE_REDIS_URL's, else the stream's own client."""
    if not settings.cache_redis_url:
        return stream_client
    return redis.Redis.from_url(settings.cache_redis_url, socket_connect_timeout=settings.redis_timeout,
                                socket_timeout=settings.redis_timeout, retry=Retry(NoBackoff(), 0),
                                health_check_interval=30)


def make_db_pool(settings: Settings, size: int, name: str, check: bool = False,
                 statement_timeout: float = 10.0, url: str | None = None) -> ConnectionPool:
    """An unopened pool; the caller opens it (without waiting, so a down database
    does not stop a process from starting) and closes it at shutdown.

    `check` tests each connection as it is handed out: the drain uses it so that,
    while PostgreSQL is down, it fails before reading from the stream rather than
    after, and entries are not redelivered (and counted) once per retry.
    `statement_timeout` and TCP keepalives bound how long a hung server or a
    dropped network can hold a request or a task. `url`: another database than
    DATABASE_URL (the API's read replica, DATABASE_READ_URL), built the same way.
    """
    return ConnectionPool(
        url or settings.database_url,
        min_size=1,
        max_size=size,
        timeout=settings.db_timeout,
        name=name,
        open=False,
        kwargs={
            "application_name": name, "autocommit": True,
            "connect_timeout": max(1, int(settings.db_timeout)),
            # TimeZone fixed: timestamptz values are read back in UTC whatever the
            # server's own TimeZone, so a server's setting never changes an answer.
            "options": f"-c statement_timeout={int(statement_timeout * 1000)} -c TimeZone=UTC",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
        },
        check=ConnectionPool.check_connection if check else None,
        # The database may be down for long: keep trying to reconnect (a day, then
        # the pool logs the failure and tries again on the next request).
        reconnect_timeout=24 * 3600,
    )
