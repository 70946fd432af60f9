"""`python -m bench.drainloop`: the drain without Celery, to see what Celery costs.

Pre-fills a stream with the same backlog as the bench's drain phase (the fleet's
kind of logs, encoded by the collector's codec), then calls
``collector.pipeline.drain.drain_for`` (runs of drain_batch) in a loop in this one process, exactly as
the ``drain_stream`` task body does (a Redis client and a checked PostgreSQL pool
built like the worker's, one pooled connection per task), until the stream is
empty. Prints logs/s and the time per run; writes bench-results/drainloop.json
(and ``--record PATH`` too, e.g. docs/bench/drainloop.json).

It uses a database and key prefix of its own (``logs_bench_drainloop`` and
``bench-drainloop:``), wiped at the start; its Redis keys are deleted at the end.
BATCH_SIZE (or --batch-size) sets the entries per run, as it does for the worker.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

from bench.common import BenchError, dumps, log
from bench.drain import prefill
from bench.machine import git_revision, machine_info
from bench.options import env_default, own_database_url, target_redis_url
from bench.probes import Processes, cpu_percent
from bench.stack import delete_namespace, reset_for_drain
from collector.devtools.processes import ROOT

DATABASE = "logs_bench_drainloop"
KEY_PREFIX = "bench-drainloop:"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.drainloop", description=__doc__.split("\n\n")[1])
    p.add_argument("--backlog", type=int, default=env_default("BENCH_BACKLOG", 200_000, int),
                   help="Stream entries pre-filled, then drained [BENCH_BACKLOG] (default 200000).")
    p.add_argument("--batch-size", type=int, default=None,
                   help="Entries per drain run (default: BATCH_SIZE, else the collector's default).")
    p.add_argument("--out", type=Path, default=Path(env_default("BENCH_OUT", str(ROOT / "bench-results"))),
                   help="Results directory [BENCH_OUT] (default bench-results/).")
    p.add_argument("--record", type=Path, default=None,
                   help="Also write the result to this file, e.g. docs/bench/drainloop.json.")
    args = p.parse_args(argv)
    if args.backlog <= 0 or (args.batch_size is not None and args.batch_size <= 0):
        p.error("--backlog and --batch-size must be > 0")
    return args


def drain_all(settings, expected: int) -> tuple[float, list[float], int, dict]:
    """drain_for until the stream is empty: (seconds, seconds per run, rows inserted, CPU
    in % of one core: this process, PostgreSQL, Redis, and the rest of the host)."""
    from collector.core.clients import make_db_pool, make_redis
    from collector.pipeline.drain import drain_for

    client = make_redis(settings, timeout=max(settings.redis_timeout, 5.0), retries=1)
    pool = make_db_pool(settings, 2, name="bench-drainloop", check=True, statement_timeout=60.0)
    pool.open(wait=True)
    runs: list[float] = []
    inserted = 0
    procs = Processes(None)
    try:
        cpu_before, own_before = procs.cpu(), os.times()
        started = time.perf_counter()
        while True:
            with pool.connection() as conn:
                results = drain_for(client, conn, settings, "drainloop-0")
            done = [r for r in results if r.read]
            if not done:
                break
            runs += [r.seconds for r in done]
            inserted += sum(r.inserted for r in done)
        elapsed = time.perf_counter() - started
        cpu, own_after = cpu_percent(cpu_before, procs.cpu(), elapsed), os.times()
    finally:
        pool.close()
        client.close()
    if inserted != expected:
        raise BenchError(f"drained {inserted:,} rows, expected {expected:,}")
    own = 100 * (own_after.user + own_after.system - own_before.user - own_before.system) / elapsed
    host = sum(v for v in cpu.values() if v is not None)  # the parts and "other" add up to the host
    cpu = {"drainloop": round(own, 1), "postgres": cpu["postgres"], "redis": cpu["redis"],
           "other": round(max(0.0, host - own - cpu["postgres"] - cpu["redis"]), 1)}
    return elapsed, runs, inserted, cpu


def main(argv: list[str] | None = None) -> int:
    from collector.core.settings import load_settings

    args = parse_args(argv)
    database_url = own_database_url(DATABASE)
    env = {**os.environ, "DATABASE_URL": database_url, "KEY_PREFIX": KEY_PREFIX, "REDIS_URL": target_redis_url()}
    if args.batch_size is not None:
        env["BATCH_SIZE"] = str(args.batch_size)
    settings = load_settings(env)
    started_at, revision = dt.datetime.now(dt.UTC), git_revision()  # the code this run loads
    try:
        reset_for_drain(settings, DATABASE)
        seconds = prefill(settings, settings.redis_url, args.backlog)
        log(f"pre-filled {args.backlog:,} entries in {seconds:.1f} s; draining with drain_batch in a loop "
            f"(BATCH_SIZE={settings.batch_size})")
        elapsed, runs, inserted, cpu = drain_all(settings, args.backlog)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        delete_namespace(KEY_PREFIX)
    result = {
        "command": "python -m bench.drainloop " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"), "revision": revision,
        "machine": machine_info(), "batch_size": settings.batch_size, "backlog": args.backlog,
        "inserted": inserted, "seconds": round(elapsed, 2), "logs_per_s": round(inserted / elapsed, 1),
        "runs": len(runs), "run_median_ms": round(1000 * statistics.median(runs), 2),
        "run_p95_ms": round(1000 * sorted(runs)[min(len(runs) - 1, int(len(runs) * 0.95))], 2),
        "cpu": cpu,
    }
    text = (f"drain_batch in a loop (one process, no Celery, BATCH_SIZE={result['batch_size']}): "
            f"{inserted:,} logs in {result['seconds']:.1f} s: **{result['logs_per_s']:,.0f} logs/s**; "
            f"{result['runs']:,} runs, median {result['run_median_ms']:.1f} ms, p95 {result['run_p95_ms']:.1f} ms "
            f"per run. CPU meanwhile, % of one core: "
            + ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items())
            + f" (other: the rest of the host). Revision {result['revision']}, {result['started_at']}.")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in [args.out / "drainloop.json", args.record]:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps({**result, "printed": text}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
