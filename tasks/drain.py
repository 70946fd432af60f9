"""The drain and trim tasks, and their beat schedule.

Beat sends `drain_stream` every DRAIN_INTERVAL seconds as a tick; a tick that
finds another tick ran within the interval ends at once (pipeline.ticks: by
Redis's clock, not Celery's `expires`, which a skewed worker clock turns into
"revoke everything"), so ticks never pile up while workers are busy or down. A
run stores one batch of up to BATCH_SIZE entries; when the batch was full it
sends itself again at once, so throughput is bound by the workers, not by the
tick, and an idle system costs one XREADGROUP per tick. Task bodies are
one-liners around collector.pipeline; they read settings from their app
(tasks.celery_app.make_celery).
"""

from __future__ import annotations

import psycopg
import redis
from celery import shared_task
from celery.utils.log import current_process_index
from psycopg_pool import PoolTimeout

from collector.core.settings import Settings
from collector.pipeline import keyring
from collector.pipeline.drain import drain_batch
from collector.pipeline.ticks import claim_tick
from collector.pipeline.trim import trim_acknowledged
from collector.store import keys
from tasks import resources

# Transient trouble only: anything else is a bug and should be seen, not retried.
TRANSIENT_ERRORS = (psycopg.OperationalError, PoolTimeout, redis.ConnectionError, redis.TimeoutError)


def beat_schedule(settings: Settings) -> dict:
    return {
        "drain-stream": {
            "task": "tasks.drain.drain_stream",
            "schedule": settings.drain_interval,
            "kwargs": {"tick": True},
        },
        "trim-stream": {
            "task": "tasks.drain.trim_stream",
            "schedule": settings.trim_interval,
            "kwargs": {"tick": True},
        },
        "sync-keys": {
            "task": "tasks.drain.sync_keys",
            "schedule": settings.keys_sync_interval,
            "kwargs": {"tick": True},
        },
        "maintain-storage": {
            "task": "tasks.storage.maintain_storage",
            "schedule": settings.storage_maintenance_interval,
            "kwargs": {"tick": True},
        },
    }


def consumer_name(worker_hostname: str | None, settings: Settings) -> str:
    """The name a process prefers: stable across restarts of the same worker (node name +
    pool process index), so a restarted process finds and finishes the entries its
    predecessor left pending. A lease makes it unique among live processes
    (resources.consumer)."""
    return f"{worker_hostname or settings.instance_name}-{current_process_index() or 0}"


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=120,
    soft_time_limit=100,
    autoretry_for=TRANSIENT_ERRORS,
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=3,
)
def drain_stream(self, tick: bool = False) -> int:
    settings: Settings = self.app.collector_settings
    client, pool = resources.backends(settings)
    if tick and not claim_tick(client, settings, "drain", settings.drain_interval):
        return 0
    consumer = resources.consumer(settings, consumer_name(self.request.hostname, settings))
    with pool.connection() as conn:
        result = drain_batch(client, conn, settings, consumer, resources.cache_client(settings))
    if result.full:
        self.apply_async()
    return result.read


@shared_task(bind=True, acks_late=True, time_limit=60, autoretry_for=TRANSIENT_ERRORS, max_retries=1)
def trim_stream(self, tick: bool = False) -> int:
    """Keep Redis memory bounded: drop entries every group has acknowledged."""
    settings: Settings = self.app.collector_settings
    client, _ = resources.backends(settings)
    if tick and not claim_tick(client, settings, "trim", settings.trim_interval):
        return 0
    return trim_acknowledged(client, settings.stream)


@shared_task(bind=True, acks_late=True, time_limit=60, autoretry_for=TRANSIENT_ERRORS, max_retries=1)
def sync_keys(self, tick: bool = False) -> int:
    """Copy the live keys to Redis (heals a replaced Redis, catches changes made while it
    was down) and the last-use times back to PostgreSQL; returns the live keys."""
    settings: Settings = self.app.collector_settings
    client, pool = resources.backends(settings)
    if tick and not claim_tick(client, settings, "sync-keys", settings.keys_sync_interval):
        return 0
    with pool.connection() as conn, conn.transaction():
        keys.lock(conn)  # the CLI's creates and revokes wait, and so do we for theirs
        rows = keys.every(conn)
        keyring.sync(client, settings, rows)
        keys.record_use(conn, keyring.recent_uses(client, settings))
    return sum(row.revoked_at is None for row in rows)
