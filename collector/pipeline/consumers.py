"""Who drains: leases on consumer names, what each consumer holds in flight, and the
deaths of the consumers that never came back.

**Leases.** Two live processes under one consumer name would read each other's
pending entries (and one could dead-letter what the other stores). So a process
drains only under a name it holds a lease on: a Redis key with its random token
and a TTL of CONSUMER_LEASE_SECONDS, renewed by a thread every third of that while
the process lives. A restarted process prefers its predecessor's name (node name
and pool index) so that it resumes the entries left pending there; while the dead
one's lease has not lapsed it drains under a spare name (`<name>~1`, ...) and moves
to its own as soon as it is free.

**Deaths, not deliveries.** An entry should be dead-lettered only when it keeps
killing the workers that take it (a crash, the OOM killer, a hard time limit), never
because runs failed on transient trouble (a lock, a deadlock, a full disk, a Redis
error at ack time) and were retried. Before storing a batch, a consumer writes its
ids and its process token beside its name (the in-flight marker). The marker is
evidence of a death only when someone else finds it with the entries still pending:
the next holder of the name (another token) or a live consumer reclaiming the
entries of a name whose lease lapsed. Then each entry still pending gets one death
in a hash; a run the process survived leaves its marker to itself, and counts nothing.
Own pending entries are re-read with XRANGE, which does not count as a delivery.

A name with no lease and nothing pending is removed from the group.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

import redis

from collector.core.settings import Settings

log = logging.getLogger(__name__)

# Most spare names tried after the preferred one (more live processes with the same
# node name and pool index than this is a deployment error, said in the exception).
MAX_SPARES = 64
# Markers outlive any realistic outage of every worker; the bound only keeps names of
# decommissioned workers from lingering for ever.
MARKER_TTL = 7 * 24 * 3600

_RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# One round trip: for the first consumer of the group whose lease is gone and that
# still has entries pending, turn its in-flight marker into deaths, claim up to
# `count` of its entries for ARGV[2] and return them with their deaths; names with
# no lease and nothing pending are removed on the way. Atomic, so no consumer can
# read between the lease check and the claim or the removal.
_RECLAIM = """
local stream, epoch_key, deaths_key = KEYS[1], KEYS[2], KEYS[3]
local group, me, count, lease_prefix, marker_prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local epoch = redis.call('GET', epoch_key)
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', stream, group)
if not ok then return {epoch, false} end
for _, c in ipairs(consumers) do
    local name, pending
    for i = 1, #c, 2 do
        if c[i] == 'name' then name = c[i + 1] elseif c[i] == 'pending' then pending = c[i + 1] end
    end
    if name ~= me and redis.call('EXISTS', lease_prefix .. name) == 0 then
        local marker = redis.call('GET', marker_prefix .. name)
        if marker then
            local token = true
            for id in string.gmatch(marker, '%S+') do
                if token then
                    token = false
                elseif #redis.call('XPENDING', stream, group, id, id, 1, name) > 0 then
                    redis.call('HINCRBY', deaths_key, id, 1)
                end
            end
            redis.call('DEL', marker_prefix .. name)
        end
        if pending == 0 then
            redis.call('XGROUP', 'DELCONSUMER', stream, group, name)
        else
            local ids = {}
            for _, p in ipairs(redis.call('XPENDING', stream, group, '-', '+', count, name)) do
                ids[#ids + 1] = p[1]
            end
            local entries = redis.call('XCLAIM', stream, group, me, 0, unpack(ids))
            return {epoch, name, entries, ids, redis.call('HMGET', deaths_key, unpack(ids))}
        end
    end
end
return {epoch, false}
"""

_token: dict[int, str] = {}


def process_token() -> str:
    """Unique to this process (a fork gets its own): what leases and markers are signed with."""
    pid = os.getpid()
    if pid not in _token:
        _token[pid] = f"{socket.gethostname()}:{pid}:{secrets.token_hex(4)}"
    return _token[pid]


def lease_key(stream: str, name: str) -> str:
    return f"{stream}:consumer:{name}"


def marker_key(stream: str, name: str) -> str:
    return f"{stream}:inflight:{name}"


def deaths_key(stream: str) -> str:
    return f"{stream}:deaths"


class ConsumerLease:
    """This process's consumer name, held by a lease (see the module doc)."""

    def __init__(self, client: redis.Redis, settings: Settings, preferred: str) -> None:
        self.client = client
        self.settings = settings
        self.preferred = preferred
        self.token = process_token()
        self.name: str | None = None
        self._renewed_at = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._thread: threading.Thread | None = None

    @property
    def _ttl_ms(self) -> int:
        return int(self.settings.consumer_lease_seconds * 1000)

    def _take(self, name: str) -> bool:
        taken = bool(self.client.set(lease_key(self.settings.stream, name), self.token, nx=True, px=self._ttl_ms))
        if taken:
            self._renewed_at = time.monotonic()
        return taken

    def _keep(self, name: str) -> bool:
        kept = bool(self._renew(keys=[lease_key(self.settings.stream, name)], args=[self.token, self._ttl_ms]))
        if kept:
            self._renewed_at = time.monotonic()
        return kept

    def _fresh(self) -> bool:
        """Renewed within half its lifetime: no need to ask Redis again before this run."""
        return time.monotonic() - self._renewed_at < self.settings.consumer_lease_seconds / 2

    def current(self) -> str:
        """The name to drain under now (renewing, moving or taking a lease as needed)."""
        with self._lock:
            if self.name is not None and self.name != self.preferred and self._take(self.preferred):
                self._give_back(self.name)
                self.name = self.preferred
                log.info("consumer name taken over", extra={"consumer": self.name})
            elif self.name is not None and not self._fresh() and not self._keep(self.name):
                log.warning("consumer lease lost to another process", extra={"consumer": self.name})
                self.name = None
            if self.name is None:
                self.name = self._acquire()
            self._start_heartbeat()
            return self.name

    def _acquire(self) -> str:
        for name in (self.preferred, *(f"{self.preferred}~{n}" for n in range(1, MAX_SPARES + 1))):
            if self._take(name):
                return name
        raise RuntimeError(f"{MAX_SPARES + 1} live processes already drain as {self.preferred!r}: "
                           f"give workers distinct node names (-n)")

    def _give_back(self, name: str) -> None:
        self._release(keys=[lease_key(self.settings.stream, name)], args=[self.token])

    def _start_heartbeat(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._beat, name="consumer-lease", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while not self._stopped.wait(self.settings.consumer_lease_seconds / 3):
            try:
                with self._lock:
                    if self.name is not None and not self._keep(self.name):
                        log.warning("consumer lease lost to another process", extra={"consumer": self.name})
                        self.name = None
            except redis.RedisError as exc:  # the lease may lapse; current() takes one again
                log.warning("consumer lease not renewed: %s", exc)

    def release(self) -> None:
        """At a clean shutdown: the name is free at once, and anything left pending on it is
        reclaimed by the others without waiting for the lease to lapse."""
        self._stopped.set()
        with self._lock:
            if self.name is not None:
                try:
                    self._give_back(self.name)
                except redis.RedisError:
                    pass  # it lapses by itself
                self.name = None


def mark_in_flight(client: redis.Redis, stream: str, consumer: str, ids: list[bytes],
                   token: str | None = None) -> None:
    """Record what this consumer is about to store (see the module doc). Best-effort: at
    maxmemory Redis refuses the SET, and the batch goes on without it (a death during it
    would not be counted, which only delays a poison entry's dead letter)."""
    value = " ".join([token or process_token(), *(i.decode() for i in ids)])
    try:
        client.set(marker_key(stream, consumer), value, ex=MARKER_TTL)
    except redis.ResponseError as exc:
        log.warning("in-flight marker not written: %s", exc)


def bury_predecessor(client: redis.Redis, stream: str, consumer: str, marker: bytes | None,
                     pending_ids: list[bytes]) -> None:
    """The name's previous holder died with these entries if its marker (another
    process's token) names entries still pending: one death each."""
    if marker is None:
        return
    token, *ids = marker.decode().split()
    if token == process_token():
        return  # our own run failed and we lived: not a death
    pending = {i.decode() for i in pending_ids}
    pipe = client.pipeline(transaction=True)
    for entry_id in ids:
        if entry_id in pending:
            pipe.hincrby(deaths_key(stream), entry_id, 1)
    pipe.delete(marker_key(stream, consumer))
    try:
        pipe.execute()
    except redis.exceptions.OutOfMemoryError as exc:  # counted on a later run, once memory is freed
        log.warning("deaths not counted yet, Redis is at maxmemory: %s", exc)


def deaths(client: redis.Redis, stream: str, ids: list[bytes]) -> dict[bytes, int]:
    """How many workers died holding each of these entries (absent: none)."""
    values = client.hmget(deaths_key(stream), ids)
    return {i: int(v) for i, v in zip(ids, values, strict=True) if v is not None}


def reclaim_script(client: redis.Redis):
    return client.register_script(_RECLAIM)
