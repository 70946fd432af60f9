"""`python -m bench`: see bench/__init__.py for what is measured and how.

Layout of this file: options; the machine; the services (start/stop in process
groups); probes (row count, backlog, RSS, CPU); the phases (Locust load, drain);
the report; main(). Every wait has a timeout and every process the bench
starts is stopped in a `finally`, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "devices.py"
PROCFILE = ROOT / "Procfile"

BENCH_DATABASE = "logs_bench"
BENCH_KEY_PREFIX = "bench:"
# The Makefile exports DATABASE_URL with this default (`export DATABASE_URL ?= ...`), so under
# `make bench` a DATABASE_URL equal to it was most likely not chosen by the user: it is their
# main database, which the bench must not fill with synthetic logs.
MAKEFILE_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/logs"

PHASES = ("batch", "single", "drain")


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------

def _env(name: str, default, cast=str):
    raw = os.environ.get(name, "")
    return cast(raw) if raw.strip() else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load the collector with Locust, measure accepted/persisted logs/s, latency, "
                    "drain rate, backlog and memory; write bench-results/latest.{md,json}. "
                    "Every option can also be set by the BENCH_* variable named in its help.",
    )
    p.add_argument("--duration", type=float, default=_env("BENCH_DURATION", 30.0, float),
                   help="Seconds of load per phase [BENCH_DURATION] (default 30).")
    p.add_argument("--users", type=int, default=_env("BENCH_USERS", 100, int),
                   help="Simulated devices in each load phase [BENCH_USERS] (default 100).")
    p.add_argument("--spawn-rate", type=float, default=_env("BENCH_SPAWN_RATE", 100.0, float),
                   help="Devices started per second [BENCH_SPAWN_RATE] (default 100).")
    p.add_argument("--batch-size", type=int, default=_env("BENCH_BATCH_SIZE", 5, int),
                   help="Logs per request in the batch phase [BENCH_BATCH_SIZE] (default 5).")
    p.add_argument("--batch-rate", type=float, default=_env("BENCH_BATCH_RATE", 0.0, float),
                   help="Logs/s per device in the batch phase; 0 = as fast as the stack answers "
                        "[BENCH_BATCH_RATE] (default 0).")
    p.add_argument("--single-rate", type=float, default=_env("BENCH_SINGLE_RATE", 5.0, float),
                   help="Logs/s per device in the single-log phase [BENCH_SINGLE_RATE] (default 5).")
    p.add_argument("--read-ratio", type=float, default=_env("BENCH_READ_RATIO", 0.0, float),
                   help="Reads per send in the load phases, as devices.py's --read-ratio "
                        "[BENCH_READ_RATIO] (default 0: ingest only).")
    p.add_argument("--locust-processes", type=int, default=_env("BENCH_LOCUST_PROCESSES", 1, int),
                   help="Locust processes generating the load (Locust's --processes) "
                        "[BENCH_LOCUST_PROCESSES] (default 1).")
    p.add_argument("--backlog", type=int, default=_env("BENCH_BACKLOG", 200_000, int),
                   help="Stream entries pre-filled for the drain measurement [BENCH_BACKLOG] "
                        "(default 200000).")
    p.add_argument("--phases", default=_env("BENCH_PHASES", ",".join(PHASES)),
                   help=f"Comma-separated subset of {','.join(PHASES)} [BENCH_PHASES] (default all).")
    p.add_argument("--port", type=int, default=_env("BENCH_PORT", 18723, int),
                   help="nginx port: an existing stack there is used as is [BENCH_PORT] (default 18723).")
    p.add_argument("--api1-port", type=int, default=_env("BENCH_API1_PORT", 8001, int),
                   help="Port of the first API instance the bench starts [BENCH_API1_PORT] (default 8001).")
    p.add_argument("--api2-port", type=int, default=_env("BENCH_API2_PORT", 8002, int),
                   help="Port of the second API instance the bench starts [BENCH_API2_PORT] (default 8002).")
    p.add_argument("--database-url", default=None,
                   help=f"Database of a stack the bench starts (default: DATABASE_URL if you set it, "
                        f"else {BENCH_DATABASE} on the default server, wiped at the start).")
    p.add_argument("--key-prefix", default=None,
                   help=f"KEY_PREFIX of a stack the bench starts (default: KEY_PREFIX if set, else "
                        f"{BENCH_KEY_PREFIX!r}, whose keys are wiped at the start).")
    p.add_argument("--max-fail-ratio", type=float, default=_env("BENCH_MAX_FAIL_RATIO", 0.01, float),
                   help="A load phase fails above this failure ratio [BENCH_MAX_FAIL_RATIO] (default 0.01).")
    p.add_argument("--max-p95-ms", type=float, default=_env("BENCH_MAX_P95_MS", 1000.0, float),
                   help="A load phase fails above this p95 in ms, 0 = no limit [BENCH_MAX_P95_MS] "
                        "(default 1000).")
    p.add_argument("--settle-timeout", type=float, default=_env("BENCH_SETTLE_TIMEOUT", 300.0, float),
                   help="Seconds to wait for the backlog to drain after a load phase "
                        "[BENCH_SETTLE_TIMEOUT] (default 300).")
    p.add_argument("--drain-timeout", type=float, default=_env("BENCH_DRAIN_TIMEOUT", 900.0, float),
                   help="Seconds the drain measurement may take [BENCH_DRAIN_TIMEOUT] (default 900).")
    p.add_argument("--out", type=Path, default=Path(_env("BENCH_OUT", str(ROOT / "bench-results"))),
                   help="Results directory [BENCH_OUT] (default bench-results/).")
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


def choose_namespace(args: argparse.Namespace) -> tuple[str, bool, str, bool]:
    """(database_url, is_ours, key_prefix, is_ours) for a stack the bench starts: the
    user's choice if they made one, else the bench's own database and key prefix."""
    env_db = os.environ.get("DATABASE_URL", "").strip()
    if os.environ.get("MAKELEVEL") and env_db == MAKEFILE_DATABASE_URL:
        env_db = ""  # the Makefile's default, not the user's choice: see MAKEFILE_DATABASE_URL
    database_url = args.database_url or env_db
    db_ours = not database_url
    if db_ours:  # the collector's default server, the bench's database
        database_url = urllib.parse.urlsplit(MAKEFILE_DATABASE_URL)._replace(path=f"/{BENCH_DATABASE}").geturl()
    if args.key_prefix is not None:
        prefix, prefix_ours = args.key_prefix, False
    elif "KEY_PREFIX" in os.environ:  # even empty: the user asked for that namespace
        prefix, prefix_ours = os.environ["KEY_PREFIX"], False
    else:
        prefix, prefix_ours = BENCH_KEY_PREFIX, True
    return database_url, db_ours, prefix, prefix_ours


def redact(url: str) -> str:
    """A URL for the report, without its password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        auth, host = rest.rsplit("@", 1)
        return f"{scheme}://{auth.split(':', 1)[0]}@{host}"
    return url


