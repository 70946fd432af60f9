"""`python -m bench.wrk`: the collector under wrk, end to end, and its CPU cost per log (issue 14:
"sustain 10,000 logs/s end to end on two cores").

    .venv/bin/python -m bench.wrk                                      # batch 60 s, single 20 s, drain 1,000,000
    .venv/bin/python -m bench.wrk --duration 10 --single-duration 5 --backlog 50000      # a smoke run
    .venv/bin/python -m bench.wrk --code /tmp/wt-e326170                 # the stack of another checkout
    .venv/bin/python -m bench.wrk --rounds 3 --compare /tmp/wt-e326170   # A B A B A B: medians, new/old

It starts its own stack (bench.stack: the Procfile's api1, api2, worker, beat and nginx on :18723,
database logs_bench and key prefix bench:, wiped first), and runs the phases:

* batch: `wrk -t2 -c100 -d60s --latency -s bench/wrk/batch5.lua http://127.0.0.1:18723/api/logs/batch`
  (batches of 5 logs of device_000..device_099, as ../shared/bench/batch5.lua);
* single: the same with bench/wrk/single.lua on /api/log, 20 s;
* drain: bench.drain's phase (worker stopped, stream pre-filled, worker started; logs/s from its
  first stored row to its last).

Per load phase: *accepted* logs/s (2xx answers × logs per request ÷ wrk's duration); p50/p99
(wrk --latency); errors (non-2xx answers, socket errors); *persisted* logs/s end to end (rows added
from wrk's start until the count stops growing, ÷ that time: ../shared/bench/README.md); seconds
from wrk's end until the backlog was 0 (the drain kept up if ≤ 1); and *CPU seconds per million
logs* stored, of nginx, both APIs, the worker and its pool, Redis and PostgreSQL (bench.probes,
from /proc; not wrk), from wrk's start until the count stopped, in all and by part. Rows stored
must equal logs accepted, give or take the requests in flight when wrk stopped, and with
exactly-once no (device_id, boot_id, seq) twice: a mismatch is printed loudly and exits 1.

Configuration, by default all on (the issue's targets are measured so): `--keys` (AUTH_ENABLED=true,
a fleet key for device_* from `python -m collector.keys`, per-device rate limits at their defaults
or `--rate-limit`) and `--exactly-once` (an Idempotency-Key per request, boot_id and seq per log).
A checkout that lacks them (e326170) runs with them off. `--code DIR` runs the stack's processes
(Procfile, cwd, migrate, key CLI) from another checkout, with DIR/.venv or else this one's
(PYTHONPATH=DIR); the measuring code is always this checkout's.

Results: tables on stdout (bench.wrk_report), everything in bench-results/wrk.json (and `--record
PATH`), wrk's output and the services' logs in bench-results/wrk/<round>-<revision>/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BenchError, dumps, log, terminate_cleanly
from bench.drain import run_drain_phase
from bench.machine import git_revision, machine_info
from bench.options import BENCH_DATABASE, Target, choose_namespace, target_redis_url
from bench.probes import DirectProbe, Processes, cpu_percent
from bench.sampling import Sampler, growing, settle
from bench.stack import Checkout, Stack, checkout_at, create_key, delete_namespace, prepare_own_namespace, start_stack
from bench.wrk_report import collector_cpu, comparison, cpu_cost, describe, load_figures, parse_wrk
from collector.core.settings import load_settings
from collector.devtools.processes import ROOT
from collector.devtools.servers import ensure_servers, stop_servers
from collector.pipeline import shards
from collector.pipeline.codec import encode_entry

SCRIPTS = ROOT / "bench" / "wrk"
WORKLOADS = {"batch": ("batch5.lua", "/api/logs/batch", 5), "single": ("single.lua", "/api/log", 1)}
PHASES = ("batch", "single", "drain")
FLEET = "device_"  # the scripts' device ids: device_000..device_099
FLAT_WITHIN_S = 1.0  # the backlog must be empty this soon after the load stops


# --- which code runs the stack -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Code(Checkout):
    """A checkout (bench.stack runs its Procfile in its directory) and what its collector has."""

    has_keys: bool          # collector.keys (device keys, AUTH_ENABLED)
    has_sequences: bool     # boot_id/seq in its schema (and Idempotency-Key)


def code_at(root: Path) -> Code:
    if not (root / "Procfile").exists():
        raise SystemExit(f"{root.resolve()} has no Procfile: not a checkout of the collector")
    checkout = checkout_at(root)
    package = checkout.root / "collector"
    schemas = [p.read_text() for p in (package / "web" / "schemas.py", package / "schemas.py") if p.exists()]
    return Code(checkout.root, checkout.venv, checkout.revision, (package / "keys.py").exists(),
                any("boot_id" in text for text in schemas))


def choose_config(args: argparse.Namespace, code: Code) -> tuple[bool, bool]:
    """(keys, exactly_once) for `code`: as asked, and by default on where the code has them."""
    for flag, wanted, has in (("--keys", args.keys, code.has_keys),
                              ("--exactly-once", args.exactly_once, code.has_sequences)):
        if wanted and not has:
            raise SystemExit(f"{flag}: the code in {code.root} ({code.revision}) does not have it; leave the flag "
                             "out (it is then off for that code) or pass --no-" + flag[2:])
    keys = code.has_keys if args.keys is None else args.keys
    return keys, code.has_sequences if args.exactly_once is None else args.exactly_once


# --- the phases ----------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """One stack, up: what a phase needs."""

    code: Code
    target: Target
    stack: Stack
    probe: DirectProbe
    procs: Processes
    run_dir: Path
    wrk_env: dict[str, str]
    exactly_once: bool


def drive(argv: list[str], env: dict[str, str], output: Path, timeout: float, sampler: Sampler,
          check) -> tuple[float, float, float]:
    """Run wrk (its output to `output`), sampling meanwhile; (started, ended, wrk's CPU seconds)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(output, "w") as out:
        wrk = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        while wrk.poll() is None:
            if time.monotonic() > started + timeout:
                raise BenchError(f"wrk did not finish in time; see {output}")
            check()
            if sampler.due():
                sampler.take()
            time.sleep(0.05)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait(10)
    ended = time.monotonic()
    if wrk.returncode != 0:
        raise BenchError(f"wrk exited with {wrk.returncode}; see {output}")
    # wrk is the only child of ours to exit meanwhile: the children's CPU time grew by its own.
    cpu = sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) - getattr(children, f)
              for f in ("ru_utime", "ru_stime"))
    return started, ended, cpu


