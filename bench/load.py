"""The load phases: one headless Locust run of the device fleet (locustfiles/devices.py)
per phase, sampled from its start until the pipeline has stored everything."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import LOCUSTFILE, BenchError, log
from bench.options import Target
from bench.probes import Probe, Processes, cpu_percent
from bench.sampling import Sampler, settle
from bench.stack import FLEET_PREFIX, Stack
from collector.devtools.processes import Process


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
    during_load: dict               # backlog and Redis memory sampled during the load (Sampler.during)
    samples: list[list]             # [seconds since load start, rows, backlog, Redis MiB]


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


def master_stats(text: str) -> list[dict]:
    """The stats Locust printed with --json. With --processes its forked workers share the
    stdout and print their own (empty) lists too: the master's, the last non-empty one, counts."""
    decoder, documents, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        document, i = decoder.raw_decode(text, i)
        documents.append(document)
    chosen = [d for d in documents if d] or documents
    if not chosen:
        raise ValueError("no JSON document")
    return chosen[-1]


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


class LocustProcess(Process):
    """Locust in a process group of its own, like the stack's services, but with its stdout
    (the final stats, from --json) in a file of its own; its log and summary (stderr) go to
    the log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, stdout_path: Path) -> None:
        super().__init__("locust", argv, env, log_path)
        self.stdout_path = stdout_path

    def start(self) -> LocustProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as err, open(self.stdout_path, "wb") as out:
            self.popen = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=err, start_new_session=True)
        return self


def run_load_phase(name: str, label: str, args: argparse.Namespace, target: Target, run_dir: Path,
                   probe: Probe, procs: Processes, stack: Stack | None, *, rate: float,
                   batch_ratio: float) -> PhaseResult:
    """One headless Locust run of `args.duration` seconds, sampled from start to settled."""
    csv_prefix = run_dir / name
    accepted_file = run_dir / f"{name}-accepted.txt"
    locust_log = run_dir / "logs" / f"locust-{name}.log"
    argv = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(args.users), "-r", f"{args.spawn_rate:g}", "-t", f"{args.duration:g}s",
        "--host", target.base_url, "--csv", str(csv_prefix), "--json", "--only-summary",
        # Let requests in flight finish at the end, so the accepted count is exact.
        "--stop-timeout", "10",
        "--batch-size", str(args.batch_size), "--rate", f"{rate:g}", "--batch-ratio", f"{batch_ratio:g}",
        "--read-ratio", f"{args.read_ratio:g}", "--device-prefix", f"{FLEET_PREFIX}{name}",
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

    # Locust logs "Ramping to ..." (a master with --processes: "Sending spawn jobs ...") when its
    # --run-time clock starts and "--run-time limit reached" when it stops: those two lines
    # (their own timestamps) delimit the load window.
    t_load_start = t_load_end = None
    cpu_start = cpu_last = cpu_end = None   # (monotonic time, Processes.cpu() snapshot)
    json_path = Path(f"{csv_prefix}.json")
    proc = LocustProcess(argv, {**os.environ, **target.locust_env}, locust_log, json_path).start()
    procs.locust_pid = proc.pid
    launched = time.monotonic()
    deadline = launched + args.duration + 120  # start-up, stop-timeout and shutdown included

    def scan(tail) -> None:
        nonlocal t_load_start, t_load_end, cpu_start, cpu_end
        for line in tail.read().decode(errors="replace").splitlines():
            if t_load_start is None and ("Ramping to" in line or "Sending spawn jobs" in line):
                t_load_start, cpu_start = _log_moment(line), (time.monotonic(), procs.cpu())
            elif t_load_end is None and "run-time limit reached" in line:
                t_load_end = _log_moment(line)
                if proc.alive():
                    cpu_end = (time.monotonic(), procs.cpu())

    try:
        with open(locust_log, "rb") as tail:
            while proc.alive():
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
        if proc.alive():  # we are giving up on this run: no graceful stop
            proc.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
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
        entries = master_stats(json_path.read_text())
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
        end_state=probe.extra(), failure_kinds=failure_kinds,
        during_load=sampler.during(t_load_start, t_load_end), samples=sampler.series(t_load_start),
    )
    if "thresholds missed" in text:
        log(f"phase {name}: " + next(line for line in text.splitlines() if "thresholds missed" in line).split(
            "devices: ", 1)[-1])
    if settled_at is None:
        log(f"phase {name}: backlog not drained within {args.settle_timeout:g} s (--settle-timeout)")
    log(f"phase {name}: accepted {accepted} logs ({result.accepted_per_s:,.0f}/s), "
        f"persisted {result.persisted_per_s:,.0f}/s during load, {failures} failed requests")
    return result
