"""Stream shards on one Redis (STREAM_SHARDS=4): where ingest puts logs, the drain of each
shard, the totals, keys, idempotency across shards and back-pressure. The same code on
a Redis Cluster: tests/test_redis_cluster.py."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections import Counter

import pytest
from celery import current_app

import collector.keys
from collector.core.settings import SettingsError
from collector.pipeline import codec, keyring, layout, shards
from collector.pipeline.drain import drain_for
from tasks import resources
from tasks.celery_app import make_celery
from tests.test_console_browser import make_key

SHARDS = 4


@pytest.fixture
def sharded(settings):
    return dataclasses.replace(settings, stream_shards=SHARDS)


def devices_per_shard(settings, per_shard: int = 2) -> dict[int, list[str]]:
    """Device ids, `per_shard` of them falling in each shard."""
    found: dict[int, list[str]] = {i: [] for i in range(settings.stream_shards)}
    n = 0
    while any(len(v) < per_shard for v in found.values()):
        device = f"dev-{n}"
        if len(found[shards.index_of(settings, device)]) < per_shard:
            found[shards.index_of(settings, device)].append(device)
        n += 1
    return found


def stream_devices(redis_client, shard) -> list[tuple[str, str]]:
    """(entry id, device id) of every entry of one shard's stream."""
    return [(entry_id.decode(), codec.decode_entry(shard.stream, entry_id, fields)[2])
            for entry_id, fields in redis_client.xrange(shard.stream)]


def drain_all(redis_client, db, settings) -> int:
    stored = 0
    for shard in shards.shards(settings):
        while True:
            results = drain_for(redis_client, db, shard, "c1")
            stored += sum(r.inserted for r in results)
            if not results[-1].full:
                break
    return stored


def test_one_shard_on_a_plain_redis_keeps_every_key_as_it_was(settings):
    assert shards.shards(settings) == (settings,)
    assert settings.stream == settings.key_prefix + "logs:stream"
    assert settings.local_key("counters") == settings.key("counters")


def test_shard_keys_share_their_stream_hash_tag_and_spread_over_the_slots(sharded):
    from redis.crc import key_slot
    slots = []
    for shard in shards.shards(sharded):
        slot = key_slot(shard.stream.encode())
        assert key_slot(shard.local_key("counters").encode()) == slot
        assert key_slot(f"{shard.stream}:epoch".encode()) == slot
        slots.append(slot)
    # One shard in each quarter of the slots: on a 4-master cluster, one per master.
    assert [slot * SHARDS // 16384 for slot in slots] == list(range(SHARDS))


def test_a_batch_goes_to_its_devices_shards_and_the_ids_answer_in_request_order(sharded, db, make_app,
                                                                                 redis_client):
    devices = devices_per_shard(sharded)
    order = [d for i in range(2) for shard in devices.values() for d in shard[i:i + 1]] * 3
    client = make_app(sharded).test_client()
    answer = client.post("/api/logs/batch", json={"logs": [
        {"device_id": d, "log_level": "INFO", "message": f"m{n}"} for n, d in enumerate(order)]})
    assert answer.status_code == 200, answer.json
    ids = answer.json["message_ids"]
    placed = {}
    for index, shard in enumerate(shards.shards(sharded)):
        for entry_id, device in stream_devices(redis_client, shard):
            assert shards.index_of(sharded, device) == index
            placed.setdefault(device, []).append(entry_id)
    # Each device's logs, in request order, got the ids its shard's XADDs gave them.
    for device in set(order):
        assert [ids[n] for n, d in enumerate(order) if d == device] == placed[device]

    assert drain_all(redis_client, db, sharded) == len(order)
    stats = client.get("/api/stats").json["pipeline"]
    assert stats["accepted"] == stats["persisted"] == len(order)
    assert stats["pending"] == stats["lag"] == 0 and len(stats["shards"]) == SHARDS
    by_device = Counter(d for (d,) in db.execute("SELECT device_id FROM logs"))
    assert by_device == Counter(order)


def test_each_shard_drains_under_its_own_group_and_a_skewed_load_leaves_none_behind(sharded, db, make_app,
                                                                                     redis_client):
    devices = devices_per_shard(sharded, 1)
    hot = devices[0][0]
    client = make_app(sharded).test_client()
    logs = [{"device_id": hot, "log_level": "INFO", "message": f"hot {n}"} for n in range(600)]
    logs += [{"device_id": d[0], "log_level": "INFO", "message": f"cold {n}"}
             for n in range(200) for d in list(devices.values())[1:]]
    for start in range(0, len(logs), 100):
        assert client.post("/api/logs/batch", json={"logs": logs[start:start + 100]}).status_code == 200
    for shard in shards.shards(sharded):
        assert redis_client.xlen(shard.stream) > 0
    # Each shard's backlog on /metrics, beside the totals; /health sees the oldest of any shard.
    metrics = client.get("/metrics").get_data(as_text=True)
    backlogs = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                if line.startswith("collector_shard_backlog{")]
    assert backlogs == [600.0, 200.0, 200.0, 200.0], backlogs
    assert any(line.startswith("collector_stream_lag{") and line.endswith(" 1200.0") for line in metrics.splitlines())
    assert client.get("/health").json["oldest_unstored_age_seconds"] is not None
    assert drain_all(redis_client, db, sharded) == len(logs)
    for shard in shards.shards(sharded):
        [group] = redis_client.xinfo_groups(shard.stream)
        assert group["lag"] == 0 and group["pending"] == 0 and group["entries-read"] > 0, shard.stream


