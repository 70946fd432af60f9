"""The bench's options (each with a BENCH_* variable), and where its load goes: an
existing stack, or one it starts on a database and Redis namespace of its own."""

from __future__ import annotations

import argparse
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from collector.devtools.processes import ROOT

BENCH_DATABASE = "logs_bench"
BENCH_KEY_PREFIX = "bench:"
# The Makefile exports DATABASE_URL with this default (`export DATABASE_URL ?= ...`), so under
# `make bench` a DATABASE_URL equal to it was most likely not chosen by the user: it is their
# main database, which the bench must not fill with synthetic logs.
MAKEFILE_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/logs"

PHASES = ("batch", "single", "drain")


def env_default(name: str, default, cast=str):
    raw = os.environ.get(name, "")
    return cast(raw) if raw.strip() else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load the collector with Locust, measure accepted/persisted logs/s, latency, "
                    "drain rate, backlog and memory; write bench-results/latest.{md,json}. "
                    "Every option can also be set by the BENCH_* variable named in its help. "
                    "A stack the bench starts gets keys of its own; with one already running, the fleet "
                    "sends DEVICES_API_KEY (a key for the device ids bench-*) and the bench reads /api/stats "
                    "with DEVICES_READER_KEY, else the demo admin and reader keys of `make run` "
                    "(var/demo-keys.env).",
    )
    p.add_argument("--duration", type=float, default=env_default("BENCH_DURATION", 30.0, float),
                   help="Seconds of load per phase [BENCH_DURATION] (default 30).")
    p.add_argument("--users", type=int, default=env_default("BENCH_USERS", 100, int),
                   help="Simulated devices in each load phase [BENCH_USERS] (default 100).")
    p.add_argument("--spawn-rate", type=float, default=env_default("BENCH_SPAWN_RATE", 100.0, float),
                   help="Devices started per second [BENCH_SPAWN_RATE] (default 100).")
    p.add_argument("--batch-size", type=int, default=env_default("BENCH_BATCH_SIZE", 5, int),
                   help="Logs per request in the batch phase [BENCH_BATCH_SIZE] (default 5).")
    p.add_argument("--batch-rate", type=float, default=env_default("BENCH_BATCH_RATE", 0.0, float),
                   help="Logs/s per device in the batch phase; 0 = as fast as the stack answers "
                        "[BENCH_BATCH_RATE] (default 0).")
    p.add_argument("--single-rate", type=float, default=env_default("BENCH_SINGLE_RATE", 5.0, float),
                   help="Logs/s per device in the single-log phase [BENCH_SINGLE_RATE] (default 5).")
    p.add_argument("--read-ratio", type=float, default=env_default("BENCH_READ_RATIO", 0.0, float),
                   help="Reads per send in the load phases, as devices.py's --read-ratio "
                        "[BENCH_READ_RATIO] (default 0: ingest only).")
    p.add_argument("--locust-processes", type=int, default=env_default("BENCH_LOCUST_PROCESSES", 1, int),
                   help="Locust processes generating the load (Locust's --processes) "
                        "[BENCH_LOCUST_PROCESSES] (default 1).")
    p.add_argument("--backlog", type=int, default=env_default("BENCH_BACKLOG", 200_000, int),
                   help="Stream entries pre-filled for the drain measurement [BENCH_BACKLOG] "
                        "(default 200000).")
    p.add_argument("--phases", default=env_default("BENCH_PHASES", ",".join(PHASES)),
                   help=f"Comma-separated subset of {','.join(PHASES)} [BENCH_PHASES] (default all).")
    p.add_argument("--port", type=int, default=env_default("BENCH_PORT", 18723, int),
                   help="nginx port: an existing stack there is used as is [BENCH_PORT] (default 18723).")
    p.add_argument("--api1-port", type=int, default=env_default("BENCH_API1_PORT", 8001, int),
                   help="Port of the first API instance the bench starts [BENCH_API1_PORT] (default 8001).")
    p.add_argument("--api2-port", type=int, default=env_default("BENCH_API2_PORT", 8002, int),
                   help="Port of the second API instance the bench starts [BENCH_API2_PORT] (default 8002).")
    p.add_argument("--database-url", default=None,
                   help=f"Database of a stack the bench starts (default: DATABASE_URL if you set it, "
                        f"else {BENCH_DATABASE} on the default server, wiped at the start).")
    p.add_argument("--key-prefix", default=None,
                   help=f"KEY_PREFIX of a stack the bench starts (default: KEY_PREFIX if set, else "
                        f"{BENCH_KEY_PREFIX!r}, whose keys are wiped at the start).")
    p.add_argument("--max-fail-ratio", type=float, default=env_default("BENCH_MAX_FAIL_RATIO", 0.01, float),
                   help="A load phase fails above this failure ratio [BENCH_MAX_FAIL_RATIO] (default 0.01).")
    p.add_argument("--max-p95-ms", type=float, default=env_default("BENCH_MAX_P95_MS", 1000.0, float),
                   help="A load phase fails above this p95 in ms, 0 = no limit [BENCH_MAX_P95_MS] "
                        "(default 1000).")
    p.add_argument("--settle-timeout", type=float, default=env_default("BENCH_SETTLE_TIMEOUT", 300.0, float),
                   help="Seconds to wait for the backlog to drain after a load phase "
                        "[BENCH_SETTLE_TIMEOUT] (default 300).")
    p.add_argument("--drain-timeout", type=float, default=env_default("BENCH_DRAIN_TIMEOUT", 900.0, float),
                   help="Seconds the drain measurement may take [BENCH_DRAIN_TIMEOUT] (default 900).")
    p.add_argument("--out", type=Path, default=Path(env_default("BENCH_OUT", str(ROOT / "bench-results"))),
                   help="Results directory [BENCH_OUT] (default bench-results/).")
    p.add_argument("--record", type=Path, default=env_default("BENCH_RECORD", None, Path),
                   help="Also write the run's record (latest.json without the raw samples, with the "
                        "printed report) to this file, e.g. docs/bench/latest.json, the record the docs "
                        "quote [BENCH_RECORD] (default: none).")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown or not args.phases:
        p.error(f"--phases: expected a subset of {','.join(PHASES)}, got {','.join(args.phases) or 'nothing'}")
    for name in ("duration", "users", "spawn_rate", "batch_size", "locust_processes", "backlog",
                 "settle_timeout", "drain_timeout"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    return args


@dataclass
class Target:
    """Where the load goes and how the bench sees the stack's database and stream."""

    started: bool                 # True when the bench starts (and stops) the stack itself
    base_url: str
    database_url: str = ""
    key_prefix: str = ""
    wipe_database: bool = False   # the bench's own database: dropped and re-created first
    wipe_redis: bool = False      # the bench's own key prefix: its keys deleted first
    notes: list[str] = field(default_factory=list)
    # What Locust gets besides our environment: the keys the fleet sends (DEVICES_API_KEY,
    # DEVICES_READER_KEY), made for a stack the bench starts; for another stack, set them yourself.
    locust_env: dict[str, str] = field(default_factory=dict, repr=False)


def choose_namespace(args: argparse.Namespace) -> tuple[str, bool, str, bool]:
    """(database_url, is_ours, key_prefix, is_ours) for a stack the bench starts: the
    user's choice if they made one, else the bench's own database and key prefix."""
    env_db = os.environ.get("DATABASE_URL", "").strip()
    if os.environ.get("MAKELEVEL") and env_db == MAKEFILE_DATABASE_URL:
        env_db = ""  # the Makefile's default, not the user's choice: see MAKEFILE_DATABASE_URL
    database_url = args.database_url or env_db
    db_ours = not database_url
    if db_ours:  # the collector's default server, the bench's database
        database_url = own_database_url(BENCH_DATABASE)
    if args.key_prefix is not None:
        prefix, prefix_ours = args.key_prefix, False
    elif "KEY_PREFIX" in os.environ:  # even empty: the user asked for that namespace
        prefix, prefix_ours = os.environ["KEY_PREFIX"], False
    else:
        prefix, prefix_ours = BENCH_KEY_PREFIX, True
    return database_url, db_ours, prefix, prefix_ours


def own_database_url(name: str) -> str:
    """A database of the bench's own on the collector's default server."""
    return urllib.parse.urlsplit(MAKEFILE_DATABASE_URL)._replace(path=f"/{name}").geturl()


def existing_stack_keys() -> tuple[dict[str, str], str]:
    """Keys for a stack the bench did not start, as the environment Locust reads, and where
    they came from: DEVICES_API_KEY / DEVICES_READER_KEY if set; else the admin and reader
    keys `make run` made (COLLECTOR_ADMIN_KEY, COLLECTOR_READER_KEY, from the environment or
    var/demo-keys.env). An admin key, because the bench's device ids (bench-*) are outside
    the demo fleet key's scope."""
    from collector.devtools.demo_keys import DEFAULT_FILE, read_env_file

    if os.environ.get("DEVICES_API_KEY"):
        key = os.environ["DEVICES_API_KEY"]
        return {"DEVICES_API_KEY": key, "DEVICES_READER_KEY": os.environ.get("DEVICES_READER_KEY") or key}, \
            "keys from DEVICES_API_KEY / DEVICES_READER_KEY"
    demo = read_env_file(DEFAULT_FILE)
    admin = os.environ.get("COLLECTOR_ADMIN_KEY") or demo.get("COLLECTOR_ADMIN_KEY", "")
    reader = os.environ.get("COLLECTOR_READER_KEY") or demo.get("COLLECTOR_READER_KEY", "") or admin
    if not admin:
        return {}, "no key sent (none in DEVICES_API_KEY, COLLECTOR_ADMIN_KEY or var/demo-keys.env)"
    return {"DEVICES_API_KEY": admin, "DEVICES_READER_KEY": reader}, \
        "the fleet sent the demo admin key (COLLECTOR_ADMIN_KEY), not a fleet key"


def target_redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def redact(url: str) -> str:
    """A URL for the report, without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        auth, host = rest.rsplit("@", 1)
        return f"{scheme}://{auth.split(':', 1)[0]}@{host}"
    return url
