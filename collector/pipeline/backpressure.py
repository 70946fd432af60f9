"""Back-pressure: refuse new logs (503 + Retry-After) while the backlog is too big.

The backlog is what Redis holds but PostgreSQL does not yet: entries not yet
delivered to the drain (lag) plus delivered but unacknowledged (pending). Past
BACKLOG_HIGH_WATER, or past REDIS_MEMORY_HIGH_WATER of Redis's maxmemory,
ingest closes; it opens again below BACKLOG_LOW_WATER (and the memory mark), so
it does not flap at the threshold. Each API worker re-reads the figures at most
every BACKPRESSURE_CHECK_INTERVAL, so the check adds no round trip to most requests.
"""

from __future__ import annotations

import logging
import time

import redis

from collector.core.settings import Settings
from collector.pipeline import shards

log = logging.getLogger(__name__)


class Gate:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.closed = False
        self.backlog = 0
        self.memory_ratio = 0.0
        self._next_check = 0.0

    def is_open(self, client: redis.Redis) -> bool:
        now = time.monotonic()
        if now >= self._next_check:
            # Set first: concurrent greenlets must not all refresh at once.
            self._next_check = now + self.settings.backpressure_check_interval
            try:
                self.refresh(client)
            except redis.RedisError:
                pass  # the XADD that follows will fail and answer 503 on its own
        return not self.closed

    def refresh(self, client: redis.Redis) -> None:
        s = self.settings
        self.backlog, self.memory_ratio = shards.backlog_and_memory(client, s)
        memory_high = self.memory_ratio >= s.redis_memory_high_water
        if self.closed:
            if self.backlog <= s.backlog_low_water and self.memory_ratio < s.redis_memory_high_water * 0.9:
                self.closed = False
                log.info("ingest reopened", extra={"backlog": self.backlog, "memory_ratio": self.memory_ratio})
        elif self.backlog >= s.backlog_high_water or memory_high:
            self.closed = True
            log.warning("ingest closed: backlog over the high-water mark",
                        extra={"backlog": self.backlog, "memory_ratio": self.memory_ratio})
