"""Time partitions of `logs`: created ahead, the default partition emptied into them,
retention by dropping whole partitions with the counters kept exact, dead-letter
retention, and query plans that read only the top of each partition."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest

from collector.core.model import LEVELS
from collector.store import deadletters, partitions
from collector.store import logs as storage

STREAM = "logs:stream#0a1b2c3d"


def row(at: dt.datetime, n: int, device: str = "dev-1", level: str = "INFO") -> tuple:
    """A stored row as the drain makes it, for a stream entry received at `at`."""
    stream_id = f"{int(at.timestamp() * 1000)}-{n}"
    return (STREAM, stream_id, device, level, f"m{n}", None, at.isoformat(), None, None)


def counts_agree(db) -> None:
    """/api/stats's totals (store.logs.table_stats) against the table itself."""
    stats = storage.table_stats(db)
    actual = dict(db.execute("SELECT log_level::text, count(*) FROM logs GROUP BY 1").fetchall())
    assert stats["total_logs"] == sum(actual.values())
    assert stats["logs_by_level"] == {level: actual.get(level, 0) for level in LEVELS}


def test_migrate_creates_the_current_partition_and_the_next_ones(db):
    today = dt.datetime.now(dt.UTC).date()
    covered = partitions.existing(db)
    for ahead in range(4):  # PARTITIONS_AHEAD's default: 3 after the current one
        day = today + dt.timedelta(days=ahead)
        assert any(p.start <= day < p.end for p in covered), f"no partition for {day}"
    assert partitions.create_ahead(db, 1, 3, today) == []  # running it again changes nothing
    # Weekly partitions line up on the epoch, whichever day they are created.
    week = partitions.bucket(dt.date(2026, 12, 2), 7)
    assert (week.end - week.start).days == 7 and (week.start - partitions.EPOCH_DAY).days % 7 == 0


def test_forty_days_leave_thirty_after_retention_with_exact_counts(db, caplog):
    now = dt.datetime.now(dt.UTC)
    rows = [row(now - dt.timedelta(days=age, minutes=n), age * 10 + n, device=f"dev-{n}", level=LEVELS[n % 5])
            for age in range(40) for n in range(5)]
    storage.insert_logs(db, rows, writer="t")
    # Most of those days had no partition: their rows wait in the default partition.
    assert db.execute("SELECT count(*) FROM logs_default").fetchone()[0] > 0
    counts_agree(db)

    with caplog.at_level(logging.INFO, logger="collector.store.partitions"):
        result = partitions.maintain(db, interval=1, ahead=3, retention_days=30, dead_letter_retention_days=0,
                                     now=now)
    assert result.moved_from_default > 0
    assert db.execute("SELECT count(*) FROM logs_default").fetchone()[0] == 0
    ages = [(now - at).total_seconds() / 86400 for (at,) in db.execute("SELECT received_at FROM logs")]
    # Nothing younger than RETENTION_DAYS is gone, nothing older than one more partition stays.
    assert min(ages) < 1 and 30 <= max(ages) < 31
    kept = len(ages)
    assert kept == sum(1 for r in rows if storage.entry_identity(r[1])[2] > (now - dt.timedelta(days=31)).date())
    dropped_rows = sum(n for _, n in result.dropped)
    assert dropped_rows == len(rows) - kept
    assert partitions.expired_totals(db) == {"logs_expired": dropped_rows, "dead_letters_expired": 0}
    counts_agree(db)
    # One log line per dropped partition, with its row count.
    lines = [r for r in caplog.records if r.getMessage() == "dropped expired partition"]
    assert sorted((r.partition, r.rows) for r in lines) == sorted(result.dropped)
    # Whole partitions went: no row was deleted from a partition that stays.
    deleted = db.execute("SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables"
                         " WHERE relname LIKE 'logs\\_2%'").fetchone()[0]
    assert deleted == 0
    # A second run finds nothing more to do.
    again = partitions.maintain(db, 1, 3, 30, 0, now=now)
    assert (again.dropped, again.moved_from_default, again.created) == ([], 0, [])


def test_retention_zero_keeps_everything(db):
    now = dt.datetime.now(dt.UTC)
    storage.insert_logs(db, [row(now - dt.timedelta(days=400), 1), row(now, 2)], writer="t")
    result = partitions.maintain(db, 1, 3, retention_days=0, dead_letter_retention_days=0, now=now)
    assert result.dropped == [] and db.execute("SELECT count(*) FROM logs").fetchone()[0] == 2