# ---------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------

def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                model = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(ram_kib / 1024 / 1024, 1),
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], check=False, cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------
# Services: the Procfile's processes, each in its own process group
# ---------------------------------------------------------------------------------------

def read_procfile(path: Path = PROCFILE) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (env assignments, argv) for each `name: VAR=value command args` line.

    The bench starts exactly what `make run` starts, so a change to the Procfile (say,
    worker concurrency) shows up in the next benchmark without touching this file.
    """
    entries = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        words = shlex.split(command)
        env = {}
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        entries[name.strip()] = (env, words)
    return entries


class Service:
    """One long-running process of the stack, started in a new session (process group)
    so that stopping it also reaches whatever it forked."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        log(f"started {self.name} (pid {self.proc.pid}): {shlex.join(self.argv)}")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the leader (Gunicorn, Celery and nginx then shut down their own children
        gracefully), SIGKILL to the whole group after `timeout` or for anything left over."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop within {timeout:.0f} s: killing it")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)  # orphaned children, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        log(f"stopped {self.name} (exit {self.proc.returncode})")
        self.proc = None


class Stack:
    """api1, api2, worker, beat and nginx from the Procfile, on the bench's ports and namespace."""

    NAMES = ("worker", "beat", "api1", "api2", "nginx")

    def __init__(self, args: argparse.Namespace, target: Target, run_dir: Path) -> None:
        procfile = read_procfile()
        missing = [n for n in self.NAMES if n not in procfile]
        if missing:
            raise BenchError(f"the Procfile has no {', '.join(missing)} entry")
        base = {k: v for k, v in os.environ.items() if k not in ("BIND", "PORT", "INSTANCE_NAME")}
        base.update(
            DATABASE_URL=target.database_url,
            KEY_PREFIX=target.key_prefix,
            # Not the default /tmp path, which a `make run` beat on this host would share.
            BEAT_SCHEDULE_FILE=str(run_dir / "celerybeat-schedule"),
            PYTHONUNBUFFERED="1",
        )
        ports = {"api1": args.api1_port, "api2": args.api2_port}
        self.base_env = base
        self.services: dict[str, Service] = {}
        for name in self.NAMES:
            env_assignments, argv = procfile[name]
            env = {**base, **env_assignments}
            if "INSTANCE_NAME" in env_assignments:
                env["INSTANCE_NAME"] = f"bench-{env_assignments['INSTANCE_NAME']}"
            if name in ports:
                env["PORT"] = str(ports[name])
            if name == "nginx":
                env.update(API1_ADDR=f"127.0.0.1:{args.api1_port}", API2_ADDR=f"127.0.0.1:{args.api2_port}",
                           LISTEN=f"127.0.0.1:{args.port}", NGINX_STATE_DIR=str(run_dir / "nginx"))
            argv = [_bench_node_name(w) if i and argv[i - 1] in ("-n", "--hostname") else w
                    for i, w in enumerate(argv)]
            self.services[name] = Service(name, argv, env, run_dir / "logs" / f"{name}.log")

    def start(self, name: str) -> None:
        self.services[name].start()

    def stop(self, name: str) -> None:
        self.services[name].stop()

    def stop_all(self) -> None:
        # Front to back: no new requests, then no new logs, then the drain.
        for name in ("nginx", "api1", "api2", "beat", "worker"):
            try:
                self.services[name].stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others, whatever happened
                log(f"could not stop {name}: {exc!r}")

    def check(self) -> None:
        """Fail fast if a service died: numbers from a half-dead stack would mislead."""
        for name, service in self.services.items():
            if service.proc is not None and not service.alive():
                raise BenchError(f"{name} exited with {service.proc.returncode}; see {service.log_path}")

    def pids(self, *names: str) -> list[int]:
        return [s.pid for n in names if (s := self.services[n]).alive() and s.pid]


def _bench_node_name(name: str) -> str:
    """worker1@%h -> bench-worker1@%h: a Celery node name of our own."""
    return name if name.startswith("bench-") else f"bench-{name}"


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


