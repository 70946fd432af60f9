"""Live tails with STREAM_SHARDS=4, in-process against the real Redis and PostgreSQL: logs
are posted through the app (so each lands in its device's shard) and stored by the drain's
own code, one shard at a time; the tails read them as tests/test_tail.py's do."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from collector.pipeline import shards
from collector.pipeline.drain import drain_batch
from collector.store.positions import Position, Stored
from collector.web import tail as tail_module
from collector.web import tail_shards
from collector.web.tail_poller import Poller
from tests.test_tail import Sse

SHARDS = 4


@pytest.fixture
def tail_settings(settings):
    return dataclasses.replace(settings, stream_shards=SHARDS, tail_heartbeat_seconds=0.1, tail_poll_interval=0.02)


@pytest.fixture
def app(tail_settings, db, make_app):
    app = make_app(tail_settings)
    yield app
    if hub := app.extensions.get("collector.tail"):
        hub.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def devices(tail_settings) -> list[str]:
    """Two devices per shard, in shard order."""
    found: dict[int, list[str]] = {i: [] for i in range(SHARDS)}
    n = 0
    while any(len(v) < 2 for v in found.values()):
        device = f"dev-{n}"
        if len(found[shards.index_of(tail_settings, device)]) < 2:
            found[shards.index_of(tail_settings, device)].append(device)
        n += 1
    return [d for i in range(SHARDS) for d in found[i]]


def post(client, devices: list[str], tag: str, per_device: int = 2) -> list[tuple[str, str]]:
    """One batch with `per_device` logs of each device, interleaved; returns (device, message)s."""
    logs = [(d, f"{tag}{k}-{d}") for k in range(per_device) for d in devices]
    response = client.post("/api/logs/batch", json={"logs": [
        {"device_id": d, "log_level": "INFO", "message": m} for d, m in logs]})
    assert response.status_code == 200, response.get_data(as_text=True)
    return logs


def drain(redis_client, db, settings, order=range(SHARDS)) -> None:
    for index in order:
        while drain_batch(redis_client, db, shards.shard(settings, index), "c1").read:
            pass


def pairs(events) -> list[tuple[str, str]]:
    return [(data["device_id"], data["message"]) for _, data in events]


def assert_each_once_in_order(received: list[tuple[str, str]], posted: list[tuple[str, str]]) -> None:
    """Every posted log once and nothing else, and each device's logs in the order posted."""
    assert Counter(received) == Counter(posted) and len(set(received)) == len(received)
    for device in {d for d, _ in posted}:
        assert [m for d, m in received if d == device] == [m for d, m in posted if d == device], device


def test_ids_name_each_shard_and_read_back(tail_settings):
    s = tail_settings
    tags = shards.tags(SHARDS)
    ids = tail_shards.Ids(s, [tail_shards.Lane(i, tags[i], None, None, None, None, None) for i in range(SHARDS)])
    at = [Position("5e4c4a11", 1764547200123, 0), Position("a1b2c3d4", 1764547200223, 3),
          Position("00ff", 1764540000000, 2**64 - 1), Position("b", 1764547200123, 1)]
    text = ids.text(at)
    assert text.startswith(f"{SHARDS}.") and text.count("@") == SHARDS
    assert tail_shards.parse(s, text).positions == dict(zip(tags, at, strict=True))
    # A batch's ids: the lane's part per row, the others' as they are; the same text as ids.text.
    row = Stored((1764547200999, 7), {})
    of_rows = ids.of_rows(at, 1, "a1b2c3d4")
    assert of_rows(row).decode() == ids.text([at[0], Position("a1b2c3d4", 1764547200999, 7), *at[2:]])
    early = Stored((1764530000000, 0), {})  # below every other part: the base moves
    assert of_rows(early).decode() == ids.text([at[0], Position("a1b2c3d4", *early.entry), *at[2:]])
    for bad in ("4.", "4.X.s0_1@e", "4.1.s0_1@e.s0_2@e", "1.1.s0_1@e", "4.1.s0_1@e.s1_1@e.s2_1@e.s3_1@e.s4_1@e",
                "4.1.s0_1@e,", "4.1.s0-1@e"):
        with pytest.raises(ValueError):
            tail_shards.parse(s, bad)
    # Unsharded, only today's ids.
    with pytest.raises(ValueError):
        tail_shards.parse(dataclasses.replace(s, stream_shards=1), text)


def test_a_fleet_tail_gets_every_log_of_every_shard_once(client, redis_client, tail_settings, db, devices):
    s = tail_settings
    tail = Sse(client.get("/api/logs/tail", buffered=False))
    assert len(tail_shards.parse(s, tail.opening["id"]).positions) == SHARDS
    posted = post(client, devices, "a")
    drain(redis_client, db, s, order=reversed(range(SHARDS)))
    posted += post(client, devices, "b", per_device=3)
    drain(redis_client, db, s)
    events = tail.events(len(posted))
    assert_each_once_in_order(pairs(events), posted)
    assert {shards.index_of(s, d) for d, _ in posted} == set(range(SHARDS))
    for event_id, _ in events:
        assert set(tail_shards.parse(s, event_id).positions) == set(shards.tags(SHARDS))
    tail.quiet(3)  # and nothing twice
    tail.close()