def run_wrk(name: str, seconds: float, args: argparse.Namespace, run: Run) -> dict:
    """One wrk run of workload `name`, sampled from its start until the table stops growing."""
    script, path, per_request = WORKLOADS[name]
    sampler = Sampler(run.probe, run.procs)
    if sampler.take().backlog:
        settle(sampler, args.settle_timeout, run.stack.check)  # the previous phase's last entries
    before = sampler.samples[-1].persisted
    run_id = f"{name}-{secrets.token_hex(4)}"
    argv = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s", "--latency",
            "-s", str(SCRIPTS / script), f"{run.target.base_url}{path}"]
    output = run.run_dir / f"wrk-{name}.txt"
    log(f"phase {name}: {' '.join(argv)}")
    cpu_start = run.procs.cpu()
    started, ended, wrk_cpu = drive(argv, {**os.environ, **run.wrk_env, "WRK_RUN_ID": run_id}, output,
                                    seconds + 60, sampler, run.stack.check)
    empty_after = seconds_until_empty(run.probe, ended, args.settle_timeout)
    settled_at = settle(sampler, args.settle_timeout, run.stack.check)
    # The CPU from wrk's start until the count stopped: all the work these logs cost, the drain's included.
    cpu_end, cpu_seconds = run.procs.cpu(), time.monotonic() - started
    stored, distinct = sampler.samples[-1].persisted - before, None
    if run.exactly_once:  # this run's rows, by the boot ids common.lua made of WRK_RUN_ID
        stored, distinct = run.probe.conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, boot_id, seq)) FROM logs WHERE starts_with(boot_id, %s)",
            (f"wrk-{run_id}-t",)).fetchone()
    cpu = collector_cpu(cpu_percent(cpu_start, cpu_end, cpu_seconds))
    figures = parse_wrk(output.read_text())
    result = {"name": name, "command": " ".join(argv), "run_id": run_id, "logs_per_request": per_request, **figures,
              **load_figures(figures, per_request, args.connections, stored, distinct,
                             (settled_at or sampler.samples[-1].t) - started),
              "backlog_at_end": sampler.backlog_at(ended), "backlog_empty_after_s": empty_after,
              "kept_up": empty_after is not None and empty_after <= FLAT_WITHIN_S,
              "backlog_growing": growing(sampler.during(started, ended)["backlog"]),
              "cpu_percent": cpu, "wrk_cpu_percent": round(100 * wrk_cpu / (ended - started), 1),
              **cpu_cost(cpu, cpu_seconds, stored)}
    if settled_at is None:
        result["problems"].append(f"NOT SETTLED: rows still came after {args.settle_timeout:g} s (--settle-timeout)")
    return result


def seconds_until_empty(probe: DirectProbe, since: float, timeout: float) -> float | None:
    """Seconds from `since` until the backlog (stream lag + pending) reads 0, polled every 50 ms:
    finer than the Sampler, whose count(*) gets slow as the table grows."""
    while (now := time.monotonic()) < since + timeout:
        if probe.backlog() == 0:
            return round(now - since, 2)
        time.sleep(0.05)
    return None


