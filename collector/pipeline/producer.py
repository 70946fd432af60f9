"""Adding accepted logs to the stream: one MULTI/EXEC per request, or per group of
concurrent requests (Appender).

A request with an idempotency key runs one Lua script instead of plain XADDs: it
answers from the remembered record if there is one, or adds the entries, counts
them and remembers the answer, all in one atomic step. So no crash or timeout
between them can queue a request twice or remember an answer for logs that were
not queued, and it costs no extra round trip.

Adding never trims (the seed's MAXLEN dropped backlog that had not been stored
yet); only pipeline.trim removes entries, and only acknowledged ones.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import redis

# KEYS: the idempotency record, the stream, the counters hash.
# ARGV: ttl, fingerprint, received_at, counter field, then per entry: n, and n field/value pairs.
# Returns {1, record} when it queued the entries, {0, record} when the key was already used.
# The record is "<fingerprint>|<received_at>|<ids>", ids being "<first id>+<count>" when
# they are consecutive (always, in practice: nothing else runs during a script) or a list.
REMEMBER_AND_APPEND = """
local record = redis.call('GET', KEYS[1])
if record then return {0, record} end
local ids, n, i = {}, 0, 5
while i <= #ARGV do
    local k = tonumber(ARGV[i])
    n = n + 1
    ids[n] = redis.call('XADD', KEYS[2], '*', unpack(ARGV, i + 1, i + 2 * k))
    i = i + 2 * k + 1
end
if ARGV[4] ~= '' then redis.call('HINCRBY', KEYS[3], ARGV[4], n) end
local compact = ids[1] .. '+' .. n
local ms, seq = string.match(ids[1], '^(%d+)-(%d+)$')
seq = tonumber(seq)
for j = 2, n do
    local m, s = string.match(ids[j], '^(%d+)-(%d+)$')
    if m ~= ms or tonumber(s) ~= seq + j - 1 then compact = table.concat(ids, ',') break end
