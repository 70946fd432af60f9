"""`python -m bench.storage`: the bytes each stored log costs in PostgreSQL.

Sends the logs of the reference wrk workload (``../shared/bench/batch5.lua``: requests
of 5 logs, one per level, from 100 device ids in turn) through the collector's own
path: validated by the API's schema, encoded by its codec, XADDed to a stream in
request order, and stored by ``collector.pipeline.drain.drain_batch`` from two
threads at once (as the worker's two pool processes do, so rows arrive slightly out
of order). Then ``VACUUM ANALYZE`` and the size of everything the logs occupy: the
heap, TOAST and every index of the whole partition tree of ``logs``, plus the
sequence table of the exactly-once issue. Prints bytes per log per relation and
writes bench-results/storage.json (and ``--record PATH`` too).

Uses a database and key prefix of its own (``logs_bench_storage``,
``bs:``), wiped at the start; its Redis keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import threading
from pathlib import Path

from bench.common import BenchError, dumps, log
from bench.machine import git_revision, machine_info
from bench.options import env_default, own_database_url, target_redis_url
from bench.stack import delete_namespace, reset_for_drain
from collector.devtools.processes import ROOT

DATABASE = "logs_bench_storage"
KEY_PREFIX = "bs:"  # short, as the stream name is stored per row before migration 0007
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Relations of the logs partition tree, by kind, with the name of the parent index for
# partition indexes (so a figure is per index of `logs`, whatever the partitions).
SIZES = """
    WITH tree AS (  -- the leaves of the partition tree, or the table itself when not partitioned
        SELECT relid FROM pg_partition_tree('logs') WHERE isleaf AND relid <> 'logs'::regclass
        UNION ALL SELECT 'logs'::regclass WHERE (SELECT relkind FROM pg_class WHERE oid = 'logs'::regclass) = 'r'
    )
    SELECT 'heap', 'logs', sum(pg_relation_size(relid)) FROM tree
    UNION ALL
    SELECT 'toast', 'logs', coalesce(sum(pg_total_relation_size(c.reltoastrelid)), 0)
    FROM tree JOIN pg_class c ON c.oid = tree.relid WHERE c.reltoastrelid <> 0
    UNION ALL
    SELECT 'index', coalesce(parent.relname, i.relname), sum(pg_relation_size(x.indexrelid))
    FROM tree JOIN pg_index x ON x.indrelid = tree.relid
    JOIN pg_class i ON i.oid = x.indexrelid
    LEFT JOIN pg_inherits h ON h.inhrelid = x.indexrelid
    LEFT JOIN pg_class parent ON parent.oid = h.inhparent
    GROUP BY 2
    UNION ALL
    SELECT 'sequences', 'log_sequence_blocks', pg_total_relation_size('log_sequence_blocks')
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[1])
    p.add_argument("--logs", type=int, default=env_default("BENCH_STORAGE_LOGS", 200_000, int),
                   help="Logs stored, a multiple of 5 [BENCH_STORAGE_LOGS] (default 200000).")
    p.add_argument("--out", type=Path, default=Path(env_default("BENCH_OUT", str(ROOT / "bench-results"))),
                   help="Results directory [BENCH_OUT] (default bench-results/).")
    p.add_argument("--record", type=Path, default=None,
                   help="Also write the result to this file, e.g. docs/bench/storage.json.")
    args = p.parse_args(argv)
    if args.logs <= 0 or args.logs % 5:
        p.error("--logs must be a positive multiple of 5")
    return args


def batch5_logs(settings, requests: int) -> list[list[dict]]:
    """The bodies batch5.lua sends for requests 1..requests, as the API's schema loads them."""
    from collector.web.schemas import log_schema

    schema = log_schema(settings.max_message_chars, settings.max_log_data_bytes)
    out = []
    for n in range(1, requests + 1):
        device = f"device_{n % 100:03d}"
        out.append([schema.load({"device_id": device, "log_level": level,
                                 "message": f"bench {n}-{i} temperature reading ok",
                                 "log_data": {"seq": n, "t": 21.5}})
                    for i, level in enumerate(LEVELS, start=1)])
    return out