def run_checked(argv: list[str], env: dict[str, str], timeout: float, what: str) -> None:
    try:
        out = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise BenchError(f"{what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    log(f"{what}: {(out.stdout or out.stderr).strip().splitlines()[-1:] or ['ok']}")


# ---------------------------------------------------------------------------------------
# HTTP and waiting
# ---------------------------------------------------------------------------------------

def http_get(url: str, timeout: float = 3.0) -> tuple[int, dict | None] | None:
    """(status, JSON body or None), or None if nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def wait_until(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.25,
               check: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check:
            check()
        if condition():
            return
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------------------
# Probes: rows, backlog, memory and CPU
# ---------------------------------------------------------------------------------------

class Probe:
    """What the bench reads while the stack runs: rows stored and stream backlog."""

    source = ""

    def persisted(self) -> int:
        raise NotImplementedError

    def backlog(self) -> int | None:
        raise NotImplementedError

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class DirectProbe(Probe):
    """`SELECT count(*) FROM logs` and XINFO GROUPS, straight from PostgreSQL and Redis:
    for a stack the bench started, whose database and stream it knows."""

    source = "SELECT count(*) FROM logs"

    def __init__(self, database_url: str, redis_url: str, stream: str, group: str) -> None:
        import psycopg
        import redis

        self.conn = psycopg.connect(database_url, autocommit=True, connect_timeout=5,
                                    options="-c statement_timeout=30000")
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.stream, self.group = stream, group

    def persisted(self) -> int:
        return self.conn.execute("SELECT count(*) FROM logs").fetchone()[0]

    def backlog(self) -> int | None:
        """lag (never delivered to the group) + pending (delivered, not acknowledged)."""
        import redis

        try:
            groups = self.redis.xinfo_groups(self.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return 0
            raise
        info = next((g for g in groups if _text(g["name"]) == self.group), None)
        if info is None:
            return self.redis.xlen(self.stream)  # no group yet: nothing was delivered
        lag = info.get("lag")
        if lag is None:  # Redis cannot tell (e.g. after deletions); derive it when possible
            read = info.get("entries-read")
            lag = None if read is None else max(0, self.redis.xinfo_stream(self.stream)["entries-added"] - read)
        return None if lag is None else lag + info["pending"]

    def extra(self) -> dict:
        memory = self.redis.info("memory")
        return {
            "stream_length": self.redis.xlen(self.stream),
            "redis_used_memory_mib": round(memory["used_memory"] / 2**20, 1),
            "postgres_table_mib": round(self.conn.execute(
                "SELECT pg_total_relation_size('logs')").fetchone()[0] / 2**20, 1),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.redis.close()


class HttpProbe(Probe):
    """/api/stats of a stack the bench did not start: its own view of its PostgreSQL
    (total_logs, kept in the insert transactions) and of its stream, without guessing
    which database and key prefix it uses."""

    source = "GET /api/stats total_logs"

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/api/stats"
        self._last: tuple[float, dict] = (0.0, {})

    def _stats(self) -> dict:
        """One GET serves the persisted() and backlog() of the same sample."""
        if time.monotonic() - self._last[0] < 0.1:
            return self._last[1]
        answer = http_get(self.url, timeout=10)
        if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
            raise BenchError(f"{self.url} did not answer 200 with JSON: {answer}")
        self._last = (time.monotonic(), answer[1])
        return answer[1]

    def persisted(self) -> int:
        return int(self._stats()["total_logs"])

    def backlog(self) -> int | None:
        pipeline = self._stats().get("pipeline", {})
        if pipeline.get("lag") is None:
            return None
        return int(pipeline["lag"]) + int(pipeline.get("pending", 0))

    def extra(self) -> dict:
        return {"stream_length": self._stats().get("pipeline", {}).get("stream_length")}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Proc:
    ppid: int
    comm: str
    cmdline: str
    cpu_ticks: int    # utime + stime


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_table() -> dict[int, Proc]:
    """Every process we can see, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2:].split()  # comm may contain spaces and ')'
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            table[int(entry.name)] = Proc(int(rest[1]), comm, cmdline, int(rest[11]) + int(rest[12]))
    return table


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def descendants(roots: list[int], table: dict[int, Proc]) -> set[int]:
    """`roots` and everything they forked, still alive."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


class Processes:
    """Which processes make up each part of the system, and what they use.

    RSS (VmRSS, summed over a process tree) of the API's Gunicorn processes and of the
    Celery worker with its pool: a sum of RSS counts pages shared after fork once per
    process, so it overstates the memory used, but it is what grows if a process leaks.
    CPU time (utime + stime) per part, also of PostgreSQL, Redis, nginx and Locust, to
    see where the cores went during a phase (PostgreSQL and Redis: every such process
    on the host)."""

    def __init__(self, stack: Stack | None) -> None:
        self.stack = stack
        self.locust_pid: int | None = None

    def groups(self, table: dict[int, Proc]) -> dict[str, set[int]]:
        if self.stack is not None:
            roots = {"api": self.stack.pids("api1", "api2"), "worker": self.stack.pids("worker"),
                     "nginx": self.stack.pids("nginx")}
        else:
            # A stack we did not start: every matching process on this host.
            def top(match: Callable[[Proc], bool]) -> list[int]:
                pids = {pid for pid, proc in table.items() if match(proc)}
                return [pid for pid in pids if table[pid].ppid not in pids]

            roots = {
                "api": top(lambda p: "gunicorn" in p.cmdline and "gunicorn.conf.py" in p.cmdline),
                "worker": top(lambda p: "celery" in p.cmdline and "tasks.celery_app" in p.cmdline
                              and " worker" in p.cmdline),
                "nginx": top(lambda p: p.comm == "nginx"),
            }
        groups = {name: descendants(pids, table) for name, pids in roots.items()}
        groups["locust"] = descendants([self.locust_pid], table) if self.locust_pid else set()
        groups["postgres"] = {pid for pid, p in table.items() if p.comm.startswith("postgres")}
        groups["redis"] = {pid for pid, p in table.items() if p.comm.startswith("redis-server")}
        return groups

    def rss(self) -> dict:
        table = proc_table()
        groups = self.groups(table)
        out = {}
        for name in ("api", "worker"):
            out[f"{name}_mib"] = round(sum(_rss_kib(pid) for pid in groups[name]) / 1024, 1)
            out[f"{name}_processes"] = len(groups[name])
        return out

    def cpu(self) -> dict[str, dict[int, int]]:
        """Per part: pid -> CPU ticks so far (a snapshot; see cpu_percent)."""
        table = proc_table()
        return {name: {pid: table[pid].cpu_ticks for pid in pids} for name, pids in self.groups(table).items()}


def cpu_percent(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]], seconds: float) -> dict:
    """Average CPU per part between two snapshots, in % of one core (200% = two cores busy).
    Processes born in between count from zero; ones that died in between are missed."""
    out = {}
    for name, pids in after.items():
        ticks = sum(t - before.get(name, {}).get(pid, 0) for pid, t in pids.items())
        out[name] = round(100 * ticks / CLOCK_TICKS / seconds, 1) if seconds > 0 else None
    return out


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------

@dataclass
class Sample:
    t: float                # time.monotonic()
    persisted: int
    backlog: int | None


class Sampler:
    """Row count and backlog over time, plus peak RSS, for one phase.

    count(*) scans the table, so it is taken at most every `interval` seconds, and less
    often when it gets slow (it must not be what loads the database)."""

    def __init__(self, probe: Probe, procs: Processes, interval: float = 0.5) -> None:
        self.probe, self.procs, self.base_interval = probe, procs, interval
        self.interval = interval
        self.samples: list[Sample] = []
        self.peak: dict = {}
        self._next = 0.0

    def take(self) -> Sample:
        started = time.monotonic()
        persisted, backlog = self.probe.persisted(), self.probe.backlog()
        cost = time.monotonic() - started
        self.interval = max(self.base_interval, 10 * cost)  # stay under ~10% of one core
        sample = Sample(started, persisted, backlog)
        self.samples.append(sample)
        rss = self.procs.rss()
        for key, value in rss.items():
            self.peak[key] = max(self.peak.get(key, 0), value)
        self._next = started + self.interval
        return sample

    def due(self) -> bool:
        return time.monotonic() >= self._next

    def wait(self) -> None:
        """Sleep until the next sample is due."""
        time.sleep(max(0.0, self._next - time.monotonic()))

    def persisted_at(self, t: float) -> float:
        """Rows stored at time t, interpolated between the samples around it."""
        s = self.samples
        if not s:
            return 0.0
        if t <= s[0].t:
            return float(s[0].persisted)
        for a, b in itertools.pairwise(s):
            if a.t <= t <= b.t:
                return a.persisted + (b.persisted - a.persisted) * (t - a.t) / ((b.t - a.t) or 1)
        return float(s[-1].persisted)

    def backlog_at(self, t: float) -> int | None:
        """Backlog of the sample nearest to t."""
        if not self.samples:
            return None
        return min(self.samples, key=lambda x: abs(x.t - t)).backlog

    def series(self, origin: float) -> list[list]:
        return [[round(x.t - origin, 2), x.persisted, x.backlog] for x in self.samples]


def settle(sampler: Sampler, timeout: float, check: Callable[[], None] | None,
           stop_when: Callable[[Sample], bool] | None = None) -> float | None:
    """Sample until the backlog is 0 and the row count has stopped moving (or
    `stop_when`); returns when that happened, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    previous = sampler.take()
    while time.monotonic() < deadline:
        if check:
            check()
        sampler.wait()
        current = sampler.take()
        if stop_when is not None and stop_when(current):
            return current.t
        if current.backlog == 0 and current.persisted == previous.persisted:
            return previous.t  # nothing moved since the previous sample: done by then
        previous = current
    return None


