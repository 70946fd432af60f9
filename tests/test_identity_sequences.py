"""Device sequence numbers: (device_id, boot_id, seq) is stored once whatever path a copy
took, and the gap audit names exactly the numbers that never arrived."""

from __future__ import annotations

import random

import pytest

from collector.pipeline.drain import drain_batch
from collector.pipeline.replay import replay
from collector.store import deadletters, sequences


def numbered(seq: int, boot: str = "boot-a", device: str = "dev-1", message: str | None = None) -> dict:
    return {"device_id": device, "log_level": "INFO", "message": message or f"seq {seq}", "seq": seq,
            "boot_id": boot}


def drain_everything(redis_client, db, settings) -> int:
    """Drain until a run reads nothing; returns the duplicates skipped."""
    duplicates = 0
    for _ in range(1000):
        result = drain_batch(redis_client, db, settings, "c1")
        duplicates += result.duplicates
        if result.read == 0:
            return duplicates
    raise AssertionError("the stream never emptied")


def stored(db, device: str = "dev-1") -> list[tuple]:
    return db.execute("SELECT boot_id, seq, message FROM logs WHERE device_id = %s ORDER BY boot_id, seq",
                      (device,)).fetchall()


def test_the_same_seq_in_two_requests_is_stored_once_and_counted_as_a_duplicate(client, redis_client, settings,
                                                                                  db):
    assert client.post("/api/log", json=numbered(7, message="first copy")).status_code == 200
    assert client.post("/api/logs/batch", json={"logs": [numbered(7, message="second copy"), numbered(8)]}
                       ).status_code == 200
    assert drain_everything(redis_client, db, settings) == 1
    assert stored(db) == [("boot-a", 7, "first copy"), ("boot-a", 8, "seq 8")]
    pipeline = client.get("/api/stats").get_json()["pipeline"]
    assert pipeline["duplicates_skipped"] == 1 and pipeline["persisted"] == 2 and pipeline["accepted"] == 3


def test_a_late_copy_after_storage_and_a_copy_in_the_same_batch_are_both_dropped(client, redis_client, settings, db):
    client.post("/api/log", json=numbered(1))
    drain_everything(redis_client, db, settings)
    client.post("/api/logs/batch", json={"logs": [numbered(1), numbered(2), numbered(2)]})
    assert drain_everything(redis_client, db, settings) == 2
    assert [seq for _, seq, _ in stored(db)] == [1, 2]


def test_lower_seqs_are_stored_and_only_exact_repeats_dropped(client, redis_client, settings, db):
    client.post("/api/logs/batch", json={"logs": [numbered(5), numbered(3), numbered(5, boot="boot-b"),
                                                  numbered(5, device="dev-2")]})
    assert drain_everything(redis_client, db, settings) == 0
    assert [(b, s) for b, s, _ in stored(db)] == [("boot-a", 3), ("boot-a", 5), ("boot-b", 5)]
    assert [(b, s) for b, s, _ in stored(db, "dev-2")] == [("boot-a", 5)]


def test_seqs_at_the_edges_of_their_range_round_trip(client, redis_client, settings, db):
    client.post("/api/logs/batch", json={"logs": [numbered(0), numbered(2**63 - 1), numbered(1023), numbered(1024)]})
    drain_everything(redis_client, db, settings)
    assert [s for _, s, _ in stored(db)] == [0, 1023, 1024, 2**63 - 1]


@pytest.mark.parametrize("log, field", [
    ({"seq": 1}, "boot_id"),
    ({"boot_id": "b"}, "seq"),
    ({"seq": -1, "boot_id": "b"}, "seq"),
    ({"seq": 2**63, "boot_id": "b"}, "seq"),
    ({"seq": 1.5, "boot_id": "b"}, "seq"),
    ({"seq": True, "boot_id": "b"}, "seq"),
    ({"seq": "1", "boot_id": "b"}, "seq"),
    ({"seq": 1, "boot_id": ""}, "boot_id"),
    ({"seq": 1, "boot_id": "x" * 65}, "boot_id"),
])
def test_bad_sequence_fields_are_a_422_naming_the_field(client, redis_client, settings, log, field):
    response = client.post("/api/log", json={"device_id": "d", "log_level": "INFO", "message": "m", **log})
    assert response.status_code == 422
    assert field in response.get_json()["fields"]
    assert redis_client.xlen(settings.stream) == 0