def with_receive_time(log_fields: dict, received_at: dt.datetime) -> dict:
    """encode_entry's entry plus the receive time as field "r": a checkout from before migration
    0007 (e326170) needs it to decode an entry; today's ignores it."""
    return {**encode_entry(log_fields, received_at), b"r": received_at.isoformat()}


def run_drain(args: argparse.Namespace, run: Run) -> dict:
    """bench.drain's phase as it is, with its CPU per million logs stored."""
    encode = with_receive_time if run.code.root != ROOT else None
    result = dataclasses.asdict(run_drain_phase(args, run.target, run.stack, run.probe, run.procs, encode))
    samples, cpu = result.pop("samples"), collector_cpu(result.pop("cpu") or {})
    window = samples[-1][0] if samples else (result["total_s"] or 0.0)  # worker start to the CPU's last reading
    problems = [] if result["complete"] else [
        f"INCOMPLETE: {result['stored']:,} of {args.backlog:,} stored within --drain-timeout"]
    return {"name": "drain", **result, "cpu_percent": cpu, **cpu_cost(cpu, window, result["stored"]),
            "problems": problems}


def config_settings(args: argparse.Namespace, keys: bool) -> dict[str, str]:
    """The stack's settings for the configuration: keys on or off, with the per-device rate limits
    that come with them (off without keys, as bench.compare's baseline)."""
    if not keys:
        return {"AUTH_ENABLED": "false", "RATE_LIMIT_PER_DEVICE": "0"}
    if args.rate_limit is not None:
        return {"AUTH_ENABLED": "true", "RATE_LIMIT_PER_DEVICE": f"{args.rate_limit:g}"}
    return {"AUTH_ENABLED": "true"}


def limits_note(settings, chosen: bool) -> str:
    """Whether the per-device limits can throttle the load: 100 devices share it evenly."""
    rate, burst = settings.rate_limit_per_device, settings.rate_limit_burst
    if rate <= 0:
        return "per-device rate limits off (--rate-limit 0)"
    source = "--rate-limit" if chosen else "the default"
    return (f"per-device rate limits on: {rate:g} logs/s, burst {burst:,} ({source}); over 100 devices they "
            f"throttle only above {100 * rate:,.0f} logs/s in all (any 429 is reported)")


def run_stack(args: argparse.Namespace, code: Code, round_no: int, run_dir: Path) -> dict:
    """Start `code`'s stack, run the phases, stop it; the figures."""
    keys, exactly_once = choose_config(args, code)
    database_url, db_ours, prefix, prefix_ours = choose_namespace(args)
    target = Target(started=True, base_url=f"http://127.0.0.1:{args.port}", database_url=database_url,
                    key_prefix=prefix, wipe_database=db_ours, wipe_redis=prefix_ours)
    run_dir.mkdir(parents=True)
    env = config_settings(args, keys)
    if code.root.resolve() == args.code.resolve():
        env.update(args.set)  # --set: the stack under test only, not --compare's
    result = {"code": str(code.root), "revision": code.revision, "round": round_no, "keys": keys,
              "exactly_once": exactly_once, "settings": env, "phases": {}, "notes": []}
    own_servers, stack, probe = [], None, None
    try:
        own_servers = ensure_servers(target_redis_url(), database_url, say=log)
        stack = Stack(args, target, run_dir, code, env)
        prepare_own_namespace(target, stack)
        start_stack(args, target, stack, keys=False)  # an older checkout has no keys; the fleet's is made below
        settings = load_settings(stack.base_env)
        probe = DirectProbe(database_url, target_redis_url(), [shard.stream for shard in shards.shards(settings)],
                            settings.consumer_group)
        wrk_env = {"WRK_EXACTLY_ONCE": "1" if exactly_once else "0"}
        if keys:
            wrk_env["COLLECTOR_KEY"] = create_key(stack, "--prefix", FLEET, "--name", "bench.wrk fleet")
            result["notes"].append(limits_note(settings, args.rate_limit is not None))
        run = Run(code, target, stack, probe, Processes(stack), run_dir, wrk_env, exactly_once)
        for name in args.phases:
            if name == "drain":
                result["phases"][name] = run_drain(args, run)
            else:
                duration = args.duration if name == "batch" else args.single_duration
                result["phases"][name] = run_wrk(name, duration, args, run)
    finally:
        if probe is not None:
            probe.close()
        if stack is not None:
            stack.stop_all()
        with contextlib.suppress(Exception):
            if target.wipe_redis:
                delete_namespace(target.key_prefix)
        stop_servers(own_servers)
    return result


