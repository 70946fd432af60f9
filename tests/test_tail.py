"""Live tails in-process, against the real Redis and PostgreSQL: the watermark, the poller,
catch-up and resume, with entries stored by the drain's own code (tests/test_tail_e2e.py
runs them through Gunicorn and nginx).

The app's tails run as generators in this (unpatched) process: while the test waits for
the next SSE block, gevent runs the poller's greenlet, so everything between two reads
of the stream happens in the order the test writes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import pytest

from collector.pipeline import codec, counters, producer
from collector.pipeline.drain import drain_batch
from collector.pipeline.group import ensure_group, epoch_key, parse_id, stream_identity
from collector.pipeline.tail_slots import TailSlots, slots_key
from collector.pipeline.watermark import stored_up_to
from collector.store import logs as storage
from collector.store import positions
from collector.store.positions import Position, Stored
from collector.web import tail as tail_module
from collector.web.schemas import LogOut, log_schema
from collector.web.tail_poller import MAX_BUFFERED_ROWS, Gap, Poller, Rows, Subscriber

SCHEMA = log_schema(10_000, 16_384)


@pytest.fixture
def tail_settings(settings):
    # Heartbeats every 0.1 s: a test reading the stream gets a block at least that often.
    return dataclasses.replace(settings, tail_heartbeat_seconds=0.1, tail_poll_interval=0.02)


@pytest.fixture
def app(tail_settings, db, make_app):
    app = make_app(tail_settings)
    yield app
    if hub := app.extensions.get("collector.tail"):
        hub.poller.close()


@pytest.fixture
def client(app):
    return app.test_client()


def log(device="dev-1", level="INFO", message="m", **data) -> dict:
    return {"device_id": device, "log_level": level, "message": message, **({"log_data": data} if data else {})}


def queue(redis_client, settings, *logs: dict) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    return producer.append(redis_client, settings.stream, [codec.encode_entry(SCHEMA.load(x), now) for x in logs],
                           counters.accepted_counter(settings))


def drain(redis_client, db, settings) -> None:
    while drain_batch(redis_client, db, settings, "c1").read:
        pass


def take(redis_client, settings, consumer: str, count: int) -> list:
    """Deliver entries to a consumer without storing them (a drain run in progress)."""
    [[_, entries]] = redis_client.xreadgroup(settings.consumer_group, consumer, {settings.stream: ">"}, count=count)
    return entries


def commit(redis_client, db, settings, entries) -> None:
    """What a drain run does with its entries: insert, commit, then XACK."""
    identity = stream_identity(redis_client, settings.stream, redis_client.get(epoch_key(settings.stream)))
    storage.insert_logs(db, [codec.decode_entry(identity, i, f) for i, f in entries], writer="t")
    redis_client.xack(settings.stream, settings.consumer_group, *[i for i, _ in entries])


class Sse:
    """Reads a tail's stream block by block (each block ends with a blank line)."""

    def __init__(self, response) -> None:
        assert response.status_code == 200, response.get_data(as_text=True)
        self.response, self.chunks, self.buffer = response, iter(response.response), b""
        self.last_id: str | None = None
        self.opening = self.block()

    def block(self) -> dict:
        while b"\n\n" not in self.buffer:
            self.buffer += next(self.chunks)
        raw, self.buffer = self.buffer.split(b"\n\n", 1)
        fields: dict = {"comments": []}
        for line in raw.decode().split("\n"):
            name, _, value = line.partition(": ")
            if name == "":
                fields["comments"].append(value)
            else:
                fields[name] = value
        if "id" in fields:
            self.last_id = fields["id"]  # as an EventSource keeps it, event or not
        return fields

    def events(self, n: int, max_blocks: int = 500) -> list[tuple[str, dict]]:
        """The next n events; heartbeats in between are skipped (up to max_blocks blocks, so
        a tail that never sends fails instead of hanging)."""
        found = []
        for _ in range(max_blocks):
            if len(found) == n:
                return found
            block = self.block()
            if "data" in block:
                found.append((block["id"], json.loads(block["data"])))
        raise AssertionError(f"{len(found)} of {n} events: {found}")

    def quiet(self, blocks: int = 5) -> None:
        """The next few blocks are heartbeats: the poller ticked several times, sending nothing."""
        for _ in range(blocks):
            assert "data" not in self.block()

    def close(self) -> None:
        self.response.close()