def test_a_redelivered_entry_is_stored_once_whichever_partition_it_lands_in(db):
    now = dt.datetime.now(dt.UTC)
    old = row(now - dt.timedelta(days=3), 7)
    assert sum(storage.insert_logs(db, [old], writer="t").values()) == 1
    partitions.maintain(db, 1, 3, 30, 0, now=now)  # its row moves out of the default partition
    assert storage.insert_logs(db, [old], writer="t") == {}
    assert db.execute("SELECT count(*) FROM logs").fetchone()[0] == 1
    counts_agree(db)


def test_dead_letters_are_kept_unless_their_retention_is_set(db):
    deadletters.add(db, STREAM, [("1-0", {"d": "x"}, "why", 1), ("2-0", {"d": "y"}, "why", 1)])
    db.execute("UPDATE dead_letters SET last_failed_at = now() - interval '10 days' WHERE stream_id = '1-0'")
    now = dt.datetime.now(dt.UTC)
    assert partitions.maintain(db, 1, 3, 30, dead_letter_retention_days=0, now=now).dead_letters_expired == 0
    assert partitions.maintain(db, 1, 3, 30, dead_letter_retention_days=7, now=now).dead_letters_expired == 1
    assert [r[0] for r in db.execute("SELECT stream_id FROM dead_letters")] == ["2-0"]
    assert partitions.expired_totals(db)["dead_letters_expired"] == 1


def _plan(db, query: str, params: tuple) -> dict:
    return db.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()[0][0]["Plan"]


def _nodes(plan: dict) -> list[dict]:
    return [plan, *[n for child in plan.get("Plans", []) for n in _nodes(child)]]


@pytest.fixture
def thirty_days(db):
    """30 daily partitions with 200 devices' logs each, analyzed."""
    now = dt.datetime.now(dt.UTC)
    rows = [row(now - dt.timedelta(days=day, seconds=i), i, device=f"dev-{i % 200}")
            for day in range(30) for i in range(1000)]
    for i in range(0, len(rows), 5000):
        storage.insert_logs(db, rows[i:i + 5000], writer="t")
    partitions.maintain(db, 1, 3, 0, 0, now=now)
    db.execute("ANALYZE logs")
    return now


def test_newest_logs_of_a_device_read_the_top_of_each_partition(db, thirty_days):
    query = ("SELECT id FROM logs WHERE device_id = %s ORDER BY logs.created_at DESC, logs.id DESC LIMIT 10")
    plan = _plan(db, query, ("dev-7",))
    nodes = _nodes(plan)
    kinds = [n["Node Type"] for n in nodes]
    assert kinds[0] == "Limit" and "Merge Append" in kinds, json.dumps(plan)[:2000]
    scans = [n for n in nodes if n["Node Type"] in ("Index Scan", "Index Only Scan", "Seq Scan", "Bitmap Heap Scan")]
    filled = {name for (name,) in db.execute("SELECT DISTINCT tableoid::regclass::text FROM logs")}
    assert len(filled) == 30
    # Partitions holding rows read the device index; empty ones (ahead, default) may read any.
    assert len(scans) >= 30 and all(n["Node Type"] == "Index Scan" and n["Scan Direction"] == "Backward"
                                    and (n["Index Name"].endswith("device_id_created_at_idx")
                                         or n["Relation Name"] not in filled) for n in scans)
    assert "Sort" not in kinds  # at most an incremental sort of ties on created_at
    assert [r[0] for r in db.execute(query, ("dev-7",))] == [
        r[0] for r in db.execute("SELECT id FROM logs WHERE device_id = 'dev-7'"
                                 " ORDER BY created_at DESC, id DESC LIMIT 10")]


def test_a_query_bounded_in_receive_time_reads_only_its_partitions(db, thirty_days):
    since, until = thirty_days - dt.timedelta(hours=12), thirty_days
    plan = _plan(db, "SELECT count(*) FROM logs WHERE received_at >= %s AND received_at <= %s", (since, until))
    scanned = {n["Relation Name"] for n in _nodes(plan) if "Relation Name" in n}
    wanted = {partitions.bucket(since.date(), 1).name, partitions.bucket(until.date(), 1).name}
    assert wanted <= scanned <= wanted | {partitions.DEFAULT_PARTITION}, scanned


def test_stats_read_the_newest_entries_through_the_entry_index(db, thirty_days):
    plan = _plan(db, "SELECT device_id FROM logs ORDER BY received_at DESC, entry_seq DESC LIMIT 1000", ())
    kinds = [n["Node Type"] for n in _nodes(plan)]
    assert "Seq Scan" not in kinds and "Sort" not in kinds, kinds
    assert storage.table_stats(db)["recent_devices"][:1] == ["dev-0"]
