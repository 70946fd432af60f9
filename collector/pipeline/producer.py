"""Adding accepted logs to the stream: one MULTI/EXEC per request, or per group of
concurrent requests (Appender).

Adding never trims (the seed's MAXLEN dropped backlog that had not been stored
yet); only pipeline.trim removes entries, and only acknowledged ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import redis

# Queues more commands on the transaction that adds `n` entries (the accepted
# counter, say), so they commit with the entries at no extra round trip.
AlsoQueue = Callable[[redis.client.Pipeline, int], None]


def append(client: redis.Redis, stream: str, entries: Sequence[dict], also: AlsoQueue | None = None) -> list[str]:
    """XADD each entry (and whatever `also` queues) in one round trip; returns the ids in order.

    MULTI/EXEC makes the batch all-or-nothing: if Redis refuses (out of memory), no
    entry is added, so a client that retries after our 503 cannot create duplicates.
    """
    return _append_groups(client, stream, [entries], also)[0]


def _append_groups(client: redis.Redis, stream: str, groups: Sequence[Sequence[dict]],
                   also: AlsoQueue | None) -> list[list[str]]:
    pipe = client.pipeline(transaction=True)
    total = 0
    for entries in groups:
        for fields in entries:
            pipe.xadd(stream, fields)
        total += len(entries)
    if also is not None:
        also(pipe, total)
    ids = [entry_id.decode() for entry_id in pipe.execute()[:total]]
    out, start = [], 0
    for entries in groups:
        out.append(ids[start:start + len(entries)])
        start += len(entries)
    return out


class _Waiter:
    __slots__ = ("entries", "nbytes", "done", "ids", "error", "lead")

    def __init__(self, entries: Sequence[dict], nbytes: int) -> None:
        self.entries, self.nbytes, self.done = entries, nbytes, threading.Event()
        self.ids: list[str] | None = None
        self.error: BaseException | None = None
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

    def __init__(self, client: redis.Redis, stream: str, also: AlsoQueue | None = None, max_entries: int = 2000,
                 max_bytes: int = 4 * 1024 * 1024) -> None:
        self.client, self.stream, self.also = client, stream, also
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False

    def append(self, entries: Sequence[dict], nbytes: int = 0) -> list[str]:
        me = _Waiter(entries, nbytes)
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
        if me.error is not None:
            raise me.error
        return me.ids

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
                results = _append_groups(self.client, self.stream, [w.entries for w in group], self.also)
                for waiter, ids in zip(group, results, strict=True):
                    waiter.ids = ids
            except Exception as exc:  # every request of the group gets the error (and answers 503)
                for waiter in group:
                    waiter.error = exc
        finally:
            for waiter in group:
                if waiter.ids is None and waiter.error is None:  # the sender itself was killed
                    waiter.error = redis.ConnectionError("interrupted while sending to Redis")
            with self._lock:
                self._hand_over()
            for waiter in group:
                waiter.done.set()


