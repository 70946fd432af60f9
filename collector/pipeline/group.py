"""The stream's consumer group and identity, and the stream figures (length, pending,
lag, backlog) that the stats, the metrics and back-pressure read."""

from __future__ import annotations

import secrets

import redis

from collector.core.clients import memory_ratio


def epoch_key(stream: str) -> str:
    """Where the stream's incarnation tag lives: beside the stream, so it is kept,
    lost or restored together with it."""
    return f"{stream}:epoch"


def stream_identity(client: redis.Redis, stream: str, epoch: bytes | None) -> str:
    """The `stream` a stored row names: "<stream key>#<epoch>".

    Entry ids are unique only within one incarnation of one stream: a replacement
    Redis whose clock is behind hands out ids its predecessor already gave to other
    logs. The epoch is a random tag set (once) when the stream's group is created or
    first read, so a new Redis means a new identity. `epoch` is the value read in the
    same transaction as the entries; None means no tag yet, and one is set now.
    """
    if epoch is None:
        client.set(epoch_key(stream), secrets.token_hex(4), nx=True)
        epoch = client.get(epoch_key(stream))
    return f"{stream}#{epoch.decode()}"


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream, and its epoch) unless it exists; safe to
    call often.

    The group starts at id 0 so entries added before it existed are still drained.
    """
    client.set(epoch_key(stream), secrets.token_hex(4), nx=True)
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


def group_info(groups: list | Exception, group: str) -> dict | None:
    """The group's entry in an XINFO GROUPS reply; None for no such group (or no stream)."""
    if isinstance(groups, Exception):  # no stream yet
        return None
    return next((g for g in groups if g["name"].decode() == group), None)


def _group_figures(length: int, info: dict | None) -> dict:
    if info is None:  # no consumer group yet: nothing delivered
        return {"stream_length": length, "pending": 0, "lag": length}
    return {"stream_length": length, "pending": info["pending"], "lag": info.get("lag")}


def pipeline_stats(client: redis.Redis, stream: str, group: str) -> dict:
    """Stream length, entries delivered but not acknowledged (pending), entries not yet
    delivered to the group (lag; None when Redis cannot tell), and the age of the oldest
    entry not yet stored (None when everything is stored).

    That age is counted from the entry's id, which Redis's own clock stamped: its oldest
    pending entry or the first one not delivered yet. A drain that has stalled shows
    here, whatever the clocks of the workers and beat say.
    """
    return pipeline_stats_of(client, [stream], group)[0]


def pipeline_stats_of(client: redis.Redis, streams: list[str], group: str) -> list[dict]:
    """pipeline_stats of each stream (the shards'), in two round trips whatever their number
    (on a cluster: per node, and one more per master for its clock)."""
    cluster = isinstance(client, redis.RedisCluster)
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, group)
    if not cluster:
        pipe.time()
    replies = pipe.execute(raise_on_error=False)
    if cluster:  # a cluster pipeline refuses TIME (it names no key): each stream's own node's clock
        clocks = {node.name: client.time(target_nodes=node) for node in client.get_primaries()}
        nows = [clocks[client.get_node_from_key(stream).name] for stream in streams]
    else:
        nows = [replies[-1]] * len(streams)
    figures, starts = [], []
    for i in range(len(streams)):
        length, groups, pending = replies[3 * i:3 * i + 3]
        for reply in (length, nows[i]):
            if isinstance(reply, Exception):
                raise reply
        info = group_info(groups, group)
        last = info["last-delivered-id"] if info is not None else None
        starts.append("-" if last is None else "(" + (last.decode() if isinstance(last, bytes) else last))
        figures.append((_group_figures(length, info), pending))
    pipe = client.pipeline(transaction=False)
    for stream, start in zip(streams, starts, strict=True):
        pipe.xrange(stream, min=start, count=1)
    out = []
    for (stream_figures, pending), undelivered, now in zip(figures, pipe.execute(), nows, strict=True):
        candidates = []
        if not isinstance(pending, Exception) and pending["pending"]:
            candidates.append(parse_id(pending["min"]))
        if undelivered:
            candidates.append(parse_id(undelivered[0][0]))
        now_ms = now[0] * 1000 + now[1] // 1000
        stream_figures["oldest_unstored_age_seconds"] = (
            round(max(0, now_ms - min(candidates)[0]) / 1000, 3) if candidates else None)
        out.append(stream_figures)
    return out


def backlog_of(figures: dict) -> int:
    """Entries not yet stored, from pipeline_stats' figures: lag + pending, or the whole
    stream when Redis cannot tell the lag (entries deleted mid-stream): be conservative."""
    if figures["lag"] is None:
        return figures["stream_length"]
    return figures["lag"] + figures["pending"]


def backlog(client: redis.Redis, stream: str, group: str) -> int:
    """Entries not yet stored, one round trip."""
    return backlogs(client, [stream], group)[0]


def backlogs(client: redis.Redis, streams: list[str], group: str) -> list[int]:
    """backlog of each stream, in one pipeline (on a cluster, one per node holding them)."""
    pipe = client.pipeline(transaction=False)
    for stream in streams:
        _queue_backlog(pipe, stream)
    replies = pipe.execute(raise_on_error=False)
    return [_backlog_from(length, groups, group) for length, groups in zip(replies[::2], replies[1::2], strict=True)]


def backlog_and_memory(client: redis.Redis, stream: str, group: str) -> tuple[int, float]:
    """(entries not yet stored, used_memory / maxmemory or 0.0 when unbounded), one round trip."""
    pipe = client.pipeline(transaction=False)
    _queue_backlog(pipe, stream)
    pipe.info("memory")
    length, groups, memory = pipe.execute(raise_on_error=False)
    if isinstance(memory, Exception):
        raise memory
    return _backlog_from(length, groups, group), memory_ratio(memory)


def _queue_backlog(pipe: redis.client.Pipeline, stream: str) -> None:
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)  # an error when there is no stream yet: group_info reads it as no group


def _backlog_from(length: int | Exception, groups: list | Exception, group: str) -> int:
    if isinstance(length, Exception):
        raise length
    return backlog_of(_group_figures(length, group_info(groups, group)))


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
