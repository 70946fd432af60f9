"""The HTTP API against the real Redis and PostgreSQL (in-process Flask client)."""

from __future__ import annotations

import pytest

from collector.pipeline.drain import drain_batch


def log(i: int = 0, device: str = "dev-1", **changes) -> dict:
    return {"device_id": device, "log_level": "INFO", "message": f"message {i}", **changes}


def stream_len(redis_client, settings) -> int:
    return redis_client.xlen(settings.stream)


def test_single_log_is_queued_with_seed_shape(client, redis_client, settings):
    response = client.post("/api/log", json=log(log_data={"temp": 21.5}))
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "queued" and body["message_id"] and body["received_at"]
    [(entry_id, fields)] = redis_client.xrange(settings.stream)
    assert entry_id.decode() == body["message_id"]
    assert fields[b"d"] == b"dev-1" and fields[b"j"] == b'{"temp":21.5}'


def test_batch_is_queued_in_order(client, redis_client, settings):
    response = client.post("/api/logs/batch", json={"logs": [log(i) for i in range(50)]})
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "queued" and body["count"] == 50
    entries = redis_client.xrange(settings.stream)
    assert [e[0].decode() for e in entries] == body["message_ids"]
    assert [e[1][b"m"] for e in entries] == [f"message {i}".encode() for i in range(50)]


BAD_REQUESTS = [
    # (path, kwargs for client.post, status, error code, a word the message or fields must contain)
    ("/api/log", {"data": "{not json", "content_type": "application/json"}, 400, "malformed_json", "JSON"),
    ("/api/log", {"data": "", "content_type": "application/json"}, 400, "empty_body", "empty"),
    ("/api/log", {"data": "device_id=x", "content_type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type", "application/json"),
    ("/api/log", {"data": "{}", "content_type": "text/plain"}, 415, "unsupported_media_type", "text/plain"),
    ("/api/log", {"json": {"log_level": "INFO", "message": "m"}}, 422, "validation_failed", "device_id"),
    ("/api/log", {"json": log(log_level=5)}, 422, "validation_failed", "log_level"),
    ("/api/log", {"json": log(message="x" * 10_001)}, 422, "validation_failed", "message"),
    ("/api/log", {"json": [log()]}, 422, "validation_failed", "_schema"),
    ("/api/log", {"json": log(log_data={"big": "x" * 20_000})}, 422, "validation_failed", "log_data"),
    ("/api/logs/batch", {"json": {"logs": []}}, 422, "validation_failed", "logs"),
    ("/api/logs/batch", {"json": {"logs": [log(), log(timestamp="soon")]}}, 422, "validation_failed", "timestamp"),
    ("/api/logs/batch", {"data": "x" * 1_100_000, "content_type": "application/json"}, 413,
     "request_entity_too_large", ""),
]


@pytest.mark.parametrize("path, kwargs, status, error, word", BAD_REQUESTS)
def test_bad_requests_get_json_errors_and_change_nothing(client, redis_client, settings, db,
                                                         path, kwargs, status, error, word):
    response = client.post(path, **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert body["error"] == error
    assert word in response.get_data(as_text=True)
    assert stream_len(redis_client, settings) == 0
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 0


def test_batch_error_names_each_bad_index(client):
    response = client.post("/api/logs/batch", json={"logs": [log(), log(log_level="NOPE"), log(), log(message="")]})
    assert response.status_code == 422
    assert response.get_json()["fields"] == {
        "logs": {"1": {"log_level": ["Must be one of: DEBUG, INFO, WARNING, ERROR, CRITICAL."]},
                 "3": {"message": ["Length must be between 1 and 10000."]}}}


def test_unknown_path_and_method_are_json(client):
    assert client.get("/nope").get_json()["error"] == "not_found"
    assert client.get("/api/log").get_json()["error"] == "method_not_allowed"


def test_query_reads_newest_first_and_sees_a_new_log_at_once(client, redis_client, settings, db):
    client.post("/api/logs/batch", json={"logs": [log(i, timestamp=f"2026-01-01T00:00:0{i}Z") for i in range(3)]})
    drain_batch(redis_client, db, settings, "c1")
    first = client.get("/api/logs/dev-1?limit=10").get_json()
    assert first["source"] == "database" and first["total"] == 3
    assert [r["message"] for r in first["data"]] == ["message 2", "message 1", "message 0"]
    assert set(first["data"][0]) == {"id", "device_id", "log_level", "message", "log_data", "created_at"}
    assert client.get("/api/logs/dev-1?limit=10").get_json()["source"] == "cache"

    client.post("/api/log", json=log(9))  # no timestamp: received now, so newest
    drain_batch(redis_client, db, settings, "c1")
    after = client.get("/api/logs/dev-1?limit=10").get_json()
    assert after["source"] == "database" and after["total"] == 4
    assert after["data"][0]["message"] == "message 9"


def test_query_validates_device_and_limit(client):
    assert client.get("/api/logs/dev-1?limit=0").status_code == 422
    assert "limit" in client.get("/api/logs/dev-1?limit=5000").get_json()["fields"]
    assert "device_id" in client.get("/api/logs/bad%20id").get_json()["fields"]


def test_stats_agree_with_the_table(client, redis_client, settings, db):
    levels = ["INFO", "ERROR", "INFO", "DEBUG"]
    client.post("/api/logs/batch", json={"logs": [log(i, device=f"d{i}", log_level=lv)
                                                   for i, lv in enumerate(levels)]})
    before = client.get("/api/stats").get_json()
    assert before["pipeline"]["stream_length"] == 4 and before["pipeline"]["lag"] == 4
    drain_batch(redis_client, db, settings, "c1")
    stats = client.get("/api/stats").get_json()
    assert stats["total_logs"] == 4 == db.execute("SELECT count(*) FROM logs").fetchone()[0]
    assert stats["logs_by_level"] == {"DEBUG": 1, "INFO": 2, "WARNING": 0, "ERROR": 1, "CRITICAL": 0}
    assert stats["recent_devices"] == ["d3", "d2", "d1", "d0"]
    assert stats["pipeline"] == {"stream_length": 4, "pending": 0, "lag": 0, "persisted": 4, "accepted": 4,
                                 "dead_lettered": 0, "duplicates_skipped": 0, "rejected": 0, "rejected_by_reason": {},
                                 "logs_expired": 0, "dead_letters_expired": 0, "oldest_unstored_age_seconds": None}


def test_health_reports_both_checks(client):
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200
    assert body["status"] == "healthy" and body["checks"] == {"redis": True, "postgres": True}
    assert body["instance"] == "pytest"