def messages(events) -> list[str]:
    return [data["message"] for _, data in events]


def entry(event_id: str) -> tuple[int, int]:
    return Position.parse(event_id).entry


def test_the_watermark_stays_below_the_first_entry_not_yet_stored(redis_client, settings, db):
    assert stored_up_to(redis_client, settings.stream, settings.consumer_group) is None
    ensure_group(redis_client, settings.stream, settings.consumer_group)
    epoch = redis_client.get(epoch_key(settings.stream)).decode()
    assert stored_up_to(redis_client, settings.stream, settings.consumer_group) == Position(epoch, 0, 0)
    first, second, third = queue(redis_client, settings, log(message="1"), log(message="2"), log(message="3"))
    early = take(redis_client, settings, "slow", 1)
    late = take(redis_client, settings, "fast", 2)
    commit(redis_client, db, settings, late)  # the later entries commit first
    below = stored_up_to(redis_client, settings.stream, settings.consumer_group)
    assert below == Position.before(epoch, parse_id(first)) and below.entry < parse_id(first)
    commit(redis_client, db, settings, early)
    assert stored_up_to(redis_client, settings.stream, settings.consumer_group) == Position(epoch, *parse_id(third))
    assert Position.before(epoch, (5, 0)) == Position(epoch, 4, 2**64 - 1)


def test_a_log_committed_after_a_later_one_is_not_skipped(client, redis_client, tail_settings, db):
    s = tail_settings
    ensure_group(redis_client, s.stream, s.consumer_group)
    tail = Sse(client.get("/api/logs/tail", buffered=False))
    queue(redis_client, s, log(message="1"), log(message="2"), log(message="3"))
    early = take(redis_client, s, "slow", 1)
    commit(redis_client, db, s, take(redis_client, s, "fast", 2))
    tail.quiet()  # stored, but after an entry that is not: not sent yet
    commit(redis_client, db, s, early)
    events = tail.events(3)
    assert messages(events) == ["1", "2", "3"]
    assert [entry(i) for i, _ in events] == sorted(entry(i) for i, _ in events)
    tail.close()


def test_a_tail_without_last_event_id_starts_at_the_watermark(client, redis_client, tail_settings, db):
    queue(redis_client, tail_settings, log(message="old"))
    drain(redis_client, db, tail_settings)
    tail = Sse(client.get("/api/logs/dev-1/tail", buffered=False))
    assert tail.opening["retry"] and tail.opening["id"] == tail.last_id  # resumable before any event
    assert tail.response.headers["Content-Type"].startswith("text/event-stream")
    assert tail.response.headers["Cache-Control"] == "no-cache"
    assert tail.response.headers["X-Accel-Buffering"] == "no"
    queue(redis_client, tail_settings, log(message="new"))
    drain(redis_client, db, tail_settings)
    assert messages(tail.events(1)) == ["new"]
    tail.close()


def test_resume_sends_exactly_what_was_missed_while_the_poller_ran_ahead(client, redis_client, tail_settings, db,
                                                                         monkeypatch):
    s = tail_settings
    monkeypatch.setattr(tail_module, "CATCH_UP_PAGE", 2)  # catch-up in several pages, each a chance to yield
    keeper = Sse(client.get("/api/logs/dev-1/tail", buffered=False))  # keeps the poller running
    first = Sse(client.get("/api/logs/dev-1/tail", buffered=False))
    queue(redis_client, s, *[log(message=f"m{i}") for i in range(1, 4)])
    drain(redis_client, db, s)
    keeper.events(3)
    assert messages(first.events(2)) == ["m1", "m2"]
    resume_at = first.last_id
    first.close()  # the client drops; m3 was stored but not sent to it
    queue(redis_client, s, *[log(message=f"m{i}") for i in range(4, 9)], log("dev-2", message="other"))
    drain(redis_client, db, s)
    keeper.events(5)
    # Reconnect: the first page (m3, m4) is read before the answer starts, up to the watermark
    # read then (m8)...
    again = Sse(client.get("/api/logs/dev-1/tail", headers={"Last-Event-ID": resume_at}, buffered=False))
    assert again.opening["id"] == resume_at
    # ...and the poller moves on before the rest is read: the tail reads up to the watermark it
    # saw, then up to the poller's position, and only then takes the poller's batches.
    queue(redis_client, s, log(message="m9"), log(message="m10"))
    drain(redis_client, db, s)
    keeper.events(2)
    queue(redis_client, s, log(message="m11"))
    drain(redis_client, db, s)
    events = again.events(9)
    assert messages(events) == [f"m{i}" for i in range(3, 12)]
    assert [entry(i) for i, _ in events] == sorted({entry(i) for i, _ in events})
    again.quiet(3)  # and nothing twice
    # The same position as ?last_event_id= (curl), for another filter: its own catch-up.
    other = Sse(client.get("/api/logs/tail", query_string={"device_id": "dev-2", "last_event_id": resume_at},
                           buffered=False))
    assert messages(other.events(1)) == ["other"]
    for tail in (keeper, again, other):
        tail.close()


