"""The drain phase: with the Celery worker stopped, pre-fill the stream with a backlog of
the fleet's kind of logs, start the worker, and time how fast the table grows.

It stops and restarts the worker, so it runs only on a stack the bench started.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import log
from bench.options import Target, target_redis_url
from bench.probes import Probe, Processes, cpu_percent
from bench.sampling import Sampler, settle
from bench.stack import Stack
from collector.devtools.fleet import device_id, make_log


@dataclass
class DrainResult:
    backlog: int
    prefill_s: float
    prefill_per_s: float
    startup_s: float | None          # worker start to first row
    drain_s: float | None            # first row to last row
    drain_per_s: float | None
    total_s: float | None            # worker start to done: the time to store the whole backlog
    stored: int
    complete: bool
    rss: dict
    cpu: dict | None                 # % of one core per part, worker start to done
    batches: dict | None             # the drain runs, from the worker's "drained batch" log lines
    samples: list[list]


def synthetic_logs(settings, count: int = 1000) -> list[dict]:
    """`count` distinct logs from the fleet's generators (collector.devtools.fleet, seeded, so
    every run drains the same mix), as the API's schema returns them, ready for encode_entry."""
    from collector.web.schemas import log_schema

    schema = log_schema(settings.max_message_chars, settings.max_log_data_bytes)
    rng = random.Random(42)
    return [schema.load(make_log(device_id("bench-drain", i % 500), i, rng)) for i in range(count)]


def prefill(settings, redis_url: str, n: int, chunk: int = 2000) -> float:
    """XADD n entries, `chunk` per pipelined round trip, encoded by the collector's own
    encode_entry (so the drain sees exactly what the API would have written); returns seconds."""
    import redis

    from collector.pipeline.codec import encode_entry

    client = redis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    pool = synthetic_logs(settings)
    started = time.monotonic()
    try:
        for offset in range(0, n, chunk):
            received = dt.datetime.now(dt.UTC)
            pipe = client.pipeline(transaction=False)
            for i in range(offset, min(n, offset + chunk)):
                pipe.xadd(settings.stream, encode_entry(pool[i % len(pool)], received))
            pipe.execute()
    finally:
        client.close()
    return time.monotonic() - started


def batch_timings(worker_log: Path, offset: int, pool_processes: int, drain_s: float | None) -> dict | None:
    """The drain runs the worker logged ("drained batch" JSON lines after byte `offset`):
    how many, how many entries each, and the time spent inside drain_batch, against the
    wall time the pool's processes had (the rest is Celery's per-task cost, and idling)."""
    seconds, entries = [], []
    with open(worker_log, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            if b'"drained batch"' not in raw:
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("read"):
                seconds.append(float(line["seconds"]))
                entries.append(int(line["read"]))
    if not seconds:
        return None
    seconds.sort()
    runs = len(seconds)
    out = {
        "runs": runs,
        "mean_entries": round(sum(entries) / runs, 1),
        "median_ms": round(1000 * statistics.median(seconds), 2),
        "p95_ms": round(1000 * seconds[min(runs - 1, int(runs * 0.95))], 2),
        "mean_ms": round(1000 * sum(seconds) / runs, 2),
        "pool_processes": pool_processes,
        "pool_wall_ms_per_run": None,
    }
    if drain_s and pool_processes > 0:
        out["pool_wall_ms_per_run"] = round(1000 * drain_s * pool_processes / runs, 2)
    return out


def run_drain_phase(args: argparse.Namespace, target: Target, stack: Stack, probe: Probe,
                    procs: Processes) -> DrainResult:
    from collector.core.settings import load_settings

    settings = load_settings(stack.base_env)
    sampler = Sampler(probe, procs, interval=0.25)
    log(f"drain: stopping the worker, then pre-filling {settings.stream} with {args.backlog:,} entries")
    stack.stop("worker")
    before = sampler.take()
    if before.backlog:
        log(f"drain: {before.backlog} entries were still queued; they count towards the drain")
    seconds = prefill(settings, target_redis_url(), args.backlog)
    log(f"drain: pre-filled in {seconds:.1f} s ({args.backlog / seconds:,.0f} XADD/s); starting the worker")
    goal = before.persisted + args.backlog + (before.backlog or 0)

    worker_log = stack.services["worker"].log_path
    log_offset = worker_log.stat().st_size if worker_log.exists() else 0
    stack.start("worker")
    started, cpu_start = time.monotonic(), procs.cpu()
    done_at = settle(sampler, args.drain_timeout, stack.check, stop_when=lambda s: s.persisted >= goal)
    cpu_end = procs.cpu()
    first = next((s for s in sampler.samples if s.t >= started and s.persisted > before.persisted), None)
    last = sampler.samples[-1]
    stored = last.persisted - before.persisted
    if done_at is None:
        log(f"drain: not finished within {args.drain_timeout:g} s (--drain-timeout): {stored:,} stored")
    drain_s = (done_at - first.t) if (done_at and first and done_at > first.t) else None
    # The Celery worker's tree: its main process and the prefork pool's children.
    pool = max(0, int(sampler.peak.get("worker_processes", 0)) - 1)
    return DrainResult(
        backlog=args.backlog, prefill_s=round(seconds, 2), prefill_per_s=round(args.backlog / seconds, 1),
        startup_s=round(first.t - started, 2) if first else None,
        drain_s=round(drain_s, 2) if drain_s else None,
        drain_per_s=round((last.persisted - first.persisted) / drain_s, 1) if drain_s and first else None,
        total_s=round(done_at - started, 2) if done_at else None,
        stored=stored, complete=last.persisted >= goal, rss=dict(sampler.peak),
        cpu=cpu_percent(cpu_start, cpu_end, time.monotonic() - started),
        batches=batch_timings(worker_log, log_offset, pool, drain_s),
        samples=sampler.series(started),
    )
