"""`python -m bench.partition_plans`: do the read queries stay as fast at 50 million rows
over 30 daily partitions as at 50 thousand?

Loads `--small` rows spread over `--days` days of receive time (partitions created
as the maintenance task would), runs each read query of the API several times with
``EXPLAIN (ANALYZE, BUFFERS)`` and keeps the median; then loads up to `--rows` rows and
does it again. The queries are the collector's own (collector.store.search and .logs): a
device's newest logs (GET /api/logs/<device_id>), filtered and fleet-wide pages
(GET /api/logs), the device list, the per-level totals and the recent devices
(/api/stats), plus a count bounded in receive time (partition pruning). Rows are
written straight into the table with generate_series (the drain would take hours for
50 million): the batch5.lua kind of logs, from `--devices` devices.

Uses a database of its own (``logs_bench_plans``), wiped at the start and kept at the
end for a closer look (drop it with ``DROP DATABASE logs_bench_plans``). Prints a table
and the plans; writes bench-results/partition_plans.json (and ``--record PATH`` too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

from bench.common import dumps, log
from bench.machine import git_revision, machine_info
from bench.options import env_default, own_database_url
from bench.stack import drop_database
from collector.devtools.processes import ROOT

DATABASE = "logs_bench_plans"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
RUNS = 7  # each query, warm, median of these

# Row i is received on day i % days (day 0 the oldest), the (i // days)-th of that day, whose
# device and level go round.
FILL = """
    INSERT INTO logs (received_at, created_at, entry_seq, log_level, stream, device_id, message, log_data)
    SELECT t, t, 0, (%(levels)s::log_severity[])[1 + i / %(days)s %% 5], %(stream)s,
           'dev-' || (i / %(days)s %% %(devices)s),
           'bench ' || i || ' temperature reading ok', ('{"seq":' || i || ',"t":21.5}')::json
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i,
         LATERAL (SELECT %(oldest)s::timestamptz + (i %% %(days)s) * interval '1 day'
                         + (i / %(days)s) * %(step)s * interval '1 microsecond') AS at (t)
"""

COUNT = """
    INSERT INTO log_counts (writer, day, log_level, n)
    SELECT 'bench', %(oldest)s::date + (i %% %(days)s)::int, (%(levels)s::text[])[1 + i / %(days)s %% 5], count(*)
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i GROUP BY 2, 3
    ON CONFLICT (writer, day, log_level) DO UPDATE SET n = log_counts.n + EXCLUDED.n
"""

DEVICE_COUNT = """
    INSERT INTO device_counts (writer, day, device_id, debug, info, warning, error, critical, last_seen)
    SELECT 'bench', %(oldest)s::date + (i %% %(days)s)::int, 'dev-' || (i / %(days)s %% %(devices)s),
           count(*) FILTER (WHERE i / %(days)s %% 5 = 0), count(*) FILTER (WHERE i / %(days)s %% 5 = 1),
           count(*) FILTER (WHERE i / %(days)s %% 5 = 2), count(*) FILTER (WHERE i / %(days)s %% 5 = 3),
           count(*) FILTER (WHERE i / %(days)s %% 5 = 4),
           %(oldest)s::timestamptz + max(i %% %(days)s) * interval '1 day'
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i GROUP BY 2, 3
    ON CONFLICT (writer, day, device_id) DO UPDATE
    SET debug = device_counts.debug + EXCLUDED.debug, info = device_counts.info + EXCLUDED.info,
        warning = device_counts.warning + EXCLUDED.warning, error = device_counts.error + EXCLUDED.error,
        critical = device_counts.critical + EXCLUDED.critical,
        last_seen = greatest(device_counts.last_seen, EXCLUDED.last_seen)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.partition_plans", description=__doc__.split("\n\n")[1])
    p.add_argument("--rows", type=int, default=env_default("BENCH_PLAN_ROWS", 50_000_000, int),
                   help="Rows for the large measurement [BENCH_PLAN_ROWS] (default 50000000).")
    p.add_argument("--small", type=int, default=50_000, help="Rows for the small measurement (default 50000).")
    p.add_argument("--days", type=int, default=30, help="Days of receive time, one partition each (default 30).")
    p.add_argument("--devices", type=int, default=1000, help="Distinct device ids (default 1000).")
    p.add_argument("--out", type=Path, default=Path(env_default("BENCH_OUT", str(ROOT / "bench-results"))),
                   help="Results directory [BENCH_OUT] (default bench-results/).")
    p.add_argument("--record", type=Path, default=None,
                   help="Also write the result to this file, e.g. docs/bench/partition_plans.json.")
    args = p.parse_args(argv)
    if not 0 < args.small < args.rows or args.days < 1:
        p.error("need 0 < --small < --rows and --days >= 1")
    return args


