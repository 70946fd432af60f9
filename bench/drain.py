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
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
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
    batches: dict | None             # the drain runs and tasks, from the worker's "drained batch" log lines
    samples: list[list]


def synthetic_logs(settings, count: int = 1000) -> list[dict]:
    """`count` distinct logs from the fleet's generators (collector.devtools.fleet, seeded, so
    every run drains the same mix), as the API's schema returns them, ready for encode_entry."""
    from collector.web.schemas import log_schema

    schema = log_schema(settings.max_message_chars, settings.max_log_data_bytes)
    rng = random.Random(42)
    return [schema.load(make_log(device_id("bench-drain", i % 500), i, rng)) for i in range(count)]


# What prefill writes for a log: the collector's encode_entry, or another of the same signature.
Encode = Callable[[dict, dt.datetime], dict]


def prefill(settings, redis_url: str, n: int, chunk: int = 2000, encode: Encode | None = None) -> float:
    """XADD n entries, `chunk` per pipelined round trip, encoded by `encode`: by default the
    collector's own encode_entry (so the drain sees exactly what the API would have written);
    another for the stack of an older checkout (bench.wrk). Returns the seconds it took."""
    import redis

    from collector.pipeline.codec import encode_entry

    encode = encode or encode_entry
    client = redis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5)
    pool = synthetic_logs(settings)
    started = time.monotonic()
    try:
        for offset in range(0, n, chunk):
            received = dt.datetime.now(dt.UTC)
            pipe = client.pipeline(transaction=False)
            for i in range(offset, min(n, offset + chunk)):
                pipe.xadd(settings.stream, encode(pool[i % len(pool)], received))
            pipe.execute()
    finally:
        client.close()
    return time.monotonic() - started


def _logged_at(line: dict) -> float | None:
    """When a JSON log line was written (logging's asctime, to the ms), in seconds; None if it does not say."""
    try:
        return dt.datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def batch_timings(worker_log: Path, offset: int, pool_processes: int, drain_s: float | None) -> dict | None:
    """The drain runs the worker logged after byte `offset` (a "drained batch" JSON line per
    drain_batch call that read entries, with its task's id, its consumer and its time): how
    many, how many entries each, the time spent inside drain_batch; and the drain_stream tasks
    that carried them, each many runs in a row for up to DRAIN_TASK_SECONDS
    (collector.pipeline.drain.drain_for).

    Where the pool's time went, from the lines' times (a run starts `seconds` before its line):
    a task lasts from its first run's start to its last run's line; within it, what drain_batch
    did not take went between runs; from one task's end to the next task's start on the same
    pool process (consumer) is Celery's hand-off (acknowledging the task, receiving and starting
    the next); and the pool's wall time from the first row to the last that no task covered
    went to processes waiting for a task (and to those hand-offs)."""
    seconds, entries, tasks = [], [], {}
    with open(worker_log, "rb") as fh:
        fh.seek(offset)
        for raw in fh:
            if b'"drained batch"' not in raw:
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if not line.get("read"):
                continue
            seconds.append(float(line["seconds"]))
            entries.append(int(line["read"]))
            at = _logged_at(line)
            if line.get("task_id") and at is not None:  # [start, end, pool process] of its task
                task = tasks.setdefault(line["task_id"], [at - seconds[-1], at, line.get("consumer")])
                task[0], task[1] = min(task[0], at - seconds[-1]), max(task[1], at)
    if not seconds:
        return None
    runs, inside = len(seconds), sum(seconds)
    ordered = sorted(seconds)
    out = {
        "runs": runs,
        "mean_entries": round(sum(entries) / runs, 1),
        "median_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * ordered[min(runs - 1, int(runs * 0.95))], 2),
        "mean_ms": round(1000 * inside / runs, 2),
        "pool_processes": pool_processes,
        "pool_wall_ms_per_run": None,
        # None below: the lines name no task (or no time).
        "tasks": len(tasks) or None,
        "runs_per_task": None,
        "task_median_ms": None,        # first run's start to last run's end
        "between_runs_ms": None,       # per run, within its task, outside drain_batch
        "handoff_median_ms": None,     # one task's end to the next's start on the same pool process
        "handoffs": 0,
        "no_task_share": None,         # of the pool's wall time from the first row to the last
    }
    if tasks:
        spans = [end - start for start, end, _ in tasks.values()]
        by_process: dict = {}
        for start, end, consumer in sorted(tasks.values(), key=lambda task: task[0]):
            by_process.setdefault(consumer, []).append((start, end))
        gaps = [max(0.0, after[0] - before[1]) for ran in by_process.values() for before, after in pairwise(ran)]
        out.update(runs_per_task=round(runs / len(tasks), 1), task_median_ms=round(1000 * statistics.median(spans), 1),
                   between_runs_ms=round(1000 * max(0.0, sum(spans) - inside) / runs, 2), handoffs=len(gaps),
                   handoff_median_ms=round(1000 * statistics.median(gaps), 1) if gaps else None)
    if drain_s and pool_processes > 0:
        wall = drain_s * pool_processes
        out["pool_wall_ms_per_run"] = round(1000 * wall / runs, 2)
        if tasks:
            out["no_task_share"] = round(max(0.0, 1 - sum(spans) / wall), 3)
    return out


def run_drain_phase(args: argparse.Namespace, target: Target, stack: Stack, probe: Probe,
                    procs: Processes, encode: Encode | None = None) -> DrainResult:
    """The phase; `encode`: prefill's, for a stack whose code reads entries of another layout."""
    from collector.core.settings import load_settings

    settings = load_settings(stack.base_env)
    sampler = Sampler(probe, procs, interval=0.25)
    log(f"drain: stopping the worker, then pre-filling {settings.stream} with {args.backlog:,} entries")
    stack.stop("worker")
    before = sampler.take()
    if before.backlog:
        log(f"drain: {before.backlog} entries were still queued; they count towards the drain")
    seconds = prefill(settings, target_redis_url(), args.backlog, encode=encode)
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