def test_filters_apply_to_the_tail(client, redis_client, tail_settings, db):
    s = tail_settings
    query = {"device_prefix": "pump-", "min_level": "WARNING", "q": "Reset", "data": '{"fw":"1.2"}'}
    tail = Sse(client.get("/api/logs/tail", query_string=query, buffered=False))
    queue(redis_client, s, log("pump-1", "ERROR", "watchdog reset", fw="1.2"),
          log("pump-1", "INFO", "watchdog reset", fw="1.2"),  # level
          log("fan-1", "ERROR", "watchdog reset", fw="1.2"),  # device
          log("pump-2", "CRITICAL", "brownout", fw="1.2"),  # message
          log("pump-2", "WARNING", "RESET by user", fw="1.3"),  # data
          log("pump-2", "WARNING", "RESET by user", fw="1.2", extra=True))
    drain(redis_client, db, s)
    assert messages(tail.events(2)) == ["watchdog reset", "RESET by user"]
    tail.quiet(3)
    tail.close()
    # The same filter for the catch-up, which reads in SQL: the same two.
    again = Sse(client.get("/api/logs/tail", query_string={**query, "last_event_id": tail.opening["id"]},
                           buffered=False))
    assert messages(again.events(2)) == ["watchdog reset", "RESET by user"]
    again.close()


def test_a_new_stream_incarnation_finishes_the_old_one_then_starts_the_new(client, redis_client, tail_settings, db):
    s = tail_settings
    tail = Sse(client.get("/api/logs/dev-1/tail", buffered=False))
    queue(redis_client, s, log(message="a1"))
    drain(redis_client, db, s)
    [(a1, _)] = tail.events(1)
    # Without a chance for the poller to see it: a2 is stored, then Redis is replaced (its
    # stream and epoch gone), and b1 is queued and stored under the new incarnation.
    queue(redis_client, s, log(message="a2"))
    drain(redis_client, db, s)
    redis_client.delete(s.stream, epoch_key(s.stream))
    queue(redis_client, s, log(message="b1"), log(message="b2"))
    drain(redis_client, db, s)
    # A client that already has b1 (from another instance) resumes here, where the poller
    # has not seen the new incarnation yet: it gets b2 alone.
    new_epoch = redis_client.get(epoch_key(s.stream)).decode()
    [(b1_entry,)] = db.execute("SELECT stream_entry_id(received_at, entry_seq) FROM logs WHERE message = 'b1'")
    ahead = Sse(client.get("/api/logs/dev-1/tail", headers={"Last-Event-ID": f"{b1_entry}@{new_epoch}"},
                           buffered=False))
    assert messages(ahead.events(1)) == ["b2"]
    events = tail.events(3)
    assert messages(events) == ["a2", "b1", "b2"]
    old, new, _ = (Position.parse(i).epoch for i, _ in events)
    assert old == Position.parse(a1).epoch != new == new_epoch
    resumed = Sse(client.get("/api/logs/dev-1/tail", headers={"Last-Event-ID": a1}, buffered=False))
    assert messages(resumed.events(3)) == ["a2", "b1", "b2"]
    for sse in (tail, ahead, resumed):
        sse.quiet(2)
        sse.close()


