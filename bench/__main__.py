"""`python -m bench`: see bench/__init__.py for what is measured and how.

main() chooses the stack (bench.options), starts it if needed (bench.stack), runs
the phases (bench.load, bench.drain) while sampling (bench.probes, bench.sampling),
and writes the report (bench.report, bench.targets). Every wait has a timeout and
every process the bench starts is stopped in a `finally`, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.common import BenchError, http_get, log, terminate_cleanly
from bench.drain import run_drain_phase
from bench.load import run_load_phase
from bench.machine import git_revision, machine_info
from bench.options import Target, choose_namespace, existing_stack_keys, parse_args, redact, target_redis_url
from bench.probes import DirectProbe, HttpProbe, Probe, Processes
from bench.report import write_results
from bench.stack import Stack, delete_namespace, prepare_own_namespace, start_stack
from bench.targets import judge
from collector.devtools.servers import ensure_servers, stop_servers


def stack_settings(stack: Stack) -> dict:
    """The settings the figures depend on, as the stack the bench started has them."""
    from collector.core.settings import load_settings

    s = load_settings(stack.base_env)
    return {"BATCH_SIZE": s.batch_size, "DRAIN_INTERVAL": s.drain_interval, "TRIM_INTERVAL": s.trim_interval,
            "WEB_CONCURRENCY": stack.base_env.get("WEB_CONCURRENCY", "1")}


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
    own_servers: list = []
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
                target.locust_env, keys_note = existing_stack_keys()
                target.notes.append(keys_note)
                probe = HttpProbe(base_url, target.locust_env.get("DEVICES_READER_KEY", ""))
                procs = Processes(None)
                target.notes.append("RSS: every Gunicorn/Celery-worker process of the collector on this host")
                log(f"using the stack already answering on :{args.port}")
            else:
                database_url, db_ours, prefix, prefix_ours = choose_namespace(args)
                # Where nothing answers at a loopback address, the same servers `make run` starts.
                own_servers = ensure_servers(target_redis_url(), database_url, say=log)
                target = Target(started=True, base_url=base_url, database_url=database_url, key_prefix=prefix,
                                wipe_database=db_ours, wipe_redis=prefix_ours)
                stack = Stack(args, target, run_dir)
                report["stack"] = {
                    "description": (f"started by the bench from the Procfile: api1 :{args.api1_port}, api2 "
                                    f":{args.api2_port}, nginx :{args.port}, database {redact(database_url)}, "
                                    f"KEY_PREFIX {prefix!r}"),
                    "started": True, "persisted_source": DirectProbe.source, "notes": target.notes,
                    "settings": stack_settings(stack)}
                if not db_ours:
                    target.notes.append("database chosen by DATABASE_URL/--database-url: used as it is, not wiped")
                if not prefix_ours:
                    target.notes.append("KEY_PREFIX chosen by the user: its Redis keys were not wiped")
                prepare_own_namespace(target, stack)
                start_stack(args, target, stack)
                from collector.core.settings import load_settings

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
            if own_servers:
                log("stopping our own Redis and PostgreSQL")
                stop_servers(own_servers)

    report["phases"] = [asdict(p) for p in report["phases"]]
    if report["drain"] is not None:
        report["drain"] = asdict(report["drain"])
    report["finished_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report.setdefault("stack", {"description": "not started", "persisted_source": "", "notes": []})
    if (revision := git_revision()) != report["revision"]:
        report["stack"]["notes"].append(f"**the checkout changed during the run** (revision {revision} at the "
                                        "end): a process started later may have run other code")
    report["targets"] = judge(report)
    markdown = write_results(args.out, report, args.record)
    print(markdown)
    log(f"wrote {args.out / 'latest.md'} and {args.out / 'latest.json'}"
        + (f" and {args.record}" if args.record else "") + f"; logs and CSVs in {run_dir}")
    # Lost logs break the delivery guarantee; extra rows (duplicates) break "stored once".
    missed = [p["name"] for p in report["phases"] if not p["thresholds_met"] or p["lost_logs"] not in (0, None)]
    if missed:
        log(f"phases that missed their thresholds or stored a different number of logs than "
            f"were accepted: {', '.join(missed)}")
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
