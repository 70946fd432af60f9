"""Every setting of the collector, read once from the environment.

Each setting has a type, a default and one line of documentation; `load_settings()`
checks them all and fails with a message naming the variable, so a typo stops
start-up instead of surfacing as a strange error under load. The README's
settings table is generated from the same list (`python -m collector.core.settings`).
"""

from __future__ import annotations

import math
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _float(low: float, high: float = math.inf) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not value >= low:  # also rejects NaN
            raise ValueError(f"must be >= {low}")
        if value > high:
            raise ValueError(f"must be <= {high}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError(f"must start with one of {', '.join(s + '://' for s in schemes)}")
        return raw

    return parse


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw


def _stream_key(raw: str) -> str:
    if "{" in _text(raw) or "}" in raw:
        raise ValueError("must not contain { or }: the stream shards' hash tags are added to it")
    return raw


def _optional_url(*schemes: str) -> Callable[[str], str]:
    check = _url(*schemes)
    return lambda raw: raw and check(raw)


def _redis_server(url: str) -> tuple:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return ("unix", parts.path)
    return (parts.hostname, parts.port or 6379)


def _any_text(raw: str) -> str:
    return raw


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _days(raw: str) -> int:
    """A whole number of days: "1", "7d", "1 day", "7 days"."""
    number, _, unit = raw.lower().partition(" ") if " " in raw else (raw.lower().rstrip("d"), "", "d")
    if unit.strip() not in ("d", "day", "days") or not number.isdigit() or not 1 <= int(number) <= 366:
        raise ValueError('must be a whole number of days from 1 to 366, e.g. "1 day" or "7d"')
    return int(number)


def _names(raw: str) -> str:
    """A comma-separated list of names, none empty; kept as text (normalised) so the
    settings stay hashable and the README's table shows it as it is written."""
    names = [name.strip() for name in raw.split(",")]
    if not all(names):
        raise ValueError('must be names separated by commas, e.g. "device.id,host.name"')
    return ",".join(names)


def _setting(env: str, default: Any, parse: Callable[[str], Any], doc: str, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"env": env, "parse": parse, "doc": doc})