# --- the command ---------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.wrk", description="\n\n".join(__doc__.split("\n\n")[:2]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of batch,single,drain")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of the batch load (default 60)")
    p.add_argument("--single-duration", type=float, default=20.0, help="seconds of the single load (default 20)")
    p.add_argument("--backlog", type=int, default=1_000_000, help="entries pre-filled for the drain (1,000,000)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--connections", type=int, default=100, help="wrk -c (default 100)")
    p.add_argument("--keys", action=argparse.BooleanOptionalAction, default=None,
                   help="AUTH_ENABLED=true, a fleet key for device_*, per-device rate limits (default: on if the "
                        "code has keys)")
    p.add_argument("--exactly-once", action=argparse.BooleanOptionalAction, default=None,
                   help="Idempotency-Key per request, boot_id/seq per log (default: on if the code has them)")
    p.add_argument("--rate-limit", type=float, help="RATE_LIMIT_PER_DEVICE with --keys (default: the code's)")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose stack runs (default: this one)")
    p.add_argument("--compare", type=Path, help="also run this checkout's stack, interleaved; print new/old")
    p.add_argument("--rounds", type=int, default=1, help="runs per checkout (default 1); medians when more")
    p.add_argument("--port", type=int, default=18723, help="nginx port (default 18723)")
    p.add_argument("--api1-port", type=int, default=8001)
    p.add_argument("--api2-port", type=int, default=8002)
    p.add_argument("--database-url", help=f"database (default: {BENCH_DATABASE}, wiped first)")
    p.add_argument("--key-prefix", help="Redis key prefix (default: bench:, wiped first)")
    p.add_argument("--settle-timeout", type=float, default=300.0, help="seconds to wait for the table to settle")
    p.add_argument("--drain-timeout", type=float, default=900.0, help="seconds the drain may take")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="results directory (bench-results/)")
    p.add_argument("--record", type=Path, help="also write the JSON here")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the stack of --code only, not of --compare (repeatable), e.g. "
                        "--set STREAM_SHARDS=4 --compare <a worktree of the same commit>")
    args = p.parse_args(argv)
    try:
        args.set = dict(item.split("=", 1) for item in args.set)
    except ValueError:
        p.error("--set: NAME=VALUE")
    if int(args.set.get("STREAM_SHARDS", os.environ.get("STREAM_SHARDS", "1"))) > 1 and "drain" in args.phases:
        p.error("the drain phase pre-fills one stream: leave it out with STREAM_SHARDS above 1 (--phases batch,single)")
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if not args.phases or set(args.phases) - set(PHASES):
        p.error(f"--phases: a subset of {','.join(PHASES)}")
    if shutil.which("wrk") is None and set(args.phases) - {"drain"}:
        p.error("wrk is not installed: sudo apt-get install -y wrk")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    codes = [code_at(args.code)] + ([code_at(args.compare)] if args.compare else [])
    for code in codes:
        keys, exactly_once = choose_config(args, code)  # refuses what a checkout cannot do, before any run
        log(f"{code.revision} ({code.root}, {code.venv}): keys {'on' if keys else 'off'}, "
            f"exactly-once {'on' if exactly_once else 'off'}")
    if len(codes) > 1 or codes[0].root != ROOT:
        if args.database_url or args.key_prefix is not None:
            raise SystemExit("--code/--compare migrate other schemas: they run only on the bench's own database "
                             "and key prefix (leave --database-url and --key-prefix out)")
    report = {"command": "python -m bench.wrk " + " ".join(argv if argv is not None else sys.argv[1:]),
              "bench_revision": git_revision(), "options": {k: str(v) for k, v in vars(args).items()},
              "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "machine": machine_info(),
              "runs": []}
    failed = False
    shutil.rmtree(args.out / "wrk", ignore_errors=True)
    with terminate_cleanly():  # SIGTERM too stops the stack of the run in progress
        try:
            for round_no in range(1, args.rounds + 1):
                for i, code in enumerate(codes):  # interleaved, so drift over the session hits each alike
                    run_dir = args.out / "wrk" / f"{round_no}{'ab'[i]}-{code.revision}"
                    result = run_stack(args, code, round_no, run_dir)
                    report["runs"].append(result)
                    print(describe(result), flush=True)
        except (BenchError, KeyboardInterrupt, SystemExit) as exc:
            log(f"error: {exc!r}")
            report["error"], failed = repr(exc), True
    report["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if report["runs"] and (args.rounds > 1 or len(codes) > 1):
        data, table = comparison(report["runs"], codes)
        report.update(data)
        print(table)
    problems = [f"{r['revision']} round {r['round']} {p['name']}: {x}"
                for r in report["runs"] for p in r["phases"].values() for x in p["problems"]]
    for problem in problems:
        log(f"MISMATCH {problem}")
    for path in filter(None, (args.out / "wrk.json", args.record)):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(report))
    log(f"wrote {args.out / 'wrk.json'}" + (f" and {args.record}" if args.record else ""))
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
