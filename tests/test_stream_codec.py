"""The stream entry codec round-trips every field the table stores."""

from __future__ import annotations

import datetime as dt

import pytest

from collector.core.model import entry_identity
from collector.pipeline.codec import MalformedEntry, decode_entry, encode_entry
from collector.web.schemas import log_schema

RECEIVED = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
STREAM = "logs:stream#0a1b2c3d"  # an entry's stream identity (collector.pipeline.group.stream_identity)


def as_redis_returns(fields: dict) -> dict:
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_round_trip_with_all_fields():
    log = log_schema(100, 1000).load({
        "device_id": "d-1", "log_level": "ERROR", "message": "disk full ✓",
        "log_data": {"free": 0, "mount": "/data"}, "timestamp": "2026-01-01T00:00:00Z",
    })
    row = decode_entry(STREAM, b"1-0", as_redis_returns(encode_entry(log, RECEIVED)))
    assert row == (STREAM, "1-0", "d-1", "ERROR", "disk full ✓", '{"free":0,"mount":"/data"}',
                   "2026-01-01T00:00:00+00:00", None, None)


def test_missing_timestamp_uses_receive_time_and_no_log_data_is_null():
    log = log_schema(100, 1000).load({"device_id": "d", "log_level": "INFO", "message": "m"})
    fields = encode_entry(log, RECEIVED)
    assert b"j" not in fields
    row = decode_entry(STREAM, b"2-0", as_redis_returns(fields))
    assert row[5] is None and row[6] == RECEIVED.isoformat()


def test_receive_time_is_the_entry_ids():
    """Every copy of an entry has the same receive time, the partition key of its row."""
    assert entry_identity("1796083200123-7") == (
        dt.datetime(2026, 12, 1, 0, 0, 0, 123000, tzinfo=dt.UTC), 7, dt.date(2026, 12, 1))


@pytest.mark.parametrize("entry_id", [b"x-0", b"12", b"1-2147483648", b"-1-0"])
def test_entry_ids_that_cannot_be_stored_are_malformed(entry_id):
    log = log_schema(100, 1000).load({"device_id": "d", "log_level": "INFO", "message": "m"})
    with pytest.raises(MalformedEntry):
        decode_entry(STREAM, entry_id, as_redis_returns(encode_entry(log, RECEIVED)))


def test_foreign_entry_is_reported_not_crashing():
    with pytest.raises(MalformedEntry):
        decode_entry(STREAM, b"3-0", {b"unexpected": b"x"})