@dataclass(frozen=True)
class Settings:
    redis_url: str = _setting(
        "REDIS_URL", "redis://127.0.0.1:6379/0", _url("redis", "rediss", "unix"),
        "Redis holding the log stream and the query cache.")
    database_url: str = _setting(
        "DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/logs", _url("postgresql", "postgres"),
        "PostgreSQL database holding the `logs` table.")
    database_read_url: str = _setting(
        "DATABASE_READ_URL", "", _optional_url("postgresql", "postgres"),
        "A streaming replica of DATABASE_URL that the API's log queries, /api/stats and /api/devices read "
        "(writes, the live tail and the workers stay on the primary); empty: the primary. Set it on the "
        "workers too: they then record where each commit ends, so a lagging replica never fills the cache.")
    redis_cluster: bool = _setting(
        "REDIS_CLUSTER", False, _bool,
        "REDIS_URL names a node of a Redis Cluster (redis-py's cluster client); then CELERY_BROKER_URL "
        "must name a plain Redis, as Celery's broker does not speak the cluster protocol.")
    stream_shards: int = _setting(
        "STREAM_SHARDS", 1, _int(1, 256),
        "Streams the accepted logs are split over by a hash of device_id, each with its own consumer group "
        "and its keys in one Redis Cluster slot (docs/scaling.md); 1: the one stream STREAM_KEY.")
    broker_url: str = _setting(
        "CELERY_BROKER_URL", "", _any_text,
        "Celery broker; empty means the same Redis as REDIS_URL (which must then not be a cluster).")
    key_prefix: str = _setting(
        "KEY_PREFIX", "", _any_text,
        "Prefix for every Redis key the collector owns (stream, cache, Celery queues); "
        "lets several stacks or test runs share one Redis.")
    stream_key: str = _setting(
        "STREAM_KEY", "logs:stream", _stream_key, "Redis Stream that buffers accepted logs (no braces: "
        "STREAM_SHARDS adds the hash tags).")
    consumer_group: str = _setting(
        "CONSUMER_GROUP", "log_workers", _text, "Consumer group the drain tasks read with.")
    batch_size: int = _setting(
        "BATCH_SIZE", 100, _int(1, 10_000), "Stream entries one drain run reads and inserts (one transaction).")
    drain_interval: float = _setting(
        "DRAIN_INTERVAL", 1.0, _float(0.05),
        "Seconds between beat's drain ticks; a tick sends a drain task when entries are waiting, and a "
        "task still finding full batches at DRAIN_TASK_SECONDS sends the next one itself.")
    drain_task_seconds: float = _setting(
        "DRAIN_TASK_SECONDS", 1.0, _float(0.0, 60.0),
        "How long one drain task goes on with consecutive runs (each at most BATCH_SIZE entries, its own "
        "transaction and XACK) while a backlog remains; then it sends a new task. 0: one run per task.")
    consumer_lease_seconds: float = _setting(
        "CONSUMER_LEASE_SECONDS", 10.0, _float(1.0),
        "Lifetime of a drain process's lease on its consumer name (renewed every third of it while "
        "the process lives); a dead process's entries are reclaimed once its lease lapses.")
    max_deliveries: int = _setting(
        "MAX_DELIVERIES", 10, _int(1),
        "Deliveries that ended with their worker dying (killed, out of memory, hard time limit) after "
        "which an entry that was never stored goes to dead_letters; failed runs a worker survives never count.")
    drain_statement_timeout: float = _setting(
        "DRAIN_STATEMENT_TIMEOUT", 60.0, _float(0.1),
        "Seconds one drain statement may run (e.g. waiting on a lock) before it fails and the batch is retried.")
    drain_stall_seconds: float = _setting(
        "DRAIN_STALL_SECONDS", 60.0, _float(1.0),
        "/health says degraded (still 200) once the oldest log not yet stored is older than this.")
    trim_interval: float = _setting(
        "TRIM_INTERVAL", 10.0, _float(0.1),
        "Seconds between trims of acknowledged entries from the stream (never unacknowledged ones).")
    backlog_high_water: int = _setting(
        "BACKLOG_HIGH_WATER", 1_000_000, _int(1),
        "Entries not yet stored (lag + pending) at which ingest starts answering 503.")
    backlog_low_water: int = _setting(
        "BACKLOG_LOW_WATER", 800_000, _int(0),
        "Backlog below which ingest accepts again after a 503 period.")
    redis_memory_high_water: float = _setting(
        "REDIS_MEMORY_HIGH_WATER", 0.85, _float(0.01),
        "Fraction of Redis maxmemory at which ingest answers 503 (ignored when maxmemory is 0).")
    backpressure_check_interval: float = _setting(
        "BACKPRESSURE_CHECK_INTERVAL", 0.5, _float(0.01),
        "Seconds an API worker reuses its last backlog reading before asking Redis again.")
    instance_name: str = _setting(
        "INSTANCE_NAME", socket.gethostname(), _text,
        "Name this process reports in /health and uses for its stream consumer.")
    logs_cache_ttl: int = _setting(
        "LOGS_CACHE_TTL", 300, _int(0),
        "Seconds a per-device query result stays cached (0 disables); commits invalidate it at once.")
    cache_redis_url: str = _setting(
        "CACHE_REDIS_URL", "", _optional_url("redis", "rediss", "unix"),
        "Redis for the query cache; empty: the stream's Redis (REDIS_URL). Point it at a separate server "
        "with an evicting maxmemory-policy (a database number of the same server shares its memory).")
    cache_max_value_bytes: int = _setting(
        "CACHE_MAX_VALUE_BYTES", 262_144, _int(0),
        "Largest query result cached, as JSON bytes; bigger ones are always read from PostgreSQL.")
    cache_max_variants: int = _setting(
        "CACHE_MAX_VARIANTS", 8, _int(1),
        "Cached variants (e.g. `limit` values) per device and version; further ones are not cached.")
    cache_memory_limit: float = _setting(
        "CACHE_MEMORY_LIMIT", 0.5, _float(0.0),
        "While the cache shares the stream's Redis: no new cache entries once Redis uses this fraction of "
        "its maxmemory, so the cache never pushes ingest to REDIS_MEMORY_HIGH_WATER.")
    stats_cache_ttl: int = _setting(
        "STATS_CACHE_TTL", 60, _int(0),
        "Seconds the table part of /api/stats stays cached (0 disables); commits invalidate it at once.")
    auth_enabled: bool = _setting(
        "AUTH_ENABLED", True, _bool,
        "Require keys (Authorization: Bearer or X-API-Key); false leaves every endpoint open to whoever reaches it.")
    metrics_token: str = _setting(
        "METRICS_TOKEN", "", _any_text,
        "Bearer token that may scrape /metrics (besides admin keys); empty: admin keys only.", secret=True)
    flower_url: str = _setting(
        "FLOWER_URL", "http://127.0.0.1:5555", _url("http", "https"),
        "Flower's address as a browser reaches it, linked from the landing page `/` (Flower is a process "
        "of its own; `make run` and docker-compose serve it on 127.0.0.1:5555).")
    keys_sync_interval: float = _setting(
        "KEYS_SYNC_INTERVAL", 10.0, _float(0.5),
        "Seconds between beat's copies of the keys table to Redis (and of last-use times back).")
    idempotency_ttl: int = _setting(
        "IDEMPOTENCY_TTL", 120, _int(1),
        "Seconds the answer to a request with an Idempotency-Key is remembered (a repeat is answered from it).")
    rate_limit_per_device: float = _setting(
        "RATE_LIMIT_PER_DEVICE", 1000.0, _float(0.0),
        "Logs per second one device may send, on average (0: no limit); a key may set its own.")
    rate_limit_burst: int = _setting(
        "RATE_LIMIT_BURST", 10_000, _int(1),
        "Logs one device may send at once above its rate (the token bucket's size); a key may set its own.")
    max_body_bytes: int = _setting(
        "MAX_BODY_BYTES", 1_048_576, _int(1024),
        "Largest request body accepted (413 above it); keep nginx's client_max_body_size equal.")
    max_batch_logs: int = _setting(
        "MAX_BATCH_LOGS", 1000, _int(1, 100_000), "Most logs one POST /api/logs/batch may carry.")
    max_message_chars: int = _setting(
        "MAX_MESSAGE_CHARS", 10_000, _int(1), "Longest `message` accepted, in characters.")
    max_log_data_bytes: int = _setting(
        "MAX_LOG_DATA_BYTES", 16_384, _int(2), "Largest `log_data` accepted, as compact JSON bytes.")
    otlp_device_id_attributes: str = _setting(
        "OTLP_DEVICE_ID_ATTRIBUTES", "device.id,service.instance.id,host.name", _names,
        "Resource attributes that name an OTLP log's device (POST /v1/logs), in order: the first present is used.")
    max_query_limit: int = _setting(
        "MAX_QUERY_LIMIT", 1000, _int(1), "Largest `limit` of the log queries, the device list and dead letters.")
    query_timeout_ms: int = _setting(
        "QUERY_TIMEOUT_MS", 5000, _int(100),
        "Longest an API query may run in PostgreSQL (the statement_timeout of the API's connections); a log "
        "query past it is answered 422 query_too_broad, asking for a narrower one.")
    tail_max_per_key: int = _setting(
        "TAIL_MAX_PER_KEY", 10, _int(1), "Live tails one key may hold open at once (across every API process).")
    tail_heartbeat_seconds: float = _setting(
        "TAIL_HEARTBEAT_SECONDS", 15.0, _float(0.1),
        "Seconds between heartbeat comments on an idle live tail (keeps proxies from closing it).")
    tail_poll_interval: float = _setting(
        "TAIL_POLL_INTERVAL", 0.2, _float(0.01),
        "Seconds between two looks, by each API process, for newly stored logs to send to its open tails.")
    redis_timeout: float = _setting(
        "REDIS_TIMEOUT", 0.5, _float(0.01),
        "Seconds to wait on Redis (connect and each reply) before answering 503.")
    db_pool_size: int = _setting(
        "DB_POOL_SIZE", 4, _int(1), "PostgreSQL connections per API worker process (queries, stats, health).")
    db_timeout: float = _setting(
        "DB_TIMEOUT", 2.0, _float(0.1), "Seconds to wait for a PostgreSQL connection before failing.")
    retry_after: int = _setting(
        "RETRY_AFTER", 5, _int(1), "Seconds clients are told to wait (Retry-After) when we answer 503.")
    partition_interval: int = _setting(
        "PARTITION_INTERVAL", 1, _days,
        "Days of receive time per partition of `logs` (\"1 day\", \"7d\"); partitions start at UTC "
        "midnight, aligned to the Unix epoch. A change applies to partitions created after it.")
    partitions_ahead: int = _setting(
        "PARTITIONS_AHEAD", 3, _int(1, 100),
        "Partitions kept created ahead of the current one (by make migrate and the maintenance task).")
    retention_days: int = _setting(
        "RETENTION_DAYS", 30, _int(0),
        "Logs are kept at least this many days after they were received, then their partition is "
        "dropped whole (0: keep forever).")
    dead_letter_retention_days: int = _setting(
        "DEAD_LETTER_RETENTION_DAYS", 0, _int(0),
        "Days after their last failure that dead letters are deleted (counted in dead_letters_expired); "
        "0: keep until replayed or deleted by an admin.")
    storage_maintenance_interval: float = _setting(
        "STORAGE_MAINTENANCE_INTERVAL", 3600.0, _float(1.0),
        "Seconds between storage maintenance runs (partitions ahead, the default partition, retention).")
    worker_metrics_port: int = _setting(
        "WORKER_METRICS_PORT", 9808, _int(0, 65535),
        "Port of the Celery worker's Prometheus /metrics on 127.0.0.1 (0: off).")
    worker_metrics_addr: str = _setting(
        "WORKER_METRICS_ADDR", "127.0.0.1", _text,
        "Address the Celery worker's /metrics listens on (0.0.0.0 in a container, so Prometheus can reach it).")
    beat_schedule_file: str = _setting(
        "BEAT_SCHEDULE_FILE", "/tmp/collector-celerybeat-schedule", _text,
        "Where Celery beat keeps its schedule state.")
    log_level: str = _setting(
        "LOG_LEVEL", "INFO", _text, "Level of the service's own logging.")

    @property
    def read_replica(self) -> bool:
        """True when DATABASE_READ_URL names a database other than DATABASE_URL."""
        return bool(self.database_read_url) and self.database_read_url != self.database_url

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def cache_shares_stream_redis(self) -> bool:
        """True unless CACHE_REDIS_URL names another server: another database number of
        the same server shares its memory and eviction policy, so it is no separation."""
        if not self.cache_redis_url:
            return True
        return _redis_server(self.cache_redis_url) == _redis_server(self.redis_url)

    @property
    def stream(self) -> str:
        return self.key_prefix + self.stream_key

    def key(self, name: str) -> str:
        """A Redis key in this deployment's namespace."""
        return self.key_prefix + name

    def local_key(self, name: str) -> str:
        """A key used in one transaction or script with the stream: a shard's stream ends in
        its hash tag (pipeline.shards), and such a key carries the same tag, so on a Redis
        Cluster both live in one slot. Unsharded: key(name), as before shards existed."""
        return self._local_prefix + name

    @cached_property
    def _local_prefix(self) -> str:
        # STREAM_KEY has no braces (_stream_key): any tag is the one pipeline.shards added.
        _, brace, tag = self.stream_key.rpartition("{")
        return self.key_prefix + (f"{{{tag[:-1]}}}:" if brace else "")

    @property
    def celery_queue(self) -> str:
        return self.key_prefix + "drain"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from `environ` (default: os.environ), then `overrides` (tests)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        env = f.metadata["env"]
        raw = environ.get(env)
        if raw is None:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw.strip())
        except ValueError as exc:
            raise SettingsError(f"{env}={raw!r} is not valid: {exc}") from None
    values.update(overrides)
    settings = Settings(**values)
    if settings.backlog_low_water >= settings.backlog_high_water:
        raise SettingsError("BACKLOG_LOW_WATER must be below BACKLOG_HIGH_WATER")
    if settings.redis_cluster and not settings.broker_url:
        raise SettingsError("REDIS_CLUSTER=true needs CELERY_BROKER_URL: Celery's broker must be a plain Redis")
    return settings


def settings_table() -> str:
    """The README's settings table, from the definitions above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = "hostname" if f.name == "instance_name" else f"`{f.default}`" if f.default != "" else "(empty)"
        rows.append(f"| `{f.metadata['env']}` | {default} | {f.metadata['doc']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    try:
        load_settings()
    except SettingsError as exc:
        sys.exit(f"invalid setting: {exc}")
    print(settings_table())
