"""The consumer group the drain reads with, and the stream figures (length, pending,
lag, backlog) that the stats, the metrics and back-pressure read."""

from __future__ import annotations

import redis


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) unless it exists; safe to call often.

    The group starts at id 0 so entries added before it existed are still drained.
    """
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def register_consumer(client: redis.Redis, stream: str, group: str, consumer: str) -> None:
    """Make a consumer visible in XINFO CONSUMERS before it has read anything (Redis
    only creates consumers that receive entries), so operators and the bench can see
    which drain processes are alive on an empty stream."""
    ensure_group(client, stream, group)
    client.xgroup_createconsumer(stream, group, consumer)


def _group_figures(length: int, groups: list, group: str) -> dict:
    info = next((g for g in groups if g["name"].decode() == group), None)
    if info is None:  # no consumer group yet: nothing delivered
        return {"stream_length": length, "pending": 0, "lag": length}
    return {"stream_length": length, "pending": info["pending"], "lag": info.get("lag")}


def _read_figures(client: redis.Redis, stream: str, group: str, memory: bool) -> tuple[dict, dict | None]:
    pipe = client.pipeline(transaction=False)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    if memory:
        pipe.info("memory")
    length, groups, *info = pipe.execute(raise_on_error=False)
    for reply in (length, *info):
        if isinstance(reply, Exception):
            raise reply
    if isinstance(groups, Exception):  # no stream yet
        groups = []
    return _group_figures(length, groups, group), (info[0] if info else None)


def pipeline_stats(client: redis.Redis, stream: str, group: str) -> dict:
    """Stream length, entries delivered but not acknowledged (pending), and entries
    not yet delivered to the group (lag; None when Redis cannot tell), in one round trip."""
    return _read_figures(client, stream, group, memory=False)[0]


def backlog_and_memory(client: redis.Redis, stream: str, group: str) -> tuple[int, float]:
    """(entries not yet stored, used_memory / maxmemory or 0.0 when unbounded), one round trip."""
    figures, memory = _read_figures(client, stream, group, memory=True)
    if figures["lag"] is None:  # Redis cannot tell (entries deleted mid-stream): be conservative
        backlog = figures["stream_length"]
    else:
        backlog = figures["lag"] + figures["pending"]
    maxmemory = memory.get("maxmemory", 0)
    return backlog, (memory["used_memory"] / maxmemory) if maxmemory else 0.0


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
