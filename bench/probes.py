"""What the bench reads while the stack runs: rows stored and stream backlog (from
PostgreSQL and Redis, or from /api/stats of a stack it did not start), Redis memory,
and per part of the system the processes' resident memory and CPU time (/proc)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, http_get
from bench.stack import Stack


class Probe:
    """What the bench reads while the stack runs: rows stored and stream backlog."""

    source = ""

    def persisted(self) -> int:
        raise NotImplementedError

    def backlog(self) -> int | None:
        raise NotImplementedError

    def redis_memory_mib(self) -> float | None:
        """Redis's used_memory now (sampled during the phases), None when unknown."""
        return None

    def extra(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class DirectProbe(Probe):
    """`SELECT count(*) FROM logs` and XINFO GROUPS, straight from PostgreSQL and Redis:
    for a stack the bench started, whose database and stream it knows."""

    source = "SELECT count(*) FROM logs"

    def __init__(self, database_url: str, redis_url: str, stream: str | Sequence[str], group: str) -> None:
        """`stream`: the stream, or every stream shard's (STREAM_SHARDS)."""
        import psycopg
        import redis

        self.conn = psycopg.connect(database_url, autocommit=True, connect_timeout=5,
                                    options="-c statement_timeout=30000")
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.streams = [stream] if isinstance(stream, str) else list(stream)
        self.group = group

    def persisted(self) -> int:
        return self.conn.execute("SELECT count(*) FROM logs").fetchone()[0]

    def backlog(self) -> int | None:
        """lag (never delivered to the group) + pending (delivered, not acknowledged), over every stream."""
        backlogs = [self._backlog(stream) for stream in self.streams]
        return None if None in backlogs else sum(backlogs)

    def _backlog(self, stream: str) -> int | None:
        import redis

        try:
            groups = self.redis.xinfo_groups(stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return 0
            raise
        info = next((g for g in groups if _text(g["name"]) == self.group), None)
        if info is None:
            return self.redis.xlen(stream)  # no group yet: nothing was delivered
        lag = info.get("lag")
        if lag is None:  # Redis cannot tell (e.g. after deletions); derive it when possible
            read = info.get("entries-read")
            lag = None if read is None else max(0, self.redis.xinfo_stream(stream)["entries-added"] - read)
        return None if lag is None else lag + info["pending"]

    def redis_memory_mib(self) -> float | None:
        return round(self.redis.info("memory")["used_memory"] / 2**20, 1)

    def extra(self) -> dict:
        return {
            "stream_length": sum(self.redis.xlen(stream) for stream in self.streams),
            "redis_used_memory_mib": self.redis_memory_mib(),
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

    def __init__(self, base_url: str, key: str = "") -> None:
        self.url = f"{base_url}/api/stats"
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._last: tuple[float, dict] = (0.0, {})

    def _stats(self) -> dict:
        """One GET serves the persisted() and backlog() of the same sample."""
        if time.monotonic() - self._last[0] < 0.1:
            return self._last[1]
        answer = http_get(self.url, timeout=10, headers=self.headers)
        if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
            hint = " (set DEVICES_READER_KEY to a reader key)" if answer and answer[0] in (401, 403) else ""
            raise BenchError(f"{self.url} did not answer 200 with JSON: {answer}{hint}")
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
    process, so it overstates the memory used, but it is what grows if a process leaks;
    the largest single process is what a per-process limit is about.
    CPU time (utime + stime) per part, also of PostgreSQL, Redis, nginx and Locust, to
    see where the cores went during a phase (PostgreSQL and Redis: every such process
    on the host), and what everything else on the host took meanwhile ("other")."""

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
        """Per part: the sum over its processes, the largest single process, and how many."""
        table = proc_table()
        groups = self.groups(table)
        out = {}
        for name in ("api", "worker"):
            each = [_rss_kib(pid) for pid in groups[name]]
            out[f"{name}_mib"] = round(sum(each) / 1024, 1)
            out[f"{name}_largest_mib"] = round(max(each, default=0) / 1024, 1)
            out[f"{name}_processes"] = len(groups[name])
        return out

    def cpu(self) -> dict[str, dict[int, int]]:
        """Per part: pid -> CPU ticks so far, and the whole host's busy ticks under HOST
        (a snapshot; see cpu_percent)."""
        table = proc_table()
        parts = {name: {pid: table[pid].cpu_ticks for pid in pids} for name, pids in self.groups(table).items()}
        return {**parts, HOST: {0: host_busy_ticks()}}


HOST = "host"


def host_busy_ticks() -> int:
    """CPU ticks the whole machine spent busy (not idle or waiting on I/O) since boot."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return user + nice + system + irq + softirq + steal
    return 0


def cpu_percent(before: dict[str, dict[int, int]], after: dict[str, dict[int, int]], seconds: float) -> dict:
    """Average CPU per part between two snapshots, in % of one core (200% = two cores busy),
    and "other": the rest of the host's busy time (everything else running on the machine,
    and parts' processes that exited in between). Processes born in between count from zero."""
    out = {}
    for name, pids in after.items():
        ticks = sum(t - before.get(name, {}).get(pid, 0) for pid, t in pids.items())
        out[name] = round(100 * ticks / CLOCK_TICKS / seconds, 1) if seconds > 0 else None
    host = out.pop(HOST, None)
    if host is not None:
        out["other"] = round(max(0.0, host - sum(v for v in out.values() if v is not None)), 1)
    return out



# The collector's own processes: what "CPU per million logs" sums (the load generator and
# the rest of the host are left out).
SERVICE_GROUPS = ("api", "worker", "nginx", "postgres", "redis")


def cpu_seconds_per_million(cpu: dict | None, seconds: float | None, logs: int | None) -> float | None:
    """CPU seconds the collector's processes spent per million logs, from cpu_percent's
    figures over `seconds` in which `logs` logs went through."""
    if not cpu or not seconds or not logs:
        return None
    cores = sum(cpu.get(group) or 0.0 for group in SERVICE_GROUPS) / 100
    return round(cores * seconds / logs * 1e6, 1)
