"""Pipeline accounting kept in Redis: accepted, rejected and duplicate-skipped logs.

Persisted and dead-lettered logs are counted in PostgreSQL itself (log_counts,
dead_letters), in the transactions that store them. Once the pipeline is idle:
accepted = persisted + dead-lettered.
"""

from __future__ import annotations

import logging

import redis

from collector.core.settings import Settings
from collector.pipeline import shards

log = logging.getLogger(__name__)


def _key(settings: Settings) -> str:
    """Each stream shard counts beside its stream (the ingest transaction adds to it); the
    rejections, which touch no stream, are counted under the deployment's own key."""
    return settings.local_key("counters")


def add_rejected(client: redis.Redis, settings: Settings, reason: str) -> None:
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hincrby(_key(settings), "rejected", 1)
        pipe.hincrby(_key(settings), f"rejected:{reason}", 1)
        pipe.execute()
    except redis.RedisError:  # the rejection itself is what matters to the client
        log.debug("could not count a rejection", exc_info=True)


def add_drained(pipe: redis.client.Pipeline, settings: Settings, duplicates: int) -> None:
    if duplicates:
        pipe.hincrby(_key(settings), "duplicates_skipped", duplicates)


def read(client: redis.Redis, settings: Settings) -> dict:
    """The totals over the deployment's key and every shard's."""
    pipe = client.pipeline(transaction=False)
    for key in dict.fromkeys(_key(s) for s in (settings, *shards.shards(settings))):
        pipe.hgetall(key)
    raw: dict[str, int] = {}
    for counts in pipe.execute():
        for k, v in counts.items():
            raw[k.decode()] = raw.get(k.decode(), 0) + int(v)
    return {
        "accepted": raw.get("accepted", 0),
        "rejected": raw.get("rejected", 0),
        "rejected_by_reason": {k.split(":", 1)[1]: v for k, v in raw.items() if k.startswith("rejected:")},
        "duplicates_skipped": raw.get("duplicates_skipped", 0),
    }


def accepted_counter(settings: Settings) -> tuple[str, str]:
    """The (hash, field) the producer counts accepted logs in, in the transaction that adds them."""
    return _key(settings), "accepted"
