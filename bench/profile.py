"""`python -m bench.profile`: where an API worker's CPU goes under the batch load.

Starts the bench's own stack (as `python -m bench` does, on its database and key
prefix), runs the bench's batch phase, and meanwhile records one Gunicorn worker
of api1 with py-spy (``py-spy record --nonblocking -f raw``: samples only while
the process is on a CPU). Prints the share of those samples that were inside a few
parts of the request path, and the functions with the most self time; writes the
raw stacks to bench-results/profile/api-worker.txt and the figures to
bench-results/profile.json (and ``--record PATH`` too, e.g. docs/bench/profile.json).

py-spy comes with the dev extra (``make install``) and needs to be allowed to
ptrace the worker (root, or kernel.yama.ptrace_scope = 0).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from bench.common import BenchError, dumps, http_get, log
from bench.load import run_load_phase
from bench.machine import git_revision, machine_info
from bench.options import Target, choose_namespace, env_default, parse_args, target_redis_url
from bench.probes import DirectProbe, Processes, proc_table
from bench.stack import Stack, delete_namespace, prepare_own_namespace, start_stack
from collector.devtools.processes import ROOT, Process

# Parts of the request path: (label, file(s) a frame must be in, function name or None for any;
# py-spy names methods Class.method, so the name is compared after its last dot).
PARTS = (
    ("Flask request handling (`Flask.wsgi_app`, the view included)", "flask/app.py", "wsgi_app"),
    ("the ingest view (`collector/web/ingest.py`)", "collector/web/ingest.py", None),
    ("marshmallow `Schema.load` (validation)", "marshmallow/schema.py", "load"),
    ("queueing in Redis (`collector/pipeline/producer.py`, round trip included)", "collector/pipeline/producer.py",
     None),
    ("redis-py (`redis/`: packing, sending, parsing)", "redis/", None),
    ("Gunicorn reading the request (`gunicorn/http/parser.py`, `message.py`)",
     ("gunicorn/http/parser.py", "gunicorn/http/message.py"), None),
    ("Gunicorn's WSGI glue and response writing (`gunicorn/http/wsgi.py`, socket send included)",
     "gunicorn/http/wsgi.py", None),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse_raw(text: str) -> tuple[int, list[tuple[list[tuple[str, str]], int]]]:
    """py-spy's raw (collapsed) output -> (total samples, [(frames root first, count)])."""
    stacks, total = [], 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            frames.append((match["func"], match["file"]) if match else (frame, ""))
        stacks.append((frames, int(count)))
        total += int(count)
    return total, stacks


def shares(total: int, stacks: list) -> dict:
    """Inclusive share of samples per part of PARTS, and the top functions by self time."""
    parts = {}
    for label, where, func in PARTS:
        files = (where,) if isinstance(where, str) else where
        hits = sum(n for frames, n in stacks
                   if any(any(w in f for w in files) and (func is None or name.rpartition(".")[2] == func)
                          for name, f in frames))
        parts[label] = round(hits / total, 3) if total else None
    leaves: collections.Counter = collections.Counter()
    for frames, n in stacks:
        name, where = frames[-1]
        leaves[f"{name} ({_short_path(where)})"] += n
    top = [{"function": k, "share": round(v / total, 3)} for k, v in leaves.most_common(12)] if total else []
    return {"samples": total, "parts": parts, "self_time": top}


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1].removeprefix(".11/").removeprefix(".12/")
    return path


