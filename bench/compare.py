"""What device keys, rate limits and exactly-once sending cost, in CPU seconds per million logs.

    .venv/bin/python -m bench.compare [--runs 3] [--duration 30] [--batch-rate 20] [--record PATH]

Runs the bench's batch phase (its own stack from the Procfile, 100 devices, batches
of 5) once per configuration, interleaved, `--runs` times:

  baseline      AUTH_ENABLED=false, RATE_LIMIT_PER_DEVICE=0, devices send no Idempotency-Key and no seq
  exactly-once  as baseline, but devices send Idempotency-Key and seq/boot_id (the exactly-once issue)
  auth+limits   AUTH_ENABLED=true with a fleet key, per-device rate limits on, no key/seq (the identity issue)

At a fixed offered load (`--batch-rate` logs/s per device, below saturation, so the
drain keeps up and the figure measures work, not queueing), the cost of a run is the
CPU time of the collector's processes (APIs, worker, nginx, PostgreSQL, Redis; not
Locust and not the rest of the host) during the load, divided by the logs accepted.
Prints the median per configuration and its ratio to the baseline's median.

The machine is a shared VM whose speed moves between runs, so the script also
prints a normalized figure: the collector's CPU per unit of Locust's own CPU. Locust
offers the same load in every configuration (exactly-once adds only a key header),
so its CPU is a control: when it moves, the machine did. `--from-record PATH`
prints both tables again from a record, without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import probes
from collector.devtools.processes import ROOT

CONFIGS = {
    "baseline": {"AUTH_ENABLED": "false", "RATE_LIMIT_PER_DEVICE": "0", "DEVICES_EXACTLY_ONCE": "false"},
    "exactly-once": {"AUTH_ENABLED": "false", "RATE_LIMIT_PER_DEVICE": "0", "DEVICES_EXACTLY_ONCE": "true"},
    "auth+limits": {"AUTH_ENABLED": "true", "RATE_LIMIT_PER_DEVICE": "1000", "DEVICES_EXACTLY_ONCE": "false"},
}


def cpu_seconds_per_million(phase: dict) -> float:
    return probes.cpu_seconds_per_million(phase["cpu"], phase["duration_s"], phase["accepted_logs"])


def service_per_locust(run: dict) -> float:
    return sum(run["cpu"].get(group, 0.0) for group in probes.SERVICE_GROUPS) / run["cpu"]["locust"]


def print_tables(runs: list[dict], names: list[str]) -> dict:
    medians = {n: statistics.median(r["cpu_s_per_million_logs"] for r in runs if r["config"] == n) for n in names}
    normalized = {n: statistics.median(service_per_locust(r) for r in runs if r["config"] == n) for n in names}
    control = {n: statistics.median(r["cpu"]["locust"] for r in runs if r["config"] == n) for n in names}
    print("\n| configuration | CPU s per million logs (median) | vs baseline | collector CPU per Locust CPU "
          "(median) | vs baseline | Locust CPU %, median (range) |\n|---|--:|--:|--:|--:|--:|")
    for name in names:
        locust = [r["cpu"]["locust"] for r in runs if r["config"] == name]
        raw = f"{medians[name] / medians['baseline'] - 1:+.1%}" if "baseline" in medians else "—"
        norm = f"{normalized[name] / normalized['baseline'] - 1:+.1%}" if "baseline" in normalized else "—"
        print(f"| {name} | {medians[name]:.1f} | {raw} | {normalized[name]:.2f} | {norm} | "
              f"{control[name]:.1f} ({min(locust):.1f}–{max(locust):.1f}) |")
    return {"cpu_s_per_million_logs": medians, "collector_cpu_per_locust_cpu": normalized}


def run_once(name: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-compare-{name}-") as out:
        env = {**os.environ, **CONFIGS[name]}
        argv = [sys.executable, "-m", "bench", "--phases", "batch", "--duration", str(args.duration),
                "--batch-rate", str(args.batch_rate), "--out", out]
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"bench failed for {name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        report = json.loads((Path(out) / "latest.json").read_text())
    [phase] = [p for p in report["phases"] if p["name"] == "batch"]
    return {"config": name, "revision": report.get("revision"), "accepted_logs": phase["accepted_logs"],
            "persisted_after_settle": phase["persisted_after_settle"], "failures": phase["failures"],
            "duration_s": phase["duration_s"], "cpu": phase["cpu"], "p50_ms": phase["p50_ms"],
            "p99_ms": phase["p99_ms"], "cpu_s_per_million_logs": round(cpu_seconds_per_million(phase), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    parser.add_argument("--batch-rate", type=float, default=20.0, help="logs/s per device (100 devices)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ", ".join(CONFIGS))
    parser.add_argument("--record", type=Path, help="write every run and the medians to this JSON file")
    parser.add_argument("--from-record", type=Path, help="print the tables of this record; run nothing")
    args = parser.parse_args(argv)
    if args.from_record:
        runs = json.loads(args.from_record.read_text())["runs"]
        print_tables(runs, list(dict.fromkeys(r["config"] for r in runs)))
        return 0
    names = [n for n in args.configs.split(",") if n]
    runs = []
    for i in range(args.runs):
        for name in names:  # interleaved, so drift over the session hits every configuration alike
            result = run_once(name, args)
            runs.append(result)
            print(f"run {i + 1}/{args.runs} {name}: {result['cpu_s_per_million_logs']} CPU s per million logs "
                  f"({result['accepted_logs']} logs, p99 {result['p99_ms']} ms)", flush=True)
    medians = print_tables(runs, names)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(json.dumps({"command": "python -m bench.compare " + " ".join(argv or sys.argv[1:]),
                                           "runs": runs, "medians": medians}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