def fill(conn, args, first: int, last: int, oldest: dt.datetime) -> None:
    """Rows first..last-1 (see FILL), a million per transaction, counted in log_counts."""
    per_day = -(-args.rows // args.days)
    params = {"levels": list(LEVELS), "stream": 1, "devices": args.devices, "days": args.days,
              "oldest": oldest, "step": 86_400_000_000 // per_day}
    for lo in range(first, last, 1_000_000):
        hi = min(last, lo + 1_000_000) - 1
        with conn.transaction():
            conn.execute(FILL, {**params, "first": lo, "last": hi})
            conn.execute(COUNT, {**params, "first": lo, "last": hi})
            conn.execute(DEVICE_COUNT, {**params, "first": lo, "last": hi})
        log(f"  {hi + 1:,} rows")


def measure(conn, device: str) -> dict:
    from psycopg import sql

    from collector.store import logs as storage
    from collector.store import search
    from collector.store.search import LogFilter

    now = conn.execute("SELECT max(received_at) FROM logs").fetchone()[0]
    day_ago = now - dt.timedelta(days=1)

    def page(**filters):
        return search.page_query(LogFilter(**filters), limit=100)

    queries = {
        "device newest 100 (GET /api/logs/<id>)": page(device_ids=(device,)),
        "device ERROR and up, 100 (min_level)": page(device_ids=(device,), min_level="ERROR"),
        "device, q=reading, 100": page(device_ids=(device,), q="reading"),
        "fleet newest 100 (GET /api/logs)": page(),
        "fleet, last day, data={\"t\":21.5}, 100": page(since=day_ago, data={"t": 21.5}),
        "fleet, q matching nothing (trigram index)": page(q="watchdog reset"),
        "device list (GET /api/devices)": (search.DEVICES.format(where=""), ()),
        "level totals (/api/stats)": (storage.LEVEL_TOTALS, ()),
        "recent devices (/api/stats)": (storage.RECENT_DEVICES, (1000, 10)),
        "count of the last hour (pruned)": ("SELECT count(*) FROM logs WHERE received_at > %s",
                                            (now - dt.timedelta(hours=1),)),
    }
    results = {}
    for name, (query, params) in queries.items():
        statement = sql.SQL(query) if isinstance(query, str) else query
        times, plan = [], None
        for _ in range(RUNS):
            explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(statement)
            plan = conn.execute(explain, params).fetchone()[0][0]
            times.append(plan["Execution Time"])
        explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}").format(statement)
        text = "\n".join(r[0] for r in conn.execute(explain, params))
        top = plan["Plan"]
        results[name] = {"ms": round(statistics.median(times), 3),
                         "buffers": top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0),
                         "plan": text}
    return results


def main(argv: list[str] | None = None) -> int:
    import psycopg

    from collector.store import partitions
    from collector.store.migrations import migrate

    args = parse_args(argv)
    url = own_database_url(DATABASE)
    started_at, revision = dt.datetime.now(dt.UTC), git_revision()
    drop_database(url, DATABASE)
    migrate(url)
    today = dt.datetime.now(dt.UTC).date()
    phases = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("INSERT INTO log_streams (name) VALUES ('bench#plans') ON CONFLICT DO NOTHING")
        oldest = dt.datetime.combine(today - dt.timedelta(days=args.days - 1), dt.time(), dt.UTC)
        partitions.create_covering(conn, 1, oldest.date(), today)
        loaded = 0
        for target in (args.small, args.rows):
            began = time.monotonic()
            log(f"loading rows {loaded:,}..{target:,}")
            fill(conn, args, loaded, target, oldest)
            loaded = target
            conn.execute("VACUUM ANALYZE logs")
            log(f"loaded and analyzed in {time.monotonic() - began:.0f} s; measuring")
            counted = conn.execute("SELECT sum(n) FROM log_counts").fetchone()[0]
            phases[f"{target:,} rows"] = {"rows": int(counted), "queries": measure(conn, "dev-7")}
        parts = len(partitions.existing(conn))
    names = list(phases)
    lines = [f"Read queries at {names[0]} and at {names[1]} over {args.days} daily partitions "
             f"({parts} partitions with those ahead), warm cache, median of {RUNS} runs of "
             f"EXPLAIN (ANALYZE, BUFFERS):", "",
             f"| query | {names[0]}: ms | buffers | {names[1]}: ms | buffers |", "|---|--:|--:|--:|--:|"]
    for query in phases[names[0]]["queries"]:
        a, b = phases[names[0]]["queries"][query], phases[names[1]]["queries"][query]
        lines.append(f"| {query} | {a['ms']:.2f} | {a['buffers']} | {b['ms']:.2f} | {b['buffers']} |")
    lines += ["", f"Revision {revision}, {started_at:%Y-%m-%d %H:%M} UTC."]
    print("\n".join(lines))
    for query, result in phases[names[1]]["queries"].items():
        print(f"\n--- {query}, {names[1]} ---\n{result['plan']}")
    record = {"command": "python -m bench.partition_plans " + " ".join(argv if argv is not None else sys.argv[1:]),
              "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"), "revision": revision,
              "machine": machine_info(), "phases": phases, "printed": "\n".join(lines)}
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [args.out / "partition_plans.json", args.record]:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
