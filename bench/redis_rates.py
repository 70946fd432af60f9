"""`python -m bench.redis_rates`: what one Redis shard does per second and per CPU second.

On the real Redis, with the fleet's kind of logs (bench.drain.synthetic_logs, encoded by
the collector's encode_entry): ingest's writes, the collector's own
``pipeline.producer.append`` (one MULTI/EXEC of XADDs and the accepted counter) in groups of
5 logs (one request) and of 50 (ten requests sharing a round trip, as the Appender does
under load); then the drain's reads, XREADGROUP COUNT 100 and an XACK of those ids, of
the stream the 50s wrote. Each from --clients processes. For each it prints logs/s and
Redis's own CPU (INFO's used_cpu_user + used_cpu_sys) per million logs.

It uses a key prefix of its own (``bench-redis-rates:``), wiped at the start and the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import redis

from bench.common import BenchError, dumps, log
from bench.drain import synthetic_logs
from bench.machine import git_revision, machine_info
from bench.options import target_redis_url
from collector.core.settings import load_settings
from collector.pipeline.codec import encode_entry
from collector.pipeline.counters import accepted_counter
from collector.pipeline.producer import append

KEY_PREFIX = "bench-redis-rates:"
GROUPS = (5, 50)  # logs per MULTI/EXEC: one request of 5; ten such requests sharing a round trip
READ_COUNT = 100  # the drain's BATCH_SIZE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.redis_rates", description=__doc__.split("\n\n")[1])
    p.add_argument("--logs", type=int, default=500_000, help="Logs per phase (default 500000).")
    p.add_argument("--clients", type=int, default=4, help="Client processes per phase (default 4).")
    p.add_argument("--record", type=Path, default=None, help="Also write the result to this file.")
    args = p.parse_args(argv)
    if args.logs <= 0 or args.clients <= 0:
        p.error("--logs and --clients must be > 0")
    return args


def _ingest(url: str, stream: str, counter: tuple[str, str], entries: list[dict], group: int, logs: int):
    """append() `logs` entries in MULTI/EXECs of `group`: (commands sent, logs)."""
    client, sent, commands = redis.Redis.from_url(url), 0, 0
    while sent < logs:
        n = min(group, logs - sent)
        append(client, stream, [entries[(sent + k) % len(entries)] for k in range(n)], counter)
        sent, commands = sent + n, commands + n + 3  # MULTI, the XADDs, HINCRBY, EXEC
    return commands, sent


def _drain(url: str, stream: str, group: str, consumer: str):
    """XREADGROUP COUNT 100 + XACK until nothing is left: (commands sent, entries read)."""
    client, read, commands = redis.Redis.from_url(url), 0, 0
    while True:
        reply = client.xreadgroup(group, consumer, {stream: ">"}, count=READ_COUNT)
        commands += 1
        if not reply or not reply[0][1]:
            return commands, read
        ids = [entry_id for entry_id, _ in reply[0][1]]
        client.xack(stream, group, *ids)
        commands, read = commands + 1, read + len(ids)


def _redis_now(client: redis.Redis) -> tuple[float, int]:
    """Redis's CPU seconds (all its threads) and commands processed so far: one INFO."""
    info = client.info()
    return info["used_cpu_user"] + info["used_cpu_sys"], info["total_commands_processed"]


def measure(name: str, client: redis.Redis, work, calls: list[tuple]) -> dict:
    """Run work(*call) for each call in a process of its own, all at once (process start
    included in the time); Redis's CPU meanwhile. Spawned, not forked: a fork copies the
    caller's open connections (a test process's Celery broker pool, whose after-fork
    cleanup then blocks on its socket)."""
    cpu0, commands0 = _redis_now(client)
    started = time.monotonic()
    with ProcessPoolExecutor(len(calls), mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(work, *zip(*calls, strict=True)))
    seconds = time.monotonic() - started
    cpu1, commands1 = _redis_now(client)
    logs, cpu = sum(n for _, n in done), max(cpu1 - cpu0, 1e-6)  # INFO counts in µs; a tiny run may see none
    return {"phase": name, "logs": logs, "seconds": round(seconds, 2), "logs_per_s": round(logs / seconds),
            "redis_cpu_s": round(cpu, 2), "redis_busy_percent": round(100 * cpu / seconds, 1),
            "redis_cpu_s_per_million": round(cpu / logs * 1e6, 2), "logs_per_redis_cpu_s": round(logs / cpu),
            # commands Redis ran meanwhile that these processes did not send (the first INFO is one)
            "other_commands": commands1 - commands0 - sum(c for c, _ in done) - 1}


