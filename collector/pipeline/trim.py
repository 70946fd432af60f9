"""Keeping Redis memory bounded: removing entries every consumer group has acknowledged."""

from __future__ import annotations

import redis

from collector.pipeline.group import parse_id


def trim_acknowledged(client: redis.Redis, stream: str) -> int:
    """Drop entries every consumer group has acknowledged; returns how many went.

    The cut (MINID) is the oldest entry some group still needs: its oldest pending
    entry, or the first one it has not been delivered yet. Entries below it were
    delivered and acknowledged, and cannot become unacknowledged again, so this
    never removes anything not yet stored. Approximate trimming (~) only ever
    removes less, and costs much less.
    """
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return 0  # no stream yet
    if not groups:
        return 0  # nobody consumes yet: keep everything
    cuts = []
    for group in groups:
        pending = client.xpending(stream, group["name"])
        if pending["pending"]:
            cuts.append(parse_id(pending["min"]))
        else:
            ms, seq = parse_id(group["last-delivered-id"])
            cuts.append((ms, seq + 1))
    ms, seq = min(cuts)
    # limit=0: without it Redis stops an approximate trim after 10,000 entries, which
    # falls behind any ingest faster than 10,000 entries per TRIM_INTERVAL.
    return client.xtrim(stream, minid=f"{ms}-{seq}", approximate=True, limit=0)


