"""Guarding a change of STREAM_SHARDS (or REDIS_CLUSTER): entries never stranded unseen.

The shards' streams are named after the layout (pipeline.shards), so a process started
with another layout than the one whose streams still hold unstored entries would never
drain them, and no figure would show them. Each API and worker process checks at start:
Redis records the layout in use (absent: one stream, STREAM_KEY, as before shards
existed); a process with another layout starts only once the recorded layout's streams
hold nothing unstored, and then records its own, once it has given every shard's copy of
the key registry the deployment's keys, so new shards accept keys at once (afterwards
every publish and sync_keys writes all copies).
"""

from __future__ import annotations

import dataclasses
import logging

import redis

from collector.core.settings import Settings, SettingsError
from collector.pipeline import keyring, shards

log = logging.getLogger(__name__)

BEFORE_SHARDS = "1"  # what an unrecorded layout is


def layout_key(settings: Settings) -> str:
    return settings.key("stream:layout")


def layout_of(settings: Settings) -> str:
    return f"{settings.stream_shards}{' cluster' if settings.redis_cluster else ''}"


def settings_of(settings: Settings, layout: str) -> Settings:
    count, _, cluster = layout.partition(" ")
    return dataclasses.replace(settings, stream_shards=int(count), redis_cluster=cluster == "cluster")


def check_layout(client: redis.Redis, settings: Settings) -> None:
    """Raise SettingsError while another layout's streams hold unstored entries; else record
    this one, after giving its shards the keys. Redis unreachable: checked at the next start."""
    mine = layout_of(settings)
    try:
        raw = client.get(layout_key(settings))
        recorded = raw.decode() if raw is not None else BEFORE_SHARDS
        if recorded != mine:
            old = settings_of(settings, recorded)
            if waiting := sum(shards.backlogs(client, old)):
                raise SettingsError(
                    f"STREAM_SHARDS={settings.stream_shards} (REDIS_CLUSTER={settings.redis_cluster}) but {waiting} "
                    f"accepted logs still wait in the streams of STREAM_SHARDS={old.stream_shards} "
                    f"(REDIS_CLUSTER={old.redis_cluster}): run with those until /api/stats shows nothing pending "
                    "or lagging, then change them (docs/scaling.md, \"Changing STREAM_SHARDS\")")
            if shards.tagged(settings):
                keyring.spread(client, settings)
            client.set(layout_key(settings), mine)
            log.warning("stream layout changed", extra={"from": recorded, "to": mine})
    except redis.RedisError as exc:
        log.warning("stream layout not checked (Redis unreachable; checked at the next start): %s", exc)