def run(redis_url: str, logs: int, clients: int, key_prefix: str = KEY_PREFIX) -> list[dict]:
    settings = load_settings({"REDIS_URL": redis_url, "KEY_PREFIX": key_prefix})
    stream, counter, group = settings.stream, accepted_counter(settings), settings.consumer_group
    received = dt.datetime.now(dt.UTC)
    entries = [encode_entry(one, received) for one in synthetic_logs(settings)]
    shares = [logs // clients + (i < logs % clients) for i in range(clients)]
    client = redis.Redis.from_url(redis_url)
    results = []
    try:
        wipe(client, key_prefix)
        for size in GROUPS:
            client.delete(stream, counter[0])
            log(f"ingest: {logs:,} logs in MULTI/EXECs of {size} from {clients} processes")
            results.append(measure(f"ingest, MULTI/EXEC of {size}", client, _ingest,
                                   [(redis_url, stream, counter, entries, size, n) for n in shares]))
            if client.xlen(stream) != logs:
                raise BenchError(f"the stream holds {client.xlen(stream):,} entries, expected {logs:,}")
        client.xgroup_create(stream, group, id="0")  # the stream the 50s wrote, from its start
        log(f"drain: XREADGROUP COUNT {READ_COUNT} + XACK from {clients} consumers")
        results.append(measure(f"drain, XREADGROUP COUNT {READ_COUNT} + XACK", client, _drain,
                               [(redis_url, stream, group, f"rates-{i}") for i in range(clients)]))
        if results[-1]["logs"] != logs:
            raise BenchError(f"the drain read {results[-1]['logs']:,} entries, expected {logs:,}")
    finally:
        wipe(client, key_prefix)
        client.close()
    return results


def wipe(client: redis.Redis, prefix: str) -> None:
    if keys := list(client.scan_iter(match=f"{prefix}*", count=1000)):
        client.delete(*keys)


def report(results: list[dict], clients: int) -> str:
    lines = [f"One Redis ({clients} client processes per phase; Redis CPU = INFO used_cpu_user + used_cpu_sys):",
             "", "| phase | logs | s | logs/s | Redis busy, % of a core | Redis CPU s per million logs "
             "| logs per Redis CPU second | other clients' commands |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['phase']} | {r['logs']:,} | {r['seconds']} | {r['logs_per_s']:,} | {r['redis_busy_percent']} "
              f"| {r['redis_cpu_s_per_million']} | {r['logs_per_redis_cpu_s']:,} | {r['other_commands']:,} |"
              for r in results]
    *ingest, drain = results
    lines.append("")
    for size, r in zip(GROUPS, ingest, strict=True):
        both = r["redis_cpu_s_per_million"] + drain["redis_cpu_s_per_million"]
        lines.append(f"One Redis core, ingest in MULTI/EXECs of {size} plus the drain: {1e6 / both:,.0f} logs/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at, revision = dt.datetime.now(dt.UTC), git_revision()
    try:
        results = run(target_redis_url(), args.logs, args.clients)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    text = report(results, args.clients)
    print(text)
    if args.record is not None:
        with redis.Redis.from_url(target_redis_url()) as client:
            version = client.info("server")["redis_version"]
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(dumps({
            "command": "python -m bench.redis_rates " + " ".join(argv if argv is not None else sys.argv[1:]),
            "started_at": started_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "finished_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "revision": revision,
            "machine": machine_info(), "redis_version": version, "logs": args.logs, "clients": args.clients,
            "phases": results, "printed": text}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