# ---------------------------------------------------------------------------------------
# Load phases (Locust)
# ---------------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    name: str
    label: str
    users: int
    rate_per_device: float          # logs/s, 0 = unthrottled
    batch_ratio: float
    duration_s: float
    locust_exit_code: int | None
    thresholds_met: bool
    accepted_logs: int
    accepted_per_s: float
    persisted_per_s: float
    requests: int
    failures: int
    fail_ratio: float
    ingest_endpoint: str
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests_per_s: float
    backlog_at_load_end: int | None
    catch_up_s: float | None
    persisted_after_settle: int
    lost_logs: int | None           # accepted but not stored once settled (None: cannot tell)
    rss: dict                       # peak, see Processes
    cpu: dict | None                # % of one core per part during the load window
    end_state: dict                 # stream length, Redis memory, table size once settled
    failure_kinds: list[dict]
    samples: list[list]             # [seconds since load start, rows, backlog]


_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def _log_moment(line: str) -> float:
    """time.monotonic() of a Locust log line, from its own (local) timestamp, so the
    moment is exact however late we read the line; now if it has none."""
    match = _LOG_TIME.match(line)
    if not match:
        return time.monotonic()
    wall = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return time.monotonic() - (time.time() - wall)


def error_report(text: str) -> list[dict]:
    """The "Error report" Locust prints at exit: [{count, error}], most frequent first."""
    kinds, inside = [], False
    for line in text.splitlines():
        if line.startswith("Error report"):
            inside = True
            continue
        match = re.match(r"^\s*(\d+)\s{2,}(\S.*?)\s*$", line) if inside else None
        if match:
            kinds.append({"count": int(match.group(1)), "error": match.group(2)})
        elif inside and kinds and not line.startswith(("-", "#")):
            break
    return sorted(kinds, key=lambda k: -k["count"])


def _percentile(histogram: dict[float, int], p: float) -> float | None:
    """Locust's own percentile rule over its response-time histogram (ms bucket -> count)."""
    total = sum(histogram.values())
    if not total:
        return None
    wanted, seen = int(total * p), 0
    for bucket in sorted(histogram, reverse=True):
        seen += histogram[bucket]
        if total - seen <= wanted:
            return bucket
    return 0.0