def test_events_carry_exactly_the_json_logout_gives(redis_client, settings, db):
    queue(redis_client, settings, log(message="plain"), log(message="ünïcode ✓", fw="1.2", n=[1, 2.5, None]),
          {**log(message="device time"), "timestamp": "2026-11-30T09:00:00+00:00"},
          {**log(message="offset", deep={"a": {"b": [True, False]}}), "timestamp": "2026-11-30T10:00:00.5+02:00"})
    drain(redis_client, db, settings)
    epoch = redis_client.get(epoch_key(settings.stream)).decode()
    stream = positions.stream_id(db, positions.stream_name(settings.stream, epoch))
    rows = positions.rows_after(db, stream, (0, 0), None, 10)
    assert len(rows) == 4
    events = tail_module.encode(rows, epoch).split(b"\n\n")[:-1]
    for row, event in zip(rows, events, strict=True):
        id_line, data_line = event.split(b"\n")
        assert id_line == b"id: " + Position(epoch, *row.entry).text().encode()
        assert data_line == b"data: " + json.dumps(LogOut().dump(row.log), ensure_ascii=False,
                                                    separators=(",", ":")).encode()


def test_a_bad_position_is_a_422_naming_it(client):
    for bad in ("12", "1-2", "1-2@", "x-1@abc", "1-2@ab cd"):
        response = client.get("/api/logs/dev-1/tail", headers={"Last-Event-ID": bad})
        assert response.status_code == 422, bad
        assert set(response.get_json()["fields"]) == {"last_event_id"}
    assert client.get("/api/logs/dev-1/tail?level=NOPE").status_code == 422
    assert Position.parse("1714564800123-7@5e4c4a11").text() == "1714564800123-7@5e4c4a11"


def test_a_subscriber_the_read_did_not_cover_gets_a_gap(redis_client, settings):
    poller = Poller(redis_client, None, settings.stream, settings.consumer_group, 1.0, lambda: False)
    start, end = Position("e", 1, 0), Position("e", 9, 0)
    pump, fan, anyone = Subscriber(frozenset({"pump"})), Subscriber(frozenset({"fan"})), Subscriber(None)
    rows = [Stored((2, 0), {"device_id": "pump"}), Stored((3, 0), {"device_id": "pump"})]
    for subscriber in (pump, fan, anyone):
        poller.subscribers.add(subscriber)  # as attach() does, without starting the loop
    # A read of pump's rows only, in flight while fan and a fleet-wide tail attached.
    poller._hand_out(start, end, rows, devices=frozenset({"pump"}))
    assert list(pump.items) == [Rows(start, end, rows)]
    assert list(fan.items) == [Gap(end)] and list(anyone.items) == [Gap(end)]


def test_a_subscriber_that_falls_behind_gets_one_gap(redis_client, settings):
    slow = Subscriber(None)
    row = Stored((1, 0), {"device_id": "d"})
    for n in range(MAX_BUFFERED_ROWS + 1):
        slow.push(Rows(Position("e", n, 0), Position("e", n + 1, 0), [row]))
    assert list(slow.items) == [Gap(Position("e", MAX_BUFFERED_ROWS + 1, 0))] and slow.buffered == 0


def test_slots_cap_tails_per_key_and_lapse_when_their_process_died(redis_client, tail_settings):
    s = dataclasses.replace(tail_settings, tail_max_per_key=2)
    slots = TailSlots(redis_client, s)
    assert slots.take("k1", "a") and slots.take("k1", "b")
    assert not slots.take("k1", "c")
    assert slots.take("k2", "c")  # per key
    slots.release("k1", "a")
    assert slots.take("k1", "c") and slots.held("k1") == 2
    # b's process died without releasing it: once its lapse time passed, its slot is free.
    seconds, micros = redis_client.time()
    redis_client.zadd(slots_key(s, "k1"), {"b": seconds * 1000 + micros // 1000 - 1})
    assert slots.take("k1", "d") and slots.held("k1") == 2
    slots.refresh("k1", "d")
    assert redis_client.pttl(slots_key(s, "k1")) > 0