end
record = ARGV[2] .. '|' .. ARGV[3] .. '|' .. compact
redis.call('SET', KEYS[1], record, 'EX', ARGV[1])
return {1, record}
"""
_SCRIPT_SHA = hashlib.sha1(REMEMBER_AND_APPEND.encode()).hexdigest()


@dataclass(frozen=True)
class Remember:
    """Make a request idempotent: remember its answer under `key` for `ttl` seconds."""

    key: str
    fingerprint: str  # of the request; a reuse of the key with another fingerprint is refused
    received_at: str
    ttl: int


@dataclass(frozen=True)
class Queued:
    """What an idempotent request got: its ids now, or those of the first request with its key."""

    ids: list[str]
    received_at: str
    fingerprint: str
    replayed: bool


def parse_record(record: bytes | str, replayed: bool) -> Queued:
    text = record.decode() if isinstance(record, bytes) else record
    fingerprint, received_at, ids = text.split("|", 2)
    if "+" in ids:
        first, count = ids.split("+")
        ms, seq = first.split("-")
        expanded = [f"{ms}-{int(seq) + i}" for i in range(int(count))]
    else:
        expanded = ids.split(",")
    return Queued(expanded, received_at, fingerprint, replayed)


def append(client: redis.Redis, stream: str, entries: Sequence[dict],
           counter: tuple[str, str] | None = None) -> list[str]:
    """XADD each entry (and count them in `counter`, a hash key and field) in one round
    trip; returns the ids in order.

    MULTI/EXEC makes the batch all-or-nothing: if Redis refuses (out of memory), no
    entry is added, so a client that retries after our 503 cannot create duplicates.
    """
    [ids] = _send(client, stream, counter, [_Waiter(entries, 0, None)])
    if isinstance(ids, Exception):
        raise ids
    return ids


def _send(client: redis.Redis, stream: str, counter: tuple[str, str] | None,
          group: Sequence[_Waiter]) -> list[list[str] | Queued | Exception]:
    """One MULTI/EXEC for a group of requests; each gets its ids, its Queued or its error."""
    pipe = client.pipeline(transaction=True)
    plain = 0
    for waiter in group:
        if waiter.remember is None:
            for fields in waiter.entries:
                pipe.xadd(stream, fields)
            plain += len(waiter.entries)
        else:
            _queue_script(pipe, stream, counter, waiter)
    if plain and counter is not None:
        pipe.hincrby(counter[0], counter[1], plain)
    replies = pipe.execute(raise_on_error=False)
    out: list[list[str] | Queued | Exception] = []
    position = 0
    for waiter in group:
        if waiter.remember is None:
            mine = replies[position:position + len(waiter.entries)]
            position += len(mine)
            error = next((r for r in mine if isinstance(r, Exception)), None)
            out.append(error or [entry_id.decode() for entry_id in mine])
        else:
            out.append(replies[position])
            position += 1
    for i, (waiter, reply) in enumerate(zip(group, out, strict=True)):
        if isinstance(reply, redis.exceptions.NoScriptError):
            # A Redis that lost its script cache (restarted, replaced) ran nothing of this
            # request: load the script and run the request again, on its own.
            client.script_load(REMEMBER_AND_APPEND)
            retry = client.pipeline(transaction=False)
            _queue_script(retry, stream, counter, waiter)
            out[i] = reply = retry.execute(raise_on_error=False)[0]
        if waiter.remember is not None and not isinstance(reply, Exception):
            queued_now, record = reply
            out[i] = parse_record(record, replayed=not queued_now)
    return out


def _queue_script(pipe: redis.client.Pipeline, stream: str, counter: tuple[str, str] | None,
                  waiter: _Waiter) -> None:
    remember = waiter.remember
    args: list = [remember.ttl, remember.fingerprint, remember.received_at, counter[1] if counter else ""]
    for fields in waiter.entries:
        args.append(len(fields))
        for name, value in fields.items():
            args += (name, value)
    pipe.evalsha(_SCRIPT_SHA, 3, remember.key, stream, counter[0] if counter else stream, *args)


class _Waiter:
    __slots__ = ("entries", "nbytes", "remember", "done", "result", "lead")

    def __init__(self, entries: Sequence[dict], nbytes: int, remember: Remember | None) -> None:
        self.entries, self.nbytes, self.remember, self.done = entries, nbytes, remember, threading.Event()
        self.result: list[str] | Queued | BaseException | None = None
        self.lead = False


class Appender:
    """`append` for one API process, sharing round trips between concurrent requests.

    While one request's MULTI/EXEC is on the wire, the requests that arrive queue
    up; when it returns, the first of them sends everything queued in one
    MULTI/EXEC and the others wait for its answer. Alone, a request goes straight
    out (no added latency); under load, Redis sees a fraction of the round trips
    and each process saves the socket and redis-py work they cost, the largest
    part of ingest's CPU (see docs/performance.md). A group is all-or-nothing, so
    every request in it gets either its ids or the same error (503). Groups are
    capped (entries and request bytes) so one transaction stays small and quick.
    """

    def __init__(self, client: redis.Redis, stream: str, counter: tuple[str, str] | None = None,
                 max_entries: int = 2000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.client, self.stream, self.counter = client, stream, counter
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False

    def append(self, entries: Sequence[dict], nbytes: int = 0) -> list[str]:
        """Queue the entries; returns their ids."""
        return self._submit(_Waiter(entries, nbytes, None))

    def append_once(self, entries: Sequence[dict], remember: Remember, nbytes: int = 0) -> Queued:
        """Queue the entries unless `remember.key` was used already; either way, the answer."""
        return self._submit(_Waiter(entries, nbytes, remember))

    def _submit(self, me: _Waiter):
        with self._lock:
            self._queue.append(me)
            if not self._busy:
                self._busy = me.lead = True
        if not me.lead:
            try:
                me.done.wait()
            except BaseException:  # this request was killed while queued: leave no trace
                self._abandon(me)
                raise
        if me.lead:
            self._send_queued()
        if isinstance(me.result, BaseException):
            raise me.result
        return me.result

    def _abandon(self, me: _Waiter) -> None:
        with self._lock:
            if me in self._queue:
                self._queue.remove(me)
            if me.lead:  # promoted as it died: pass the turn on
                self._hand_over()

    def _hand_over(self) -> None:
        """With the lock held: wake the next queued request to send, or go idle."""
        if self._queue:
            self._queue[0].lead = True
            self._queue[0].done.set()
        else:
            self._busy = False

    def _send_queued(self) -> None:
        group: list[_Waiter] = []
        try:
            with self._lock:
                entries = nbytes = 0
                while self._queue:
                    head = self._queue[0]
                    if group and (entries + len(head.entries) > self.max_entries
                                  or nbytes + head.nbytes > self.max_bytes):
                        break
                    group.append(self._queue.pop(0))
                    entries, nbytes = entries + len(head.entries), nbytes + head.nbytes
            try:
                for waiter, result in zip(group, _send(self.client, self.stream, self.counter, group), strict=True):
                    waiter.result = result
            except Exception as exc:  # every request of the group gets the error (and answers 503)
                for waiter in group:
                    waiter.result = exc
        finally:
            for waiter in group:
                if waiter.result is None:  # the sender itself was killed
                    waiter.result = redis.ConnectionError("interrupted while sending to Redis")
            with self._lock:
                self._hand_over()
            for waiter in group:
                waiter.done.set()