def locust_totals(entries: list[dict], name: str | None = None) -> dict:
    """Requests, failures and p50/p95/p99 from Locust's --json-file, over the entries
    named `name` (all when None).

    Read from --json, not from the --csv files: Locust rewrites those once a second and
    does not write them again at exit, so they miss the run's last second or so."""
    chosen = [e for e in entries if name is None or e.get("name") == name]
    histogram: dict[float, int] = {}
    for entry in chosen:
        for bucket, count in (entry.get("response_times") or {}).items():
            histogram[float(bucket)] = histogram.get(float(bucket), 0) + int(count)
    return {
        "requests": sum(int(e.get("num_requests", 0)) for e in chosen),
        "failures": sum(int(e.get("num_failures", 0)) for e in chosen),
        **{f"p{round(q * 100)}_ms": _percentile(histogram, q) for q in (0.5, 0.95, 0.99)},
    }


def run_load_phase(name: str, label: str, args: argparse.Namespace, target: Target, run_dir: Path,
                   probe: Probe, procs: Processes, stack: Stack | None, *, rate: float,
                   batch_ratio: float) -> PhaseResult:
    """One headless Locust run of `args.duration` seconds, sampled from start to settled."""
    csv_prefix = run_dir / name
    accepted_file = run_dir / f"{name}-accepted.txt"
    locust_log = run_dir / "logs" / f"locust-{name}.log"
    locust_log.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(args.users), "-r", f"{args.spawn_rate:g}", "-t", f"{args.duration:g}s",
        "--host", target.base_url, "--csv", str(csv_prefix), "--json", "--only-summary",
        # Let requests in flight finish at the end, so the accepted count is exact.
        "--stop-timeout", "10",
        "--batch-size", str(args.batch_size), "--rate", f"{rate:g}", "--batch-ratio", f"{batch_ratio:g}",
        "--read-ratio", f"{args.read_ratio:g}", "--device-prefix", f"bench-{name}",
        "--max-fail-ratio", f"{args.max_fail_ratio:g}", "--max-p95-ms", f"{args.max_p95_ms:g}",
        "--accepted-file", str(accepted_file),
    ]
    if args.locust_processes > 1:
        argv += ["--processes", str(args.locust_processes)]
    check = stack.check if stack else None
    sampler = Sampler(probe, procs)
    before = sampler.take()
    if before.backlog:
        log(f"phase {name}: waiting for {before.backlog:,} queued entries to drain first")
        settle(sampler, args.settle_timeout, check)
        before = sampler.samples[-1]
        sampler.samples.clear()
    log(f"phase {name}: {label}, {args.duration:g} s")

    # Locust logs "Ramping to ..." when its --run-time clock starts and "--run-time limit
    # reached" when it stops: those two lines (their own timestamps) delimit the load window.
    t_load_start = t_load_end = None
    cpu_start = cpu_last = cpu_end = None   # (monotonic time, Processes.cpu() snapshot)
    # --json puts the final stats on stdout; Locust's own log and summary go to stderr.
    json_path = Path(f"{csv_prefix}.json")
    with open(locust_log, "wb") as err, open(json_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    procs.locust_pid = proc.pid
    launched = time.monotonic()
    deadline = launched + args.duration + 120  # start-up, stop-timeout and shutdown included
    def scan(tail) -> None:
        nonlocal t_load_start, t_load_end, cpu_start, cpu_end
        for line in tail.read().decode(errors="replace").splitlines():
            if t_load_start is None and "Ramping to" in line:
                t_load_start, cpu_start = _log_moment(line), (time.monotonic(), procs.cpu())
            elif t_load_end is None and "run-time limit reached" in line:
                t_load_end = _log_moment(line)
                if proc.poll() is None:
                    cpu_end = (time.monotonic(), procs.cpu())

    try:
        with open(locust_log, "rb") as tail:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"locust ({name}) did not finish in time; see {locust_log}")
                if check:
                    check()
                scan(tail)
                if sampler.due():
                    sampler.take()
                    if cpu_start and not t_load_end:
                        cpu_last = (time.monotonic(), procs.cpu())
                time.sleep(0.05)
            scan(tail)  # what Locust wrote just before it exited
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        procs.locust_pid = None
    exited = time.monotonic()
    text = locust_log.read_text(errors="replace")
    if t_load_start is None:
        raise BenchError(f"locust ({name}) never started its load (exit {proc.returncode}); see {locust_log}")
    t_load_end = t_load_end or min(exited, t_load_start + args.duration)
    if proc.returncode not in (0, 1):  # 1 = thresholds missed, reported as such
        raise BenchError(f"locust ({name}) failed with exit code {proc.returncode}; see {locust_log}")

    cpu_end = cpu_end or cpu_last  # Locust exited within one sample of the end: use the last one
    sampler.take()
    settled_at = settle(sampler, args.settle_timeout, check)
    after = sampler.samples[-1]
    window = t_load_end - t_load_start

    try:
        accepted = int(accepted_file.read_text().strip())
    except (OSError, ValueError):
        raise BenchError(f"locust ({name}) wrote no --accepted-file; see {locust_log}") from None
    try:
        entries = json.loads(json_path.read_text())
    except (OSError, ValueError):
        raise BenchError(f"locust ({name}) printed no --json stats; see {locust_log}") from None
    endpoint = "/api/logs/batch" if batch_ratio >= 0.5 else "/api/log"
    ingest, total = locust_totals(entries, endpoint), locust_totals(entries)
    requests, failures = total["requests"], total["failures"]
    failure_kinds = error_report(text)
    stored = after.persisted - before.persisted
    result = PhaseResult(
        name=name, label=label, users=args.users, rate_per_device=rate, batch_ratio=batch_ratio,
        duration_s=round(window, 2), locust_exit_code=proc.returncode, thresholds_met=proc.returncode == 0,
        accepted_logs=accepted, accepted_per_s=round(accepted / window, 1),
        persisted_per_s=round((sampler.persisted_at(t_load_end) - sampler.persisted_at(t_load_start)) / window, 1),
        requests=requests, failures=failures, fail_ratio=round(failures / requests, 5) if requests else 0.0,
        ingest_endpoint=endpoint,
        p50_ms=ingest["p50_ms"], p95_ms=ingest["p95_ms"], p99_ms=ingest["p99_ms"],
        requests_per_s=round(requests / window, 1),
        backlog_at_load_end=sampler.backlog_at(t_load_end),
        catch_up_s=round(max(0.0, settled_at - t_load_end), 1) if settled_at else None,
        persisted_after_settle=stored,
        # Only a stack of our own sees no other writers; and only a settled one is final.
        lost_logs=(accepted - stored) if target.started and settled_at else None,
        rss=dict(sampler.peak),
        cpu=cpu_percent(cpu_start[1], cpu_end[1], cpu_end[0] - cpu_start[0]) if cpu_start and cpu_end else None,
        end_state=probe.extra(), failure_kinds=failure_kinds, samples=sampler.series(t_load_start),
    )
    if "thresholds missed" in text:
        log(f"phase {name}: " + next(line for line in text.splitlines() if "thresholds missed" in line).split(
            "devices: ", 1)[-1])
    if settled_at is None:
        log(f"phase {name}: backlog not drained within {args.settle_timeout:g} s (--settle-timeout)")
    log(f"phase {name}: accepted {accepted} logs ({result.accepted_per_s:,.0f}/s), "
        f"persisted {result.persisted_per_s:,.0f}/s during load, {failures} failed requests")
    return result


