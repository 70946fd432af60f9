"""Open live tails per key, across every API process: TAIL_MAX_PER_KEY slots per key.

One sorted set per key holds its open tails, each scored with the time (Redis's
clock, ms) its slot lapses. A tail refreshes its slot while it runs and removes it
when it ends, so a process that dies without ending its tails (kill -9, a lost
host) only holds their slots until they lapse: at most SLOT_SECONDS. Redis's clock
alone decides, so the API hosts' clocks play no part.
"""

from __future__ import annotations

import redis

from collector.core.settings import Settings

# Take a slot if fewer than the cap are live: drop lapsed ones, count, add ours.
# Returns 1, or 0 when the key has its cap of live tails.
_TAKE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# Push a live tail's lapse time on. A slot that lapsed meanwhile (Redis unreachable for
# longer than SLOT_SECONDS) is taken back even over the cap: the tail is open, and
# counting it is what keeps further ones out.
_REFRESH = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def slot_seconds(settings: Settings) -> float:
    """How long a slot lives without a refresh: two heartbeats and a margin, so a tail
    that refreshes at each heartbeat interval never lapses while it runs."""
    return 2 * settings.tail_heartbeat_seconds + 5


def slots_key(settings: Settings, key_id: str) -> str:
    return settings.key(f"tails:{key_id}")


class TailSlots:
    """The slots of one API process's Redis; each method is one round trip."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.settings = client, settings
        self._take = client.register_script(_TAKE)
        self._refresh = client.register_script(_REFRESH)
        self.ttl_ms = int(slot_seconds(settings) * 1000)

    def take(self, key_id: str, tail_id: str) -> bool:
        return bool(self._take(keys=[slots_key(self.settings, key_id)],
                               args=[tail_id, self.settings.tail_max_per_key, self.ttl_ms]))

    def refresh(self, key_id: str, tail_id: str) -> None:
        self._refresh(keys=[slots_key(self.settings, key_id)], args=[tail_id, self.ttl_ms])

    def release(self, key_id: str, tail_id: str) -> None:
        self.client.zrem(slots_key(self.settings, key_id), tail_id)

    def held(self, key_id: str) -> int:
        """Slots of the key not yet lapsed (for tests and operators)."""
        return self.client.zcount(slots_key(self.settings, key_id), "(" + str(self._now_ms()), "+inf")

    def _now_ms(self) -> int:
        seconds, micros = self.client.time()
        return seconds * 1000 + micros // 1000