def api_worker_pid(stack: Stack) -> int:
    """The Gunicorn worker of api1 (the master's child)."""
    master = stack.services["api1"].pid
    children = [pid for pid, proc in proc_table().items() if proc.ppid == master]
    if not children:
        raise BenchError("api1 has no Gunicorn worker to profile")
    return min(children)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[1])
    p.add_argument("--duration", type=float, default=20.0, help="Seconds of batch load (default 20).")
    p.add_argument("--profile-seconds", type=float, default=10.0,
                   help="Seconds py-spy records, starting 5 s into the load (default 10).")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100).")
    p.add_argument("--out", type=Path, default=Path(env_default("BENCH_OUT", str(ROOT / "bench-results"))),
                   help="Results directory [BENCH_OUT] (default bench-results/).")
    p.add_argument("--record", type=Path, default=None, help="Also write the figures to this file.")
    ours = p.parse_args(argv)
    if ours.duration < ours.profile_seconds + 8:
        p.error("--duration must be at least --profile-seconds + 8 (ramp-up and the end of the load)")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        p.error("py-spy is not installed: make install (it is in the dev extra)")
    args = parse_args(["--phases", "batch", "--duration", f"{ours.duration:g}", "--out", str(ours.out)])

    base_url = f"http://127.0.0.1:{args.port}"
    if http_get(f"{base_url}/health") is not None:
        log(f"error: something answers on :{args.port}; the profile needs a stack of its own (--port)")
        return 1
    run_dir = args.out / "profile"
    shutil.rmtree(run_dir, ignore_errors=True)
    database_url, db_ours, prefix, prefix_ours = choose_namespace(args)
    target = Target(started=True, base_url=base_url, database_url=database_url, key_prefix=prefix,
                    wipe_database=db_ours, wipe_redis=prefix_ours)
    stack = Stack(args, target, run_dir)
    raw = run_dir / "api-worker.txt"
    spy_proc: Process | None = None
    probe = None
    started_at, revision = dt.datetime.now(dt.UTC), git_revision()  # the code this run loads
    try:
        prepare_own_namespace(target, stack)
        start_stack(args, target, stack)
        from collector.core.settings import load_settings

        s = load_settings(stack.base_env)
        probe = DirectProbe(database_url, target_redis_url(), s.stream, s.consumer_group)
        pid = api_worker_pid(stack)
        spy_proc = Process("py-spy", [spy, "record", "--nonblocking", "-p", str(pid), "-d",
                                      f"{ours.profile_seconds:g}", "-r", str(ours.rate), "-f", "raw", "-o", str(raw)],
                           dict(os.environ), run_dir / "logs" / "py-spy.log")
        timer = threading.Timer(5.0, spy_proc.start)
        timer.start()
        phase = run_load_phase("batch", f"batch ({args.batch_size} logs/request, {args.users} devices, unthrottled)",
                               args, target, run_dir, probe, Processes(stack), stack, rate=0.0, batch_ratio=1.0)
        timer.join()
        spy_proc.wait(60)
    except (BenchError, subprocess.TimeoutExpired) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if spy_proc is not None and spy_proc.alive():
            spy_proc.stop(5)
        if probe is not None:
            probe.close()
        stack.stop_all()
        if target.wipe_redis:
            delete_namespace(target.key_prefix)
    if not raw.exists():
        log(f"error: py-spy wrote no profile; see {run_dir / 'logs' / 'py-spy.log'}")
        return 1
    figures = shares(*parse_raw(raw.read_text()))
    result = {
        "command": "python -m bench.profile " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"), "revision": revision,
        "machine": machine_info(), "profiled": f"api1's Gunicorn worker (pid {pid})",
        "load": {"accepted_per_s": phase.accepted_per_s, "p99_ms": phase.p99_ms, "cpu": phase.cpu},
        **figures,
    }
    lines = [f"py-spy, {ours.profile_seconds:g} s of one API worker under the batch load "
             f"({phase.accepted_per_s:,.0f} logs/s accepted meanwhile); {figures['samples']:,} samples on a CPU.",
             "", "| part of the request path | share of samples (inclusive) |", "|---|--:|"]
    lines += [f"| {label} | {share:.0%} |" for label, share in figures["parts"].items() if share is not None]
    lines += ["", "| function (self time) | share of samples |", "|---|--:|"]
    lines += [f"| `{row['function']}` | {row['share']:.1%} |" for row in figures["self_time"]]
    text = "\n".join(lines)
    print(text)
    for path in [args.out / "profile.json", ours.record]:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps({**result, "printed": text.splitlines()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