def test_a_replayed_dead_letter_whose_seq_is_already_stored_is_not_stored_again(client, redis_client, settings,
                                                                                 db):
    client.post("/api/log", json=numbered(42))
    [(entry_id, fields)] = redis_client.xrange(settings.stream)
    drain_everything(redis_client, db, settings)
    # The same entry, dead-lettered on the way (say it had been delivered too often).
    deadletters.add(db, "some-stream#0", [(entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()},
                                           "test", 11)])
    assert replay(db, redis_client, settings, None).stored == 1  # handled: the letter is gone ...
    assert deadletters.count(db) == 0
    assert [s for _, s, _ in stored(db)] == [42]  # ... and the log is still there once


def test_gap_audit_names_exactly_the_missing_numbers_across_two_boots(client, redis_client, settings, db):
    rng = random.Random(37)
    missing = {"boot-a": sorted(rng.sample(range(2, 1000), 20)), "boot-b": sorted(rng.sample(range(2, 1000), 17))}
    for boot, gone in missing.items():
        logs = [numbered(seq, boot=boot) for seq in range(1, 1001) if seq not in gone]
        rng.shuffle(logs)  # devices reorder
        for start in range(0, len(logs), 500):
            assert client.post("/api/logs/batch", json={"logs": logs[start:start + 500]}).status_code == 200
    drain_everything(redis_client, db, settings)

    body = client.get("/api/devices/dev-1/sequence").get_json()
    assert body["device_id"] == "dev-1"
    assert [b["boot_id"] for b in body["boots"]] == ["boot-a", "boot-b"]
    for boot in body["boots"]:
        gone = missing[boot["boot_id"]]
        assert (boot["first_seq"], boot["last_seq"]) == (1, 1000)
        assert boot["received"] == 1000 - len(gone) and boot["missing"] == len(gone)
        assert boot["missing_ranges"] == ranges(gone) and not boot["ranges_truncated"]


def ranges(numbers: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return out


def test_gap_audit_caps_the_ranges_but_counts_every_missing_number(client, redis_client, settings, db):
    logs = [numbered(seq) for seq in range(0, 5000, 2)]
    for start in range(0, len(logs), 1000):
        assert client.post("/api/logs/batch", json={"logs": logs[start:start + 1000]}).status_code == 200
    drain_everything(redis_client, db, settings)
    [boot] = client.get("/api/devices/dev-1/sequence").get_json()["boots"]
    assert (boot["first_seq"], boot["last_seq"], boot["received"], boot["missing"]) == (0, 4998, 2500, 2499)
    assert len(boot["missing_ranges"]) == 1000 and boot["ranges_truncated"]
    assert boot["missing_ranges"][:2] == [[1, 1], [3, 3]]


def test_gap_audit_spans_empty_blocks_and_a_device_without_numbers(client, redis_client, settings, db):
    client.post("/api/logs/batch", json={"logs": [numbered(5), numbered(10_000_000)]})
    drain_everything(redis_client, db, settings)
    [boot] = client.get("/api/devices/dev-1/sequence").get_json()["boots"]
    assert boot["missing_ranges"] == [[6, 9_999_999]] and boot["missing"] == 9_999_994
    assert client.get("/api/devices/nobody/sequence").get_json() == {"device_id": "nobody", "boots": []}
    assert client.get("/api/devices/bad%0Aid/sequence").status_code == 422


def test_a_number_whose_log_was_not_stored_stays_missing(redis_client, settings, db):
    """A numbered entry whose stream identity is already taken (a Redis restored from an
    old snapshot hands out ids again) is not stored, so its number is not received."""
    from collector.store import logs as storage

    row = ("s#1", "5-0", "dev-1", "INFO", "first", None, "2026-01-01T00:00:00+00:00", None, None)
    storage.insert_logs(db, [row], writer="t")
    again = (*row[:4], "numbered", *row[5:7], "boot-a", 5)
    assert storage.insert_logs(db, [again], writer="t") == {}
    ok = (*row[:1], "6-0", *row[2:4], "numbered", *row[5:7], "boot-a", 6)
    storage.insert_logs(db, [ok], writer="t")
    body = sequences.audit(db, "dev-1")
    assert [(b["first_seq"], b["last_seq"], b["received"]) for b in body] == [(6, 6, 1)]
