"""Admitting a request's logs to the stream in one atomic Redis script: the key check,
the idempotency record, the per-device rate limits, the XADDs and the accepted count.

One script per request, sent in the Appender's shared MULTI/EXEC, so none of these
costs a round trip of its own, and no crash or timeout between them can queue a
request twice, remember an answer for logs that were not queued, or count logs
against a limit that were refused. Requests that need none of it (no key, no
credential, no limit) skip the script: plain XADDs in the same transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis

# KEYS: 1 stream, 2 counters hash, 3 idempotency record, 4 key registry hash, 5 key-use hash,
#       6.. one token bucket per device.
# ARGV: 1 counter field ('' = none), 2 record ttl, 3 fingerprint ('' = no idempotency key),
#       4 received_at, 5 key id ('' = no credential), 6 its digest, 7 rate/s (0 = no limit),
#       8 burst, 9 m buckets, 10..9+m costs, then per entry: n and n field/value pairs.
# Returns {1, record, worst bucket, its tokens left}  queued;
#         {0, record}                               the idempotency key was used already;
#         {-1}                                      the credential is unknown or revoked;
#         {-2, bucket, wait ms (-1: never), tokens}  over the limit: nothing queued.
# record = "<fingerprint>|<received_at>|<ids>", ids "<first id>+<count>" when consecutive.
SCRIPT = """
local now, now_ms
if ARGV[5] ~= '' or tonumber(ARGV[7]) > 0 then
    now = redis.call('TIME')
    now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end
if ARGV[5] ~= '' then
    local known = redis.call('HGET', KEYS[4], ARGV[5])
    if not known or not string.find(known, ARGV[6], 1, true) then return {-1} end
    redis.call('HSET', KEYS[5], ARGV[5], now[1])
end
if ARGV[3] ~= '' then
    local remembered = redis.call('GET', KEYS[3])
    if remembered then return {0, remembered} end
end
local m, rate, burst = tonumber(ARGV[9]), tonumber(ARGV[7]), tonumber(ARGV[8])
local left, worst = {}, 0
if rate > 0 then
    for b = 1, m do
        local cost = tonumber(ARGV[9 + b])
        local state = redis.call('HMGET', KEYS[5 + b], 't', 'ms')
        local tokens = tonumber(state[1]) or burst
        local last = tonumber(state[2]) or now_ms
        tokens = math.min(burst, tokens + math.max(0, now_ms - last) * rate / 1000)
        if cost > burst then return {-2, b, -1, math.floor(tokens)} end
        if tokens < cost then return {-2, b, math.ceil((cost - tokens) * 1000 / rate), math.floor(tokens)} end
        left[b] = tokens - cost
    end
    for b = 1, m do
        redis.call('HSET', KEYS[5 + b], 't', tostring(left[b]), 'ms', now_ms)
        redis.call('PEXPIRE', KEYS[5 + b], math.ceil(burst * 1000 / rate) + 1000)
        if worst == 0 or left[b] < left[worst] then worst = b end
    end
end
local ids, n, i = {}, 0, 10 + m
while i <= #ARGV do
    local k = tonumber(ARGV[i])
    n = n + 1
    ids[n] = redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + 2 * k))
    i = i + 2 * k + 1
end
if ARGV[1] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[1], n) end
local compact = ids[1] .. '+' .. n
local ms, seq = string.match(ids[1], '^(%d+)-(%d+)$')
seq = tonumber(seq)
for j = 2, n do
    local mj, sj = string.match(ids[j], '^(%d+)-(%d+)$')
    if mj ~= ms or tonumber(sj) ~= seq + j - 1 then compact = table.concat(ids, ',') break end
end
local record = ARGV[3] .. '|' .. ARGV[4] .. '|' .. compact
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], record, 'EX', ARGV[2]) end
if worst == 0 then return {1, record, 0, 0} end
return {1, record, worst, math.floor(left[worst])}
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


@dataclass(frozen=True)
class Remember:
    """Make a request idempotent: remember its answer under `key` for `ttl` seconds."""

    key: str
    fingerprint: str  # of the request; a reuse of the key with another fingerprint is refused
    ttl: int


@dataclass(frozen=True)
class Credential:
    """The key a request was made with, checked (and its use recorded) inside the script,
    so a revocation applies to the very next request."""

    registry: str  # the Redis hash of known keys
    uses: str  # the Redis hash of last-use times
    key_id: str
    digest: str


@dataclass(frozen=True)
class Limits:
    """A token bucket per device: `rate` logs per second, up to `burst` at once."""

    rate: float
    burst: int
    buckets: list[tuple[str, str, int]]  # (device id, bucket key, logs in this request)


@dataclass
class Admission:
    """What one request asks of the script, and, after it ran, what it got."""

    received_at: str
    remember: Remember | None = None
    credential: Credential | None = None
    limits: Limits | None = None
    # results
    status: str = ""  # queued | replayed | unauthorized | limited
    ids: list[str] = field(default_factory=list)
    fingerprint: str = ""
    device: str = ""  # the most constrained device (limited: the one refused)
    tokens_left: int = 0
    retry_after_ms: int = 0  # limited: -1 when the request can never fit the burst

    def queue(self, pipe: redis.client.Pipeline, stream: str, counter: tuple[str, str] | None,
              entries: Sequence[dict]) -> None:
        remember, credential, limits = self.remember, self.credential, self.limits
        buckets = limits.buckets if limits else []
        keys = [stream, counter[0] if counter else stream, remember.key if remember else stream,
                credential.registry if credential else stream, credential.uses if credential else stream,
                *[bucket for _, bucket, _ in buckets]]
        args: list = [counter[1] if counter else "", remember.ttl if remember else 0,
                      remember.fingerprint if remember else "", self.received_at,
                      credential.key_id if credential else "", credential.digest if credential else "",
                      limits.rate if limits else 0, limits.burst if limits else 0, len(buckets),
                      *[cost for _, _, cost in buckets]]
        for fields in entries:
            args.append(len(fields))
            for name, value in fields.items():
                args += (name, value)
        # execute_command, not evalsha: redis-py's cluster pipelines refuse evalsha, and this
        # routes by the first key on a cluster and does the same on a plain Redis.
        pipe.execute_command("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)

    def read(self, reply: list) -> Admission:
        code = int(reply[0])
        if code == -1:
            self.status = "unauthorized"
        elif code == -2:
            self.status = "limited"
            self.device = self.limits.buckets[int(reply[1]) - 1][0]
            self.retry_after_ms, self.tokens_left = int(reply[2]), int(reply[3])
        else:
            self.status = "queued" if code == 1 else "replayed"
            self.fingerprint, self.received_at, self.ids = _parse_record(reply[1])
            if code == 1 and int(reply[2]):
                self.device = self.limits.buckets[int(reply[2]) - 1][0]
                self.tokens_left = int(reply[3])
        return self


def _parse_record(record: bytes | str) -> tuple[str, str, list[str]]:
    text = record.decode() if isinstance(record, bytes) else record
    fingerprint, received_at, ids = text.split("|", 2)
    if "+" in ids:
        first, count = ids.split("+")
        ms, seq = first.split("-")
        return fingerprint, received_at, [f"{ms}-{int(seq) + i}" for i in range(int(count))]
    return fingerprint, received_at, ids.split(",")