def fill(settings, requests: list[list[dict]], chunk: int = 400) -> None:
    """XADD each request's logs, in order, with the codec the API uses."""
    import redis

    from collector.pipeline.codec import encode_entry

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
    try:
        for offset in range(0, len(requests), chunk):
            pipe = client.pipeline(transaction=False)
            for request in requests[offset:offset + chunk]:
                received = dt.datetime.now(dt.UTC)
                for one in request:
                    pipe.xadd(settings.stream, encode_entry(one, received))
            pipe.execute()
    finally:
        client.close()


def drain(settings, threads: int = 2) -> int:
    """drain_batch in `threads` threads until the stream is empty; returns rows inserted."""
    from collector.core.clients import make_db_pool, make_redis
    from collector.pipeline.consumers import ConsumerLease
    from collector.pipeline.drain import drain_batch

    client = make_redis(settings, timeout=max(settings.redis_timeout, 5.0), retries=1)
    pool = make_db_pool(settings, threads, name="bench-storage", check=True, statement_timeout=60.0)
    pool.open(wait=True)
    inserted = [0] * threads
    errors: list[BaseException] = []

    def run(index: int) -> None:
        lease = ConsumerLease(client, settings, f"storage-{index}")  # as a worker holds its name
        try:
            while True:
                with pool.connection() as conn:
                    result = drain_batch(client, conn, settings, lease.current())
                if not result.read:
                    return
                inserted[index] += result.inserted
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            lease.release()

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        pool.close()
        client.close()
    if errors:
        raise errors[0]
    return sum(inserted)


def measure(database_url: str) -> tuple[int, list[tuple[str, str, int]]]:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        rows = conn.execute("SELECT count(*) FROM logs").fetchone()[0]
        sizes = [(kind, name, int(size or 0)) for kind, name, size in conn.execute(SIZES)]
    return rows, sizes


def main(argv: list[str] | None = None) -> int:
    from collector.core.settings import load_settings

    args = parse_args(argv)
    database_url = own_database_url(DATABASE)
    settings = load_settings({**os.environ, "DATABASE_URL": database_url, "KEY_PREFIX": KEY_PREFIX,
                              "REDIS_URL": target_redis_url()})
    started_at, revision = dt.datetime.now(dt.UTC), git_revision()
    try:
        reset_for_drain(settings, DATABASE)
        fill(settings, batch5_logs(settings, args.logs // 5))
        log(f"queued {args.logs:,} logs of the batch5.lua workload; draining")
        inserted = drain(settings)
        if inserted != args.logs:
            raise BenchError(f"stored {inserted:,} rows, expected {args.logs:,}")
        rows, sizes = measure(database_url)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        delete_namespace(KEY_PREFIX)
    per_log = {f"{kind}:{name}": round(size / rows, 1) for kind, name, size in sizes}
    logs_total = sum(size for kind, _, size in sizes if kind != "sequences")
    result = {
        "command": "python -m bench.storage " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"), "revision": revision,
        "machine": machine_info(), "logs": rows,
        "bytes_per_log": round(logs_total / rows, 1),
        "heap_per_log": round(sum(s for k, _, s in sizes if k in ("heap", "toast")) / rows, 1),
        "indexes_per_log": round(sum(s for k, _, s in sizes if k == "index") / rows, 1),
        "per_relation": per_log,
    }
    lines = [f"{rows:,} logs of the batch5.lua workload, after VACUUM ANALYZE: "
             f"**{result['bytes_per_log']:.1f} bytes per log** (heap and TOAST {result['heap_per_log']:.1f}, "
             f"indexes {result['indexes_per_log']:.1f})"]
    lines += [f"  {kind:9} {name:32} {size / rows:7.1f} bytes/log  ({size / 2**20:,.1f} MiB)"
              for kind, name, size in sizes]
    lines.append(f"Revision {revision}, {result['started_at']}.")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [args.out / "storage.json", args.record]:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps({**result, "printed": "\n".join(lines)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
