"""The storage maintenance task: partitions of `logs` created ahead, the default
partition emptied, retention (collector.store.partitions), run by beat every
STORAGE_MAINTENANCE_INTERVAL seconds."""

from __future__ import annotations

from celery import shared_task

from collector.core.settings import Settings
from collector.pipeline.ticks import claim_tick
from collector.store import partitions
from tasks import resources
from tasks.drain import TRANSIENT_ERRORS


@shared_task(bind=True, acks_late=True, time_limit=3600, soft_time_limit=3500,
             autoretry_for=TRANSIENT_ERRORS, max_retries=1)
def maintain_storage(self, tick: bool = False) -> dict:
    settings: Settings = self.app.collector_settings
    client, pool = resources.backends(settings)
    if tick and not claim_tick(client, settings, "storage", settings.storage_maintenance_interval):
        return {}
    with pool.connection() as conn:  # autocommit: each step is a transaction of its own
        result = partitions.maintain(conn, settings.partition_interval, settings.partitions_ahead,
                                     settings.retention_days, settings.dead_letter_retention_days)
    return {"created": result.created, "moved_from_default": result.moved_from_default,
            "dropped": result.dropped, "dead_letters_expired": result.dead_letters_expired}
