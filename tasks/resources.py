"""The Redis client and PostgreSQL pool of one worker process.

Opened by worker_process_init (or lazily on first use, for the solo pool and
tests), never at import time, so nothing is shared across a fork.
"""

from __future__ import annotations

import logging
import os

import redis
from psycopg_pool import ConnectionPool

from collector.core.clients import check_eviction_policy, make_db_pool, make_redis
from collector.core.settings import Settings
from collector.pipeline.group import ensure_group

log = logging.getLogger(__name__)
_state: dict = {}


def open_backends(settings: Settings) -> None:
    close_backends()
    # Workers can afford to wait longer on Redis than the API, which must answer at once.
    client = make_redis(settings, timeout=max(settings.redis_timeout, 5.0), retries=1)
    pool = make_db_pool(settings, 2, name=f"collector-worker-{settings.instance_name}", check=True,
                        statement_timeout=60.0)
    check_eviction_policy(client)
    pool.open(wait=False)
    _state.update(pid=os.getpid(), redis=client, db=pool)
    try:
        ensure_group(client, settings.stream, settings.consumer_group)
    except redis.RedisError as exc:
        log.warning("consumer group not ensured yet (the drain retries): %s", exc)


def backends(settings: Settings) -> tuple[redis.Redis, ConnectionPool]:
    if _state.get("pid") != os.getpid():
        open_backends(settings)
    return _state["redis"], _state["db"]


def close_backends() -> None:
    pool = _state.get("db")
    if pool is not None and _state.get("pid") == os.getpid():
        pool.close()
    _state.clear()