# ---------------------------------------------------------------------------------------
# Drain rate (stack started by the bench only: it stops and restarts the worker)
# ---------------------------------------------------------------------------------------

@dataclass
class DrainResult:
    backlog: int
    prefill_s: float
    prefill_per_s: float
    startup_s: float | None          # worker start to first row
    drain_s: float | None            # first row to last row
    drain_per_s: float | None
    total_s: float | None            # worker start to done
    stored: int
    complete: bool
    rss: dict
    cpu: dict | None                 # % of one core per part, worker start to done
    samples: list[list]


def synthetic_logs(settings, count: int = 1000) -> list[dict]:
    """`count` distinct logs as the API's schema returns them, ready for encode_entry;
    the same mix of levels and sizes as the simulated devices."""
    from collector.schemas import log_schema

    schema = log_schema(settings.max_message_chars, settings.max_log_data_bytes)
    rng = random.Random(42)
    levels = rng.choices(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), (25, 60, 10, 4, 1), k=count)
    logs = []
    for i, level in enumerate(levels):
        raw = {
            "device_id": f"bench-drain-{i % 500:05d}",
            "log_level": level,
            "message": f"{level.lower()} event {i}: " + " ".join(rng.choices(
                ("sensor", "reading", "ok", "retry", "uplink", "battery", "temp", "door"), k=rng.randint(4, 30))),
        }
        if rng.random() < 0.7:
            raw["log_data"] = {"seq": i, "fw": "1.4.2", "metrics": {"temp": rng.uniform(0, 40), "rssi": -70}}
        if rng.random() < 0.9:
            raw["timestamp"] = dt.datetime.now(dt.UTC).isoformat()
        logs.append(schema.load(raw))
    return logs


def prefill(settings, redis_url: str, n: int, chunk: int = 2000) -> float:
    """XADD n entries, `chunk` per pipelined round trip, encoded by the collector's own
    encode_entry (so the drain sees exactly what the API would have written); returns seconds."""
    import redis

    from collector.stream import encode_entry

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


def run_drain_phase(args: argparse.Namespace, target: Target, stack: Stack, probe: Probe,
                    procs: Processes) -> DrainResult:
    from collector.settings import load_settings

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
    return DrainResult(
        backlog=args.backlog, prefill_s=round(seconds, 2), prefill_per_s=round(args.backlog / seconds, 1),
        startup_s=round(first.t - started, 2) if first else None,
        drain_s=round(drain_s, 2) if drain_s else None,
        drain_per_s=round((last.persisted - first.persisted) / drain_s, 1) if drain_s and first else None,
        total_s=round(done_at - started, 2) if done_at else None,
        stored=stored, complete=last.persisted >= goal, rss=dict(sampler.peak),
        cpu=cpu_percent(cpu_start, cpu_end, time.monotonic() - started),
        samples=sampler.series(started),
    )


def target_redis_url() -> str:
    return os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

