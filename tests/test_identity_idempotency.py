"""Idempotency-Key: a request is queued at most once, and its repeats get its answer."""

from __future__ import annotations

import threading

import pytest

from collector.pipeline import counters


def batch(n: int = 3, device: str = "dev-1") -> dict:
    return {"logs": [{"device_id": device, "log_level": "INFO", "message": f"m{i}"} for i in range(n)]}


def post(client, path: str, body: dict, key: str | None, **kwargs):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(path, json=body, headers=headers, **kwargs)


def accepted(redis_client, settings) -> int:
    key, field = counters.accepted_counter(settings)
    return int(redis_client.hget(key, field) or 0)


def test_a_repeat_gets_the_same_answer_and_queues_nothing(client, redis_client, settings):
    first = post(client, "/api/logs/batch", batch(), "k-1")
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = post(client, "/api/logs/batch", batch(), "k-1")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert redis_client.xlen(settings.stream) == 3 and accepted(redis_client, settings) == 3


def test_the_same_logs_spelled_differently_are_the_same_request(client, redis_client, settings):
    body = '{"device_id": "dev-1", "log_level": "INFO", "message": "m", "log_data": {"a": 1, "b": 2}}'
    respelled = '{"log_data":{"b":2,"a":1},"message":"m","log_level":"INFO","device_id":"dev-1"}'
    first = client.post("/api/log", data=body, content_type="application/json", headers={"Idempotency-Key": "k"})
    again = client.post("/api/log", data=respelled, content_type="application/json",
                        headers={"Idempotency-Key": "k"})
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["message_id"] == first.get_json()["message_id"]
    assert redis_client.xlen(settings.stream) == 1


def test_a_key_reused_for_other_logs_is_a_422_naming_the_header(client, redis_client, settings):
    post(client, "/api/logs/batch", batch(3), "k-2")
    response = post(client, "/api/logs/batch", batch(4), "k-2")
    assert response.status_code == 422
    body = response.get_json()
    assert body["error"] == "idempotency_key_reused" and "Idempotency-Key" in body["fields"]
    # the same body sent to the other endpoint is another request too
    assert post(client, "/api/log", batch(1)["logs"][0], "k-2").status_code == 422
    assert redis_client.xlen(settings.stream) == 3


@pytest.mark.parametrize("key", ["", "x" * 256, "with space", "caf\u00e9", "tab\there"])
def test_invalid_keys_are_a_422_and_queue_nothing(client, redis_client, settings, key):
    response = client.post("/api/log", json=batch(1)["logs"][0], headers={"Idempotency-Key": key})
    assert response.status_code == 422 and "Idempotency-Key" in response.get_json()["fields"]
    assert redis_client.xlen(settings.stream) == 0


def test_keys_of_255_visible_characters_are_accepted(client):
    assert post(client, "/api/log", batch(1)["logs"][0], "~" * 255).status_code == 200


def test_refused_requests_are_not_remembered(client, redis_client, settings):
    bad = {"logs": [{"device_id": "dev-1", "log_level": "LOUD", "message": "m"}]}
    assert post(client, "/api/logs/batch", bad, "k-3").status_code == 422
    response = post(client, "/api/logs/batch", batch(2), "k-3")
    assert response.status_code == 200 and "Idempotent-Replayed" not in response.headers


def test_keys_are_scoped_by_device(client, redis_client, settings):
    assert post(client, "/api/logs/batch", batch(2, "dev-a"), "same").status_code == 200
    response = post(client, "/api/logs/batch", batch(2, "dev-b"), "same")
    assert response.status_code == 200 and "Idempotent-Replayed" not in response.headers
    assert redis_client.xlen(settings.stream) == 4


def test_concurrent_repeats_store_one_copy_and_all_get_its_answer(app, redis_client, settings):
    start = threading.Barrier(16)
    answers = []

    def send() -> None:
        client = app.test_client()
        start.wait()
        answers.append(post(client, "/api/logs/batch", batch(5), "burst"))

    threads = [threading.Thread(target=send) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [a.status_code for a in answers] == [200] * 16
    assert sum("Idempotent-Replayed" not in a.headers for a in answers) == 1
    assert len({tuple(a.get_json()["message_ids"]) for a in answers}) == 1
    assert redis_client.xlen(settings.stream) == 5 and accepted(redis_client, settings) == 5


def test_a_redis_that_lost_its_scripts_still_answers(client, redis_client, settings):
    redis_client.script_flush()
    assert post(client, "/api/logs/batch", batch(2), "after-flush").status_code == 200
    assert post(client, "/api/logs/batch", batch(2), "after-flush").headers["Idempotent-Replayed"] == "true"
    assert redis_client.xlen(settings.stream) == 2


def test_the_answer_is_remembered_for_the_ttl_and_compactly(client, redis_client, settings):
    post(client, "/api/logs/batch", batch(5), "k-ttl")
    [record] = list(redis_client.scan_iter(match=f"{settings.key_prefix}idem:*"))
    assert 0 < redis_client.ttl(record) <= settings.idempotency_ttl
    assert len(redis_client.get(record)) < 100  # fingerprint, time and "<first id>+5", not five ids
    assert redis_client.memory_usage(record) < 400


def test_a_failure_after_the_transaction_fails_only_its_own_request(redis_client, settings, monkeypatch):
    """Redis lost its scripts and reloading fails: the scripted request gets the error,
    the plain one in the same MULTI/EXEC, whose logs are queued, still gets its ids."""
    import redis as redis_lib

    from collector.pipeline.admission import Admission, Remember
    from collector.pipeline.producer import _send, _Waiter

    def entries(n):
        return [{b"d": b"dev", b"l": b"INFO", b"m": f"m{i}".encode()} for i in range(n)]

    redis_client.script_flush()

    def fail(*args, **kwargs):
        raise redis_lib.TimeoutError("script load timed out")

    monkeypatch.setattr(redis_client, "script_load", fail)
    admission = Admission(received_at="now", remember=Remember(key=settings.key("idem:x"), fingerprint="f", ttl=60))
    plain, scripted = _send(redis_client, settings.stream, counters.accepted_counter(settings),
                            [_Waiter(entries(3), 0, None), _Waiter(entries(2), 0, admission)])
    assert isinstance(plain, list) and len(plain) == 3
    assert isinstance(scripted, redis_lib.TimeoutError)
    assert redis_client.xlen(settings.stream) == 3 and accepted(redis_client, settings) == 3