def test_a_key_works_on_every_shard_and_its_revocation_too(sharded, db, make_app, redis_client, monkeypatch):
    sharded = dataclasses.replace(sharded, auth_enabled=True)
    secret = make_key(sharded, "device", prefix="dev-")
    client = make_app(sharded).test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    batch = {"logs": [{"device_id": d, "log_level": "INFO", "message": "x"}
                      for shard in devices_per_shard(sharded).values() for d in shard]}
    assert client.post("/api/logs/batch", json=batch, headers=headers).status_code == 200
    key_id = keyring.key_id_of(secret)
    # Each shard's admission script checks the copy beside its stream, and records the use there.
    assert [redis_client.hexists(keyring.registry_key(s), key_id) for s in shards.shards(sharded)] == [True] * SHARDS
    assert [k for k, _ in keyring.recent_uses(redis_client, sharded)] == [key_id]

    # Revoked as an operator does: `python -m collector.keys revoke`, with the deployment's settings.
    for name, value in (("REDIS_URL", sharded.redis_url), ("DATABASE_URL", sharded.database_url),
                        ("KEY_PREFIX", sharded.key_prefix), ("STREAM_SHARDS", str(SHARDS))):
        monkeypatch.setenv(name, value)
    assert collector.keys.main(["revoke", key_id]) == 0
    assert not any(redis_client.hexists(keyring.registry_key(s), key_id) for s in shards.shards(sharded))
    answer = client.post("/api/logs/batch", json=batch, headers=headers)  # the admission script sees it at once
    assert answer.status_code == 401, answer.json


