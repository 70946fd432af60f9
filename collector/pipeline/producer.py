"""Adding accepted logs to the stream: one MULTI/EXEC per request, or per group of
concurrent requests (Appender).

A request that needs more than XADDs (an idempotency key, a credential to check,
rate limits) runs the admission script (pipeline.admission) in the same
transaction instead, so it costs no extra round trip.

Adding never trims (the seed's MAXLEN dropped backlog that had not been stored
yet); only pipeline.trim removes entries, and only acknowledged ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import redis

from collector.pipeline.admission import SCRIPT, Admission


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
          group: Sequence[_Waiter]) -> list[list[str] | Admission | Exception]:
    """One MULTI/EXEC for a group of requests; each gets its ids, its Admission or its error."""
    pipe = client.pipeline(transaction=True)
    plain = 0
    for waiter in group:
        if waiter.admission is None:
            for fields in waiter.entries:
                pipe.xadd(stream, fields)
            plain += len(waiter.entries)
        else:
            waiter.admission.queue(pipe, stream, counter, waiter.entries)
    if plain and counter is not None:
        pipe.hincrby(counter[0], counter[1], plain)
    replies = pipe.execute(raise_on_error=False)
    out: list[list[str] | Admission | Exception] = []
    position = 0
    for waiter in group:
        if waiter.admission is None:
            mine = replies[position:position + len(waiter.entries)]
            position += len(mine)
            error = next((r for r in mine if isinstance(r, Exception)), None)
            out.append(error or [entry_id.decode() for entry_id in mine])
        else:
            out.append(replies[position])
            position += 1
    # The transaction has run: from here on a failure belongs to one request only. The
    # others' logs are queued and counted, and they must get their 200s, not a 503 that
    # would make their devices send them again.
    loaded = False
    for i, (waiter, reply) in enumerate(zip(group, out, strict=True)):
        try:
            if isinstance(reply, redis.exceptions.NoScriptError):
                # A Redis that lost its script cache (restarted, replaced) ran nothing of this
                # request: load the script (once) and run the request again, on its own.
                if not loaded:
                    client.script_load(SCRIPT)
                    loaded = True
                retry = client.pipeline(transaction=False)
                waiter.admission.queue(retry, stream, counter, waiter.entries)
                out[i] = reply = retry.execute(raise_on_error=False)[0]
            if waiter.admission is not None and not isinstance(reply, Exception):
                out[i] = waiter.admission.read(reply)
        except Exception as exc:
            out[i] = exc
    return out


class _Waiter:
    __slots__ = ("entries", "nbytes", "admission", "done", "result", "lead")

    def __init__(self, entries: Sequence[dict], nbytes: int, admission: Admission | None) -> None:
        self.entries, self.nbytes, self.admission, self.done = entries, nbytes, admission, threading.Event()
        self.result: list[str] | Admission | BaseException | None = None
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

    def admit(self, entries: Sequence[dict], admission: Admission, nbytes: int = 0) -> Admission:
        """Run the admission script for the entries; `admission` says what it decided."""
        return self._submit(_Waiter(entries, nbytes, admission))

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


