"""Query results cached in Redis, invalidated the moment new logs commit, and never
able to fill the Redis that holds the stream.

The seed cached results for five minutes with no invalidation. Here every cached
value lives in a hash per scope (one per device, one for the stats) and version,
field = variant (e.g. the `limit`). The version is a random token kept in a key of
its own; the drain deletes the versions of the devices in a batch right after its
commit, and the next reader draws a new token, so it misses and goes to
PostgreSQL. Tokens are random, never counters, so a version key that expired or
was evicted can never bring back values cached under an older one; and a DEL is
what Redis still executes at maxmemory, when a write (INCR, SET) is refused. A
reader that raced a commit stores its result under the old token, which nobody
reads again.

Bounds, so that a client asking for every `limit`, or a dashboard polling busy
devices, cannot fill Redis: every key has a TTL (version keys included), one value
is at most CACHE_MAX_VALUE_BYTES, one scope and version holds at most
CACHE_MAX_VARIANTS values, and while the cache shares the stream's Redis it adds
nothing once Redis uses CACHE_MEMORY_LIMIT of its maxmemory. CACHE_REDIS_URL moves
it to a Redis of its own (evicting). Cache trouble never fails a query, nor the
drain: it falls back to the database, and invalidation is best-effort after the
XACK (the TTLs bound how stale a missed invalidation can leave a value).

With a read replica (DATABASE_READ_URL) one more rule, the freshness fence, keeps a
replica that has not yet replayed a commit from caching a stale value under the
version that commit's invalidation made fresh (where it would stay until the TTL).
The drain, after its commit, reads the primary's WAL position L (pg_current_wal_lsn)
and, in the pipeline that invalidates, before the DEL, raises each scope's fence to
L: one sorted set per deployment (`cache:fence`, member = scope, score = L, ZADD GT
so concurrent drains only ever raise it). A reader reads the version, then the
fence, in one round trip, so every commit whose DEL came before the version it
caches under has its L in the fence it read. On a miss it asks the replica how far
it has replayed (pg_last_wal_replay_lsn, before the query, on the same connection):
at or past the fence, the replica answers and the value is cached; behind it, the
primary answers (and the value is cached, being fresh). A scope with no fence was
never drained since the set exists; no set at all (workers not told about the
replica, or a flushed Redis) means nothing is known, and the primary answers. Reads
that are never cached (filters, cursors, the fleet) read the replica as it is.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import orjson
import redis
from redis.cluster import ClusterPipeline

from collector.core.clients import fullest_memory_ratio
from collector.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

STATS_SCOPE = "stats"
# Seconds between two readings of Redis's memory use by one process (INFO memory).
MEMORY_CHECK_INTERVAL = 1.0

# Stores a value unless the hash is full of other variants; the TTL is set when the
# hash is created, so a value never outlives the hash's first one by more than it.
_STORE = """
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
    return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