def test_a_retry_after_a_shard_refused_stores_each_log_once_with_an_idempotency_key(sharded, db, make_app,
                                                                                     redis_client):
    """A request over two shards whose second shard is over its rate limit: the first
    shard's part is queued, the answer is the 429. The retry with the same key is answered
    from the first shard's record and queues the second's part: each log once."""
    sharded = dataclasses.replace(sharded, rate_limit_per_device=50.0, rate_limit_burst=10)
    devices = devices_per_shard(sharded, 1)
    calm, busy = devices[0][0], devices[1][0]
    client = make_app(sharded).test_client()
    assert client.post("/api/logs/batch", json={"logs": [
        {"device_id": busy, "log_level": "INFO", "message": "fills the bucket"}] * 10}).status_code == 200
    body = {"logs": [{"device_id": calm, "log_level": "INFO", "message": "calm"},
                     {"device_id": busy, "log_level": "INFO", "message": "busy"}]}
    refused = client.post("/api/logs/batch", json=body, headers={"Idempotency-Key": "k-1"})
    assert refused.status_code == 429 and "logs[1]" in refused.json["message"], refused.json
    assert redis_client.xlen(shards.shard(sharded, 0).stream) == 1  # the first shard's part went in

    time.sleep(float(refused.headers["Retry-After"]))
    answer = client.post("/api/logs/batch", json=body, headers={"Idempotency-Key": "k-1"})
    assert answer.status_code == 200, answer.json
    assert "Idempotent-Replayed" not in answer.headers  # half of it was new
    again = client.post("/api/logs/batch", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["message_ids"] == answer.json["message_ids"]

    drain_all(redis_client, db, sharded)
    assert Counter(m for (m,) in db.execute("SELECT message FROM logs")) == {"fills the bucket": 10, "calm": 1,
                                                                            "busy": 1}


def test_back_pressure_counts_the_backlog_of_every_shard(sharded, db, make_app):
    sharded = dataclasses.replace(sharded, backlog_high_water=30, backlog_low_water=10,
                                  backpressure_check_interval=0.01)
    devices = devices_per_shard(sharded, 1)
    client = make_app(sharded).test_client()
    # 10 logs in each of three shards: no shard alone reaches 30, the three do.
    for index in range(3):
        logs = [{"device_id": devices[index][0], "log_level": "INFO", "message": "x"}] * 10
        assert client.post("/api/logs/batch", json={"logs": logs}).status_code == 200
        time.sleep(0.02)
    # The fourth shard holds nothing, and is refused all the same.
    refused = client.post("/api/log", json={"device_id": devices[3][0], "log_level": "INFO", "message": "x"})
    assert refused.status_code == 503 and refused.headers["Retry-After"], refused.json


def test_the_tick_sends_a_task_per_waiting_shard_so_a_busy_shard_holds_up_no_other(sharded, db, make_app,
                                                                                   redis_client):
    """One run per task (DRAIN_TASK_SECONDS=0) and the broker's queue worked through in
    order, as a worker takes it: the cold shard's logs are stored by the second task, while
    the hot shard still has hundreds waiting."""
    s = dataclasses.replace(sharded, drain_task_seconds=0.0)
    devices = devices_per_shard(s, 1)
    api = make_app(s).test_client()
    def post(device: str, word: str, count: int) -> None:
        logs = [{"device_id": device, "log_level": "INFO", "message": f"{word} {n}"} for n in range(count)]
        assert api.post("/api/logs/batch", json={"logs": logs}).status_code == 200

    for _ in range(4):
        post(devices[0][0], "hot", 100)
    post(devices[2][0], "cold", 5)

    previous = current_app._get_current_object()
    app = make_celery(s)
    app.loader.import_default_modules()
    queue = f"{s.key_prefix}{s.celery_queue}"
    try:
        assert (app.tasks["tasks.drain.drain_tick"].apply(kwargs={"tick": True}, throw=True).get()
                == "sent drain_stream for shards 0 (400 waiting), 2 (5 waiting)")
        results = []
        while message := redis_client.rpop(queue):  # kombu LPUSHes: the oldest message is last
            _, kwargs, _ = json.loads(base64.b64decode(json.loads(message)["body"]))
            results.append(app.tasks["tasks.drain.drain_stream"].apply(kwargs=kwargs, throw=True).get())
            if len(results) == 2:
                cold = db.execute("SELECT count(*) FROM logs WHERE message LIKE 'cold %%'").fetchone()[0]
    finally:
        resources.close_backends()
        previous.set_current()
    assert results[:2] == ["shard 0: stored 100 of 100 (new), more waiting", "shard 2: stored 5 of 5 (new)"]
    assert cold == 5
    assert results[-1] == "shard 0: idle" and len(results) == 6  # four full runs, then an empty one
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 405


def test_a_change_of_shards_waits_for_the_old_streams_to_empty_and_brings_the_keys_along(settings, sharded, db,
                                                                                          make_app, redis_client):
    """Started with STREAM_SHARDS=4 while the one stream of before still holds entries, a
    process refuses to start, naming the setting; once they are stored it starts, records
    its layout, and its new shards know the keys made before (no 401 until a sync)."""
    keyed = dataclasses.replace(settings, auth_enabled=True)
    secret = make_key(keyed, "device", prefix="dev-")  # made with one shard: one registry copy
    one = make_app(keyed).test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    assert one.post("/api/logs/batch", headers=headers, json={"logs": [
        {"device_id": f"dev-{n}", "log_level": "INFO", "message": "before"} for n in range(8)]}).status_code == 200

    four = dataclasses.replace(sharded, auth_enabled=True)
    with pytest.raises(SettingsError, match=r"STREAM_SHARDS=4 .* 8 accepted logs still wait .* STREAM_SHARDS=1"):
        make_app(four)
    assert drain_all(redis_client, db, settings) == 8
    api = make_app(four).test_client()
    assert redis_client.get(layout.layout_key(four)) == b"4"
    batch = {"logs": [{"device_id": d, "log_level": "INFO", "message": "after"}
                      for shard in devices_per_shard(four).values() for d in shard]}
    assert api.post("/api/logs/batch", json=batch, headers=headers).status_code == 200
    assert drain_all(redis_client, db, four) == len(batch["logs"])
    # And back: one stream again, once the four are empty.
    make_app(keyed)
    assert redis_client.get(layout.layout_key(keyed)) == b"1"
