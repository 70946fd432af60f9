"""The drain and trim tasks, and their beat schedule.

Beat sends `drain_tick` every DRAIN_INTERVAL seconds; a tick that finds another
tick ran within the interval ends at once (pipeline.ticks: by Redis's clock, not
Celery's `expires`, which a skewed worker clock turns into "revoke everything"),
so ticks never pile up while workers are busy or down. A tick that finds entries
waiting (undelivered or pending in the group) sends `drain_stream`, which stores
batches of up to BATCH_SIZE entries, one after the other (each its own read,
transaction and XACK) while they come back full, for up to DRAIN_TASK_SECONDS;
when the last was still full it sends itself again at once, so throughput is
bound by the workers, not by the tick, and an idle system costs one round trip
per tick. Task bodies are one-liners around collector.pipeline; they read
settings from their app (tasks.celery_app.make_celery).

Why a separate tick (what Flower shows): a beat entry always creates a task, so
with the tick being the drain itself Flower listed one drain run per second,
nearly all of them empty, burying the runs that moved logs. The tick sends no
worker events (`send_events=False`), so Flower only lists `drain_stream` runs,
and those only exist when there was something to drain (beat's own task-sent
event, sent for every task while task_send_sent_event is on, would still list
each tick as PENDING: celery_app turns it off); each says what it did
in its result ("stored 100 of 100 (new), more waiting"), which Flower's task
list shows in its `result` column (the worker's task-succeeded event carries
the result's repr whatever task_ignore_result says; Flower shows the column when
--tasks_columns lists `result`). The drain itself is unchanged: the same batch,
the same sources (own pending, reclaimed, new), commit before XACK; the tick
only decides whether a run is needed, from the group's own figures, and errs
towards running (any pending entry, or a lag Redis cannot tell, sends one).
"""

from __future__ import annotations

import psycopg
import redis
from celery import shared_task
from celery.utils.log import current_process_index
from psycopg_pool import PoolTimeout

from collector.core.settings import Settings
from collector.pipeline import keyring, shards
from collector.pipeline.drain import DrainResult, drain_for
from collector.pipeline.ticks import claim_tick
from collector.pipeline.trim import trim_acknowledged
from collector.store import keys
from tasks import resources

# Transient trouble only: anything else is a bug and should be seen, not retried.
TRANSIENT_ERRORS = (psycopg.OperationalError, PoolTimeout, redis.ConnectionError, redis.TimeoutError)


def beat_schedule(settings: Settings) -> dict:
    return {
        "drain-stream": {
            "task": "tasks.drain.drain_tick",
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


def describe(results: list[DrainResult]) -> str:
    """One line for Flower's task list: what a drain task's runs did."""
    read = sum(r.read for r in results)
    if not read:
        return "idle"
    inserted, dead = sum(r.inserted for r in results), sum(r.dead_lettered for r in results)
    duplicates = sum(r.duplicates for r in results)
    sources = "/".join(dict.fromkeys(r.source for r in results if r.read))
    text = f"stored {inserted} of {read} ({sources})"
    if len(results) > 1:
        text += f" in {len(results)} runs"
    if duplicates:
        text += f", {duplicates} duplicates"
    if dead:
        text += f", {dead} dead-lettered"
    return text + (", more waiting" if results[-1].full else "")


# The tick is seen by the drain runs it sends, not by itself: no worker events
# (received/started/succeeded), so Flower does not list one idle run per second.
@shared_task(bind=True, acks_late=True, time_limit=30, send_events=False)
def drain_tick(self, tick: bool = True) -> str:
    """Send `drain_stream` for each stream shard whose group has entries not yet stored
    (so a shard waits for no other: each has its own tasks in the queue); "idle" otherwise."""
    settings: Settings = self.app.collector_settings
    client, _ = resources.backends(settings)
    if tick and not claim_tick(client, settings, "drain", settings.drain_interval):
        return "skipped: another tick ran within DRAIN_INTERVAL"
    waiting = {index: count for index, count in enumerate(shards.backlogs(client, settings)) if count}
    for index in waiting:
        drain_stream.apply_async(kwargs={"shard": index} if index else None)
    if not waiting:
        return "idle"
    if len(waiting) == 1 and settings.stream_shards == 1:
        return f"sent drain_stream: {waiting[0]} waiting"
    return "sent drain_stream for shards " + ", ".join(f"{i} ({n} waiting)" for i, n in waiting.items())


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
def drain_stream(self, tick: bool = False, shard: int = 0) -> str:
    """Store batches of one stream shard for up to DRAIN_TASK_SECONDS (pipeline.drain.drain_for);
    returns what it did, for Flower's task list (describe)."""
    settings: Settings = self.app.collector_settings
    client, pool = resources.backends(settings)
    # `tick`: messages a beat of an earlier version sent; they claim the tick as before.
    if tick and not claim_tick(client, settings, "drain", settings.drain_interval):
        return "skipped: another tick ran within DRAIN_INTERVAL"
    if shard >= settings.stream_shards:  # sent before STREAM_SHARDS was lowered: its tick sends what is needed
        return f"skipped: no shard {shard} (STREAM_SHARDS={settings.stream_shards})"
    mine = shards.shard(settings, shard)
    consumer = resources.consumer(settings, shard, consumer_name(self.request.hostname, settings))
    with pool.connection() as conn:
        results = drain_for(client, conn, mine, consumer, resources.cache_client(settings))
    if results[-1].full:
        self.apply_async(kwargs={"shard": shard} if shard else None)
    text = describe(results)
    return text if settings.stream_shards == 1 else f"shard {shard}: {text}"


@shared_task(bind=True, acks_late=True, time_limit=60, autoretry_for=TRANSIENT_ERRORS, max_retries=1)
def trim_stream(self, tick: bool = False) -> int:
    """Keep Redis memory bounded: drop entries every group has acknowledged."""
    settings: Settings = self.app.collector_settings
    client, _ = resources.backends(settings)
    if tick and not claim_tick(client, settings, "trim", settings.trim_interval):
        return 0
    return sum(trim_acknowledged(client, shard.stream) for shard in shards.shards(settings))


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