return 1
"""


def _version_key(prefix: str, scope: str) -> str:
    return f"{prefix}cache:ver:{scope}"


def _fence_key(prefix: str) -> str:
    return f"{prefix}cache:fence"


def _score(lsn: int) -> float:
    """`lsn` as a sorted set's score (a double), rounded up: exact below 2**53 bytes of
    WAL, and never below the position beyond it, so a fence errs only towards the primary."""
    score = float(lsn)
    return math.nextafter(score, math.inf) if score < lsn else score


def device_scope(device_id: str) -> str:
    return f"logs:{device_id}"


class QueryCache:
    """The cache one process reads and fills; `client` is the cache's Redis."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._store = client.register_script(_STORE)
        self._memory_full = False
        self._next_memory_check = 0.0
        self.fenced = settings.read_replica  # the freshness fence (module docstring): only with a replica

    def cached(self, scope: str, variant: str, ttl: int, compute: Callable[[int | None], T]) -> tuple[T, str]:
        """`compute(fence)`'s JSON-able result, from the cache when fresh; returns (value, source).
        `fence`: the WAL position a read replica must have replayed for the answer (0: any
        database will do; None: unknown, read the primary). Without a replica it is always 0."""
        if ttl <= 0:
            return compute(0), "database"
        prefix = self.settings.key_prefix
        fenced = self.fenced
        try:
            # The current token, or a new one if there is none (SET NX GET: one round trip),
            # and after it, in the same round trip, the scope's fence when there is a replica.
            token = secrets.token_hex(6)
            if fenced:
                pipe = self.client.pipeline(transaction=False)
                pipe.set(_version_key(prefix, scope), token, nx=True, get=True, ex=ttl)
                pipe.zscore(_fence_key(prefix), scope)
                pipe.exists(_fence_key(prefix))
                current, score, known = pipe.execute()
                fence = (int(score) if score is not None else 0) if known else None
            else:
                current = self.client.set(_version_key(prefix, scope), token, nx=True, get=True, ex=ttl)
            key = f"{prefix}cache:{scope}:{(current or token.encode()).decode()}"
            hit = self.client.hget(key, variant) if current is not None else None
        except redis.RedisError as exc:  # down, or at maxmemory (the SET is refused): no caching
            log.warning("cache unavailable, reading the database: %s", exc)
            return compute(0), "database"
        if hit is not None:
            return orjson.loads(hit), "cache"
        value = compute(fence if fenced else 0)
        self._put(key, variant, value, ttl)
        return value, "database"

    def _put(self, key: str, variant: str, value: object, ttl: int) -> None:
        s = self.settings
        try:
            data = orjson.dumps(value)
        except orjson.JSONEncodeError:  # what orjson cannot write (the app's JSON writer falls back): not cached
            return
        if len(data) > s.cache_max_value_bytes or self._redis_is_filling():
            return
        try:
            self._store(keys=[key], args=[variant, data, s.cache_max_variants, ttl])
        except redis.RedisError as exc:
            log.warning("could not cache %s: %s", key, exc)

    def _redis_is_filling(self) -> bool:
        """Whether the stream's Redis is past CACHE_MEMORY_LIMIT (read at most once a second)."""
        if not self.settings.cache_shares_stream_redis:
            return False  # a Redis of its own evicts old values by itself
        now = time.monotonic()
        if now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
            try:
                # Every master of a cluster: cache values land on all of them, stream shards too.
                ratio = fullest_memory_ratio(self.client)  # 0.0: no maxmemory, never full
                self._memory_full = ratio > 0.0 and ratio >= self.settings.cache_memory_limit
            except redis.RedisError:
                return True
        return self._memory_full


def queue_invalidate(pipe: redis.client.Pipeline, prefix: str, scopes: Iterable[str],
                     lsn: int | None = None) -> int:
    """invalidate, as commands of the caller's pipeline (which decides what errors mean);
    returns how many it queued."""
    scopes = list(scopes)
    if not scopes:
        return 0
    if lsn is not None:  # the fence first, then the DEL (module docstring)
        pipe.zadd(_fence_key(prefix), dict.fromkeys(scopes, _score(lsn)), gt=True)
    keys = [_version_key(prefix, scope) for scope in scopes]
    # On a Redis Cluster the versions live in many slots, and one DEL may name one slot's keys only.
    deletes = [[key] for key in keys] if isinstance(pipe, ClusterPipeline) else [keys]
    for group in deletes:
        pipe.delete(*group)
    return len(deletes) + (lsn is not None)


def invalidate(client: redis.Redis, prefix: str, scopes: Iterable[str], lsn: int | None = None) -> None:
    """Forget the versions of these scopes, after raising their fences to `lsn` (the
    primary's WAL position after the commit; None: no read replica) (best-effort:
    trouble is logged, never raised, so it can never hold up an acknowledgement)."""
    scopes = list(scopes)
    if not scopes:
        return
    try:
        pipe = client.pipeline(transaction=False)
        queue_invalidate(pipe, prefix, scopes, lsn)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("cache not invalidated (values may be stale until their TTL): %s", exc)
