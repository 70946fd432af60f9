"""Scheduled runs that cannot pile up, whatever the clocks of beat and the workers say.

Beat sends a tick every interval. Celery's `expires` would drop stale ticks, but it
compares beat's clock with the worker's: a worker clock ahead by more than the
expiry revokes every tick, and nothing drains. Instead each tick claims a token in
Redis that lives for most of the interval, measured by Redis's clock alone; ticks
that queued up while the workers were down find it taken and end at once.
"""

from __future__ import annotations

import redis

from collector.core.settings import Settings


def claim_tick(client: redis.Redis, settings: Settings, name: str, interval: float) -> bool:
    """True for the first tick of `name` in this interval, False for any other."""
    return bool(client.set(settings.key(f"tick:{name}"), b"1", nx=True, px=max(1, int(interval * 900))))
