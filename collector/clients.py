"""Building the Redis client and the PostgreSQL pool from settings.

Nothing here runs at import time: the Flask factory and the Celery worker's
process init call these after forking, so no socket is shared across processes.
"""

from __future__ import annotations

import redis
from psycopg_pool import ConnectionPool
from redis.backoff import NoBackoff
from redis.retry import Retry

from collector.settings import Settings


def make_redis(settings: Settings, timeout: float | None = None, retries: int = 0) -> redis.Redis:
    """A pooled client that fails fast, so callers can answer 503 at once.

    No retries by default: redis-py retries a command whose reply was lost, and an
    XADD that Redis executed but could not answer would then be stored twice. A
    stale pooled socket after a Redis restart therefore costs one 503, which the
    client retries after Retry-After. Only idempotent callers (the drain's reads,
    acks and trims) ask for retries.
    """
    timeout = settings.redis_timeout if timeout is None else timeout
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=30,
    )


def make_db_pool(settings: Settings, size: int, name: str, check: bool = False) -> ConnectionPool:
    """An unopened pool; the caller opens it (without waiting, so a down database
    does not stop a process from starting) and closes it at shutdown.

    `check` tests each connection as it is handed out: the drain uses it so that,
    while PostgreSQL is down, it fails before reading from the stream rather than
    after, and entries are not redelivered (and counted) once per retry.
    """
    return ConnectionPool(
        settings.database_url,
        min_size=1,
        max_size=size,
        timeout=settings.db_timeout,
        name=name,
        open=False,
        kwargs={"application_name": name, "autocommit": True,
                "connect_timeout": max(1, int(settings.db_timeout))},
        check=ConnectionPool.check_connection if check else None,
        reconnect_timeout=0,  # keep trying for ever: the database may come back
    )