def test_a_device_tail_reads_its_shard_alone(app, client, redis_client, tail_settings, db, devices):
    s = tail_settings
    device = devices[5]
    tail = Sse(client.get(f"/api/logs/{device}/tail", buffered=False))
    posted = post(client, devices, "a", per_device=3)
    drain(redis_client, db, s)
    events = tail.events(3)
    assert pairs(events) == [(d, m) for d, m in posted if d == device]
    mine = shards.index_of(s, device)
    assert list(tail_shards.parse(s, events[-1][0]).positions) == [shards.tags(SHARDS)[mine]]
    pollers = app.extensions["collector.tail"].pollers
    assert [p.position is not None for p in pollers] == [i == mine for i in range(SHARDS)]  # polls its shard only
    # Two devices of two shards: those two shards.
    pair = [devices[0], devices[7]]
    both = Sse(client.get("/api/logs/tail", query_string={"device_id": pair}, buffered=False))
    posted = post(client, devices, "b")
    drain(redis_client, db, s)
    events = both.events(4)
    assert_each_once_in_order(pairs(events), [p for p in posted if p[0] in pair])
    assert list(tail_shards.parse(s, events[-1][0]).positions) == [shards.tags(SHARDS)[0], shards.tags(SHARDS)[3]]
    assert pairs(tail.events(2)) == [(d, m) for d, m in posted if d == device]
    for sse in (tail, both):
        sse.quiet(3)
        sse.close()


def test_resume_after_a_disconnect_sends_exactly_the_rest_of_every_shard(client, redis_client, tail_settings, db,
                                                                         devices, monkeypatch):
    s = tail_settings
    monkeypatch.setattr(tail_module, "CATCH_UP_PAGE", 2)  # catch-up in several pages per shard
    keeper = Sse(client.get("/api/logs/tail", buffered=False))  # keeps every shard's poller running
    first = Sse(client.get("/api/logs/tail", buffered=False))
    posted = post(client, devices, "a", per_device=3)
    drain(redis_client, db, s)
    keeper.events(len(posted))
    received = pairs(first.events(10))
    resume_at = first.last_id
    first.close()  # the rest of what it was sent is lost with the connection
    posted += post(client, devices, "b")
    drain(redis_client, db, s, order=reversed(range(SHARDS)))
    keeper.events(2 * len(devices))
    again = Sse(client.get("/api/logs/tail", headers={"Last-Event-ID": resume_at}, buffered=False))
    assert again.opening["id"] == resume_at
    # The pollers move on while it catches up.
    posted += post(client, devices, "c", per_device=1)
    drain(redis_client, db, s)
    rest = pairs(again.events(len(posted) - len(received)))
    assert not set(rest) & set(received)
    assert_each_once_in_order(received + rest, posted)
    again.quiet(3)
    # The same id for one device (?last_event_id=): the rest of that device's shard, for it.
    device = devices[2]
    one = Sse(client.get(f"/api/logs/{device}/tail", query_string={"last_event_id": resume_at}, buffered=False))
    expected = [p for p in posted if p[0] == device and p not in received]
    assert pairs(one.events(len(expected))) == expected
    one.quiet(3)
    # An unsharded id (from before STREAM_SHARDS was set): every shard from its start.
    old = Sse(client.get("/api/logs/tail", headers={"Last-Event-ID": "1-0@0ld"}, buffered=False))
    assert_each_once_in_order(pairs(old.events(len(posted))), posted)
    for sse in (keeper, again, one, old):
        sse.close()


def test_counter_proof_a_shard_not_polled_is_missed(client, redis_client, tail_settings, db, devices, monkeypatch):
    """What the tests above would catch: with one shard's poller not reading, a fleet tail
    lacks exactly that shard's logs, and the check fails."""
    s = tail_settings
    skipped = shards.shard(s, 2).stream
    tick = Poller.tick
    monkeypatch.setattr(Poller, "tick", lambda poller: False if poller.stream == skipped else tick(poller))
    tail = Sse(client.get("/api/logs/tail", buffered=False))
    posted = post(client, devices, "a")
    drain(redis_client, db, s)
    missed = [p for p in posted if shards.index_of(s, p[0]) == 2]
    received = pairs(tail.events(len(posted) - len(missed)))
    tail.quiet(5)
    assert missed and Counter(received) == Counter(posted) - Counter(missed)
    with pytest.raises(AssertionError):
        assert_each_once_in_order(received, posted)
    tail.close()


def test_a_bad_sharded_id_is_a_422(client):
    for bad in ("12", "4.1.s0_1@", "4.1.s0_1@e.s0_1@e", "1-2@ab cd"):
        response = client.get("/api/logs/tail", headers={"Last-Event-ID": bad})
        assert response.status_code == 422, bad
        assert set(response.get_json()["fields"]) == {"last_event_id"}