def _fmt(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and digits == 0:
        value = round(value)
    return f"{value:,.{digits}f}{unit}" if isinstance(value, float) else f"{value:,}{unit}"


def _cpu_text(cpu: dict, cores: int) -> str:
    parts = ", ".join(f"{name} {value:.0f}%" for name, value in sorted(cpu.items(), key=lambda kv: -(kv[1] or 0))
                      if value is not None)
    return f"{parts} (of one core; {cores} cores = {cores * 100}%)"


def render_markdown(report: dict) -> str:
    m, cfg, stack = report["machine"], report["config"], report["stack"]
    lines = [
        f"# Collector benchmark, {report['started_at']}",
        "",
        (f"Machine: {m['cores']} cores ({m['usable_cores']} usable), {m['ram_gib']} GiB RAM, {m['cpu_model']}; "
         f"{m['kernel']}, Python {m['python']}. Revision {report['revision']}."),
        (f"Stack: {stack['description']}. Load: Locust on the same machine, {cfg['users']} devices, "
         f"{cfg['duration']:g} s per phase. Persisted rows from `{stack['persisted_source']}`."),
        "",
        ("| phase | accepted logs/s | persisted logs/s | p50 ms | p95 ms | p99 ms | failures "
         "| backlog at end | catch-up s | RSS API MiB | RSS worker MiB |"),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in report["phases"]:
        failures = f"{p['failures']:,} ({p['fail_ratio']:.2%})"
        lines.append(
            f"| {p['label']} | {_fmt(p['accepted_per_s'])} | {_fmt(p['persisted_per_s'])} "
            f"| {_fmt(p['p50_ms'])} | {_fmt(p['p95_ms'])} | {_fmt(p['p99_ms'])} | {failures} "
            f"| {_fmt(p['backlog_at_load_end'])} | {_fmt(p['catch_up_s'], 1)} "
            f"| {_fmt(p['rss'].get('api_mib'))} | {_fmt(p['rss'].get('worker_mib'))} |"
        )
    d = report.get("drain")
    if d:
        lines.append(
            f"| drain ({d['backlog']:,} backlog, no load) | — | {_fmt(d['drain_per_s'])} | — | — | — | — "
            f"| — | {_fmt(d['total_s'], 1)} | {_fmt(d['rss'].get('api_mib'))} | {_fmt(d['rss'].get('worker_mib'))} |"
        )
    lines.append("")
    notes = []
    for p in report["phases"]:
        verdict = "thresholds met" if p["thresholds_met"] else "**thresholds missed**"
        lost = p["lost_logs"]
        stored = ("every accepted log stored" if lost == 0 else
                  f"**{lost:,} accepted logs not stored**" if lost and lost > 0 else
                  f"**{-lost:,} more rows than accepted logs**" if lost else "stored count not checked")
        notes.append(f"- {p['name']}: {p['accepted_logs']:,} logs accepted in {p['requests']:,} requests "
                     f"({_fmt(p['requests_per_s'])} req/s); latency of {p['ingest_endpoint']}; {verdict}; {stored}.")
        for f in p["failure_kinds"][:5]:
            notes.append(f"  - {f['count']:,} × {f['error']}")
        if p["cpu"]:
            notes.append(f"  - CPU during the load: {_cpu_text(p['cpu'], m['usable_cores'])}.")
    if d:
        drain_note = (f"- drain: {d['backlog']:,} entries pre-filled in {d['prefill_s']:.1f} s "
                      f"({_fmt(d['prefill_per_s'])} XADD/s); worker start to first row {_fmt(d['startup_s'], 1)} s, "
                      f"then {_fmt(d['drain_s'], 1)} s to store them: **{_fmt(d['drain_per_s'])} logs/s**")
        notes.append(drain_note + ("." if d["complete"] else f" (**incomplete**: {d['stored']:,} stored)."))
        if d["cpu"]:
            notes.append(f"  - CPU while draining: {_cpu_text(d['cpu'], m['usable_cores'])}.")
    elif report.get("drain_skipped"):
        notes.append(f"- drain: skipped ({report['drain_skipped']}).")
    end = report["end"]
    notes.append(f"- end backlog (stream lag + pending): {_fmt(end.get('backlog'))}"
                 + (f"; stream length {_fmt(end.get('stream_length'))}" if end.get("stream_length") is not None else "")
                 + (f"; Redis used memory {end['redis_used_memory_mib']} MiB" if "redis_used_memory_mib" in end else "")
                 + (f"; logs table {end['postgres_table_mib']} MiB" if "postgres_table_mib" in end else "") + ".")
    notes.append("- RSS: peak VmRSS summed over the process trees (API: both Gunicorn instances; worker: the "
                 "Celery worker and its pool), so memory shared after fork is counted once per process.")
    notes += [f"- {n}" for n in stack["notes"]]
    if report.get("error"):
        notes.append(f"- **the run did not finish: {report['error']}**")
    return "\n".join(lines + notes) + "\n"


def write_results(out_dir: Path, report: dict) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (out_dir / "latest.md").write_text(markdown)
    (out_dir / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    return markdown


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so the `finally` blocks stop what we started."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def delete_namespace(prefix: str) -> None:
    """Delete every Redis key under the bench's own prefix: its stream, cache and Celery queues."""
    import redis

    if not prefix:
        return  # never the unprefixed (default) namespace
    client = redis.Redis.from_url(target_redis_url(), socket_timeout=30, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.unlink(*keys[i:i + 1000])
    finally:
        client.close()
    log(f"deleted {len(keys)} Redis keys under {prefix!r} (the bench's own)")


def prepare_own_namespace(target: Target, stack_env: dict[str, str]) -> None:
    """Wipe the bench's own database and key prefix (never one the user chose)."""
    if target.wipe_database:
        import psycopg
        from psycopg import sql

        admin = psycopg.conninfo.make_conninfo(target.database_url, dbname="postgres")
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(BENCH_DATABASE)))
        log(f"dropped database {BENCH_DATABASE} (the bench's own)")
    if target.wipe_redis:
        delete_namespace(target.key_prefix)
    run_checked([sys.executable, "-m", "collector.migrate"], stack_env, 120, "migrate")


def start_stack(args: argparse.Namespace, target: Target, stack: Stack) -> None:
    for port in (args.api1_port, args.api2_port):
        if port_in_use(port):
            raise BenchError(f"port {port} is in use but nothing answers /health on :{args.port}; "
                             "stop it or choose --api1-port/--api2-port/--port")
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        raise BenchError("nginx is not installed: sudo apt-get install -y nginx (or brew install nginx)")
    started = time.monotonic()
    for name in ("worker", "beat", "api1", "api2", "nginx"):
        stack.start(name)
    for port in (args.api1_port, args.api2_port):
        wait_until(f"the API on :{port}", lambda p=port: (http_get(f"http://127.0.0.1:{p}/health") or (0,))[0] == 200,
                   60, check=stack.check)
    wait_until(f"nginx on :{args.port}", lambda: (http_get(f"{target.base_url}/health") or (0,))[0] == 200,
               30, check=stack.check)
    wait_until("the Celery worker's first drain run", lambda: worker_polled_since(stack, started), 90,
               interval=0.5, check=stack.check)
    log(f"stack ready in {time.monotonic() - started:.1f} s")


def worker_polled_since(stack: Stack, since: float) -> bool:
    """True once a consumer of the drain group read the stream after `since`: the worker
    runs, beat reaches it, and the drain works (better than waiting a fixed time)."""
    import redis

    from collector.settings import load_settings

    settings = load_settings(stack.base_env)
    client = redis.Redis.from_url(target_redis_url(), socket_timeout=5, socket_connect_timeout=5)
    try:
        consumers = client.xinfo_consumers(settings.stream, settings.consumer_group)
    except redis.ResponseError:
        return False  # no stream or group yet
    finally:
        client.close()
    age_ms = (time.monotonic() - since) * 1000
    return any(c.get("idle", age_ms + 1) < age_ms for c in consumers)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started_at = dt.datetime.now(dt.UTC)
    run_dir = args.out / "latest"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)

    base_url = f"http://127.0.0.1:{args.port}"
    existing = http_get(f"{base_url}/health")
    stack: Stack | None = None
    probe: Probe | None = None
    target: Target | None = None
    report: dict = {
        "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"), "revision": git_revision(),
        "machine": machine_info(), "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "phases": [], "drain": None, "end": {},
    }
    failed = False
    with terminate_cleanly():
        try:
            if existing is not None:
                target = Target(started=False, base_url=base_url)
                target.notes.append(f"the stack already running on :{args.port} was used as it is "
                                    f"(/health answered {existing[0]}); backlog and rows from its /api/stats")
                if existing[0] != 200:
                    target.notes.append("its /health was not 200: the figures may reflect a degraded stack")
                report["stack"] = {"description": f"already running, behind nginx on :{args.port}",
                                   "started": False, "persisted_source": HttpProbe.source, "notes": target.notes}
                probe = HttpProbe(base_url)
                procs = Processes(None)
                target.notes.append("RSS: every Gunicorn/Celery-worker process of the collector on this host")
                log(f"using the stack already answering on :{args.port}")
            else:
                database_url, db_ours, prefix, prefix_ours = choose_namespace(args)
                target = Target(started=True, base_url=base_url, database_url=database_url, key_prefix=prefix,
                                wipe_database=db_ours, wipe_redis=prefix_ours)
                stack = Stack(args, target, run_dir)
                report["stack"] = {
                    "description": (f"started by the bench from the Procfile: api1 :{args.api1_port}, api2 "
                                    f":{args.api2_port}, nginx :{args.port}, database {redact(database_url)}, "
                                    f"KEY_PREFIX {prefix!r}"),
                    "started": True, "persisted_source": DirectProbe.source, "notes": target.notes}
                if not db_ours:
                    target.notes.append("database chosen by DATABASE_URL/--database-url: used as it is, not wiped")
                if not prefix_ours:
                    target.notes.append("KEY_PREFIX chosen by the user: its Redis keys were not wiped")
                prepare_own_namespace(target, stack.base_env)
                start_stack(args, target, stack)
                from collector.settings import load_settings

                s = load_settings(stack.base_env)
                probe = DirectProbe(database_url, target_redis_url(), s.stream, s.consumer_group)
                procs = Processes(stack)
            if "batch" in args.phases:
                rate = "unthrottled" if args.batch_rate == 0 else f"{args.batch_rate:g} logs/s each"
                report["phases"].append(run_load_phase(
                    "batch", f"batch ({args.batch_size} logs/request, {args.users} devices, {rate})", args, target,
                    run_dir, probe, procs, stack, rate=args.batch_rate, batch_ratio=1.0))
            if "single" in args.phases:
                report["phases"].append(run_load_phase(
                    "single", f"single ({args.users} devices × {args.single_rate:g} logs/s)", args, target,
                    run_dir, probe, procs, stack, rate=args.single_rate, batch_ratio=0.0))
            if "drain" in args.phases:
                if stack is None:
                    report["drain_skipped"] = ("it stops and restarts the worker, so it runs only on a stack "
                                               "the bench starts itself: stop yours, or pick a free --port")
                else:
                    report["drain"] = run_drain_phase(args, target, stack, probe, procs)
            report["end"] = {"backlog": probe.backlog(), **probe.extra()}
        except BenchError as exc:
            log(f"error: {exc}")
            report["error"] = str(exc)
            failed = True
        except KeyboardInterrupt:
            log("interrupted")
            report["error"] = "interrupted"
            failed = True
        except Exception as exc:  # noqa: BLE001 - a bug or a backend down: still stop the stack, still report
            traceback.print_exc()
            report["error"] = f"unexpected error: {exc!r}"
            failed = True
        finally:
            if probe is not None:
                probe.close()
            if stack is not None:
                log("stopping the stack")
                stack.stop_all()
            if target is not None and target.wipe_redis:
                # Give the Redis memory back (the stream holds every entry not trimmed yet);
                # the bench's database stays for inspection until the next run.
                with contextlib.suppress(Exception):
                    delete_namespace(target.key_prefix)

    report["phases"] = [asdict(p) for p in report["phases"]]
    if report["drain"] is not None:
        report["drain"] = asdict(report["drain"])
    report["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report.setdefault("stack", {"description": "not started", "persisted_source": "", "notes": []})
    markdown = write_results(args.out, report)
    print(markdown)
    log(f"wrote {args.out / 'latest.md'} and {args.out / 'latest.json'}; logs and CSVs in {run_dir}")
    # Lost logs break the delivery guarantee; extra rows (duplicates) break "stored once".
    missed = [p["name"] for p in report["phases"] if not p["thresholds_met"] or p["lost_logs"] not in (0, None)]
    if missed:
        log(f"phases that missed their thresholds or stored a different number of logs than "
            f"were accepted: {', '.join(missed)}")
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
