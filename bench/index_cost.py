"""`python -m bench.index_cost`: what each index of `logs` costs PostgreSQL per stored log.

The drain's ceiling on two cores is PostgreSQL's CPU per row (docs/performance.md).
This stores the bench's kind of logs (bench.drain.synthetic_logs: the fleet's mix,
seeded) with the collector's own ``store.logs.insert_logs`` in batches of 100, as the
drain does, into a fresh database with every migration applied: once with the schema
as it is, then once per secondary index of `logs` with that index dropped. For each it
prints the database backend's CPU time per row, read from /proc (PostgreSQL on this
host), so the difference to the full schema is that index's cost. Rounds are
interleaved (full, without A, without B, ..., full, ...) and the median is printed.

It uses a database of its own (``logs_bench_index_cost``), dropped at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics

import psycopg

from bench.common import log
from bench.options import own_database_url
from bench.stack import drop_database

DATABASE = "logs_bench_index_cost"
# The secondary indexes of `logs` (migrations 0007, 0008); the unique entry key is the
# drain's duplicate check, so it is never dropped.
INDEXES = ("logs_device_created_idx", "logs_created_idx", "logs_message_trgm_idx")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.index_cost", description=__doc__.split("\n\n")[1])
    p.add_argument("--logs", type=int, default=100_000, help="Logs stored per measurement (default 100000).")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the median is printed (default 3).")
    p.add_argument("--pending-list-kb", type=int, default=None,
                   help="Also measure the full schema with this gin_pending_list_limit (kB) on the trigram "
                        "index (PostgreSQL's default is 4096): a longer list batches more of the index's work.")
    return p.parse_args(argv)


def backend_cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def _partition_indexes(conn: psycopg.Connection, like: str) -> list[str]:
    return [name for (name,) in conn.execute(
        "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid IN "
        "(SELECT inhrelid FROM pg_inherits WHERE inhparent = 'logs'::regclass) "
        "AND indexrelid::regclass::text LIKE %s", (like,)).fetchall()]


def store(database_url: str, rows: list, without: str | None, pending_list_kb: int | None = None) -> float:
    """Backend CPU µs per row to store `rows` in an emptied `logs`, with `without` dropped.

    All of the index work is this backend's: autovacuum is off for the partitions, and the
    trigram indexes' pending lists (GIN's fast update, which defers part of the work) are
    flushed at the end, inside the measurement."""
    from collector.store.logs import insert_logs

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE logs, log_counts, device_counts")
        if without:
            conn.execute(f"DROP INDEX IF EXISTS {without}")
        for (partition,) in conn.execute("SELECT inhrelid::regclass::text FROM pg_inherits "
                                         "WHERE inhparent = 'logs'::regclass").fetchall():
            conn.execute(f"ALTER TABLE {partition} SET (autovacuum_enabled = off)")
        trigram = _partition_indexes(conn, "%message%")
        if pending_list_kb:  # on each partition's index: a partitioned index has no storage of its own
            for name in trigram:
                conn.execute(f"ALTER INDEX {name} SET (gin_pending_list_limit = {int(pending_list_kb)})")
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        before = backend_cpu_seconds(pid)
        for offset in range(0, len(rows), 100):
            insert_logs(conn, rows[offset:offset + 100], writer="index-cost")
        for name in trigram:
            conn.execute("SELECT gin_clean_pending_list(%s::regclass)", (name,))
        used = backend_cpu_seconds(pid) - before
    return 1e6 * used / len(rows)


def rows_for(n: int) -> list:
    """`n` rows as the drain decodes them, with entry ids one millisecond apart."""
    from bench.drain import synthetic_logs
    from collector.core.settings import load_settings
    from collector.pipeline.codec import decode_entry, encode_entry

    logs = synthetic_logs(load_settings({}))
    received = dt.datetime.now(dt.UTC)
    start_ms = int(received.timestamp() * 1000)
    rows = []
    for i in range(n):
        fields = encode_entry(logs[i % len(logs)], received)  # as Redis returns them: bytes
        fields = {k: v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}
        rows.append(decode_entry("index-cost#0", f"{start_ms + i}-0", fields))
    return rows


def main(argv: list[str] | None = None) -> int:
    from collector.store.migrations import create_database_if_missing, migrate

    args = parse_args(argv)
    database_url = own_database_url(DATABASE)
    rows = rows_for(args.logs)
    results: dict[str, list[float]] = {"full schema": [], **{f"without {name}": [] for name in INDEXES}}
    pending = f"full schema, gin_pending_list_limit {args.pending_list_kb} kB"
    if args.pending_list_kb:
        results[pending] = []
    try:
        for round_ in range(args.rounds):
            for label in results:
                drop_database(database_url, DATABASE)
                create_database_if_missing(database_url)
                migrate(database_url)
                without = label.removeprefix("without ") if label.startswith("without ") else None
                results[label].append(store(database_url, rows, without,
                                            args.pending_list_kb if label == pending else None))
                log(f"round {round_ + 1}: {label}: {results[label][-1]:.1f} µs of PostgreSQL CPU per row")
    finally:
        drop_database(database_url, DATABASE)
    full = statistics.median(results["full schema"])
    print(f"PostgreSQL backend CPU per stored log, batches of 100 via store.logs.insert_logs, "
          f"{args.logs:,} logs, median of {args.rounds}:")
    print(f"  full schema: {full:.1f} µs")
    for name in INDEXES:
        without = statistics.median(results[f"without {name}"])
        print(f"  without {name}: {without:.1f} µs (the index costs {full - without:.1f} µs per log)")
    if args.pending_list_kb:
        print(f"  {pending}: {statistics.median(results[pending]):.1f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
