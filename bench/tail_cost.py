"""What open live tails cost ingest, and how soon a log reaches a tail after its 200.

    .venv/bin/python -m bench.tail_cost [--tails 200] [--devices 1000] [--logs 50000] [--rounds 5]
                                        [--batch 50] [--rates 1000,10000] [--seconds 15] [--drain-interval 1]
                                        [--record PATH]

Starts one Gunicorn API (gunicorn.conf.py, one gevent worker, keys and rate limits off),
a Celery worker and beat as the Procfile runs them, on a database and Redis key prefix
of their own (removed afterwards). The fleet is `--devices` devices, each request one
batch of `--batch` logs.

Cost: the same logs are posted in `--rounds` rounds of three modes, in rotating order:
no tail open; `--tails` tails open on devices that send nothing (what being open costs:
the poller, heartbeats); `--tails` tails open on as many of the sending devices (so that
share of the logs is read back and sent). Tails are opened before and closed after the
measured span, which ends once every log is stored and every tailed log was received.
The figure is the CPU time (utime + stime, /proc) of the Gunicorn master and worker per
1,000 logs.

Latency: with the active tails open (one of them on a probe device), logs are posted at
each of `--rates` logs/s for `--seconds`, each request carrying one probe log. For each
probe: its 200, the moment the watermark (collector.pipeline.watermark, polled every 5 ms
here) passed it, i.e. it was stored, and the moment the tail delivered it. The drain runs
every `--drain-interval` seconds (DRAIN_INTERVAL) and at once after a full batch.
`--rounds 0` skips the cost part. Prints the figures; writes bench-results/tail_cost.json
(and --record PATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import selectors
import socket
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

from bench.common import BenchError, dumps, log
from bench.machine import git_revision, machine_info
from bench.options import own_database_url, target_redis_url
from bench.probes import CLOCK_TICKS, descendants, proc_table
from bench.stack import delete_namespace, drop_database
from collector.core.settings import load_settings
from collector.devtools.processes import ROOT, Process, free_port, wait_until
from collector.pipeline.group import backlog, parse_id
from collector.pipeline.watermark import stored_up_to
from collector.store.migrations import migrate

DATABASE = "collector_bench_tail_cost"
CLIENTS = 8
PROBE = "bench-tail-probe"
BIN = Path(sys.executable).parent
_PROBE_RE = re.compile(rb'"message":"probe (\d+)"')


class Tails:
    """Many SSE connections read by one thread (selectors): events counted per tail, and the
    time each probe event arrived. HTTP/1.0, so the body is the bare stream (no chunks)."""

    def __init__(self, port: int, devices: list[str]) -> None:
        self.selector = selectors.DefaultSelector()
        self.counts = dict.fromkeys(devices, 0)
        self.opened: set[str] = set()
        self.refused: list[str] = []
        self.probes: dict[int, float] = {}
        self.lock = threading.Lock()
        for device in devices:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(f"GET /api/logs/{device}/tail HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, [device, b""])
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_until(lambda: len(self.opened) + len(self.refused) == len(devices), 60, f"{len(devices)} tails to open")
        if self.refused:
            self.close()
            raise BenchError(f"{len(self.refused)} tails refused, e.g. {self.refused[0]}")

    def _read(self) -> None:
        while self.running:
            for key, _ in self.selector.select(0.1):
                data = key.fileobj.recv(65536)
                device, buffer = key.data
                if not data:
                    self.selector.unregister(key.fileobj)
                    with self.lock:
                        if device not in self.opened:
                            self.refused.append((buffer or b"closed")[:300].decode(errors="replace"))
                    continue
                *blocks, key.data[1] = (buffer + data).split(b"\n\n")
                now = time.monotonic()
                with self.lock:
                    for block in blocks:
                        if block.startswith(b"HTTP/") and b" 200 " not in block.split(b"\r\n", 1)[0]:
                            self.refused.append(block[:300].decode(errors="replace"))
                        if b"retry: " in block:
                            self.opened.add(device)
                        if b"\ndata: " in b"\n" + block:
                            self.counts[device] += 1
                            if match := _PROBE_RE.search(block):
                                self.probes[int(match[1])] = now

    def received(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def close(self) -> None:
        self.running = False
        self.thread.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def api_cpu_seconds(master_pid: int) -> float:
    """CPU time so far of the Gunicorn master and every process under it."""
    table = proc_table()
    return sum(table[pid].cpu_ticks for pid in descendants([master_pid], table)) / CLOCK_TICKS


def bodies_for(n: int, batch: int, devices: int, probe_every: bool = False) -> list[bytes]:
    out = []
    for start in range(0, n, batch):
        logs = [{"device_id": f"bench-tail-{(i // batch) % devices:04d}", "log_level": "INFO",
                 "message": f"tail cost log {i}", "log_data": {"seq": i}} for i in range(start, start + batch)]
        if probe_every:
            logs[-1] = {"device_id": PROBE, "log_level": "INFO", "message": f"probe {start // batch}"}
        out.append(json.dumps({"logs": logs}).encode())
    return out


def post_all(url: str, bodies: list[bytes], rate: float | None = None, on_answer=None) -> None:
    """Post every body with CLIENTS connections: as fast as the API answers, or paced to
    `rate` requests/s in all (a client that falls behind sends at once)."""
    started = time.monotonic()

    def send(client: int) -> None:
        with requests.Session() as http:
            for k in range(client, len(bodies), CLIENTS):
                if rate:
                    time.sleep(max(0.0, started + k / rate - time.monotonic()))
                response = http.post(url, data=bodies[k], headers={"Content-Type": "application/json"}, timeout=30)
                if response.status_code != 200:
                    raise BenchError(f"{url} answered {response.status_code}: {response.text[:300]}")
                if on_answer is not None:
                    on_answer(k, time.monotonic(), response.json())

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, range(CLIENTS)))


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50_ms": pick(0.5), "p95_ms": pick(0.95), "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 1)}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.database_url, self.prefix = own_database_url(DATABASE), f"bench-tail:{uuid.uuid4().hex[:8]}:"
        self.port = free_port()
        self.env = {**{k: v for k, v in os.environ.items() if k not in ("BIND", "ACCESS_LOG")},
                    "PORT": str(self.port), "WEB_CONCURRENCY": "1", "REDIS_URL": target_redis_url(),
                    "DATABASE_URL": self.database_url, "KEY_PREFIX": self.prefix, "AUTH_ENABLED": "false",
                    "RATE_LIMIT_PER_DEVICE": "0", "BACKLOG_HIGH_WATER": "100000000", "BACKLOG_LOW_WATER": "99000000",
                    "LOG_LEVEL": "WARNING", "INSTANCE_NAME": "bench-tail",
                    "DRAIN_INTERVAL": str(args.drain_interval)}
        self.settings = load_settings(self.env)
        self.redis = redis.Redis.from_url(target_redis_url())
        self.url = f"http://127.0.0.1:{self.port}/api/logs/batch"
        self.procs: list[Process] = []

    def start(self) -> None:
        drop_database(self.database_url, DATABASE)
        migrate(self.database_url)
        run_dir = ROOT / "bench-results" / "tail-cost"
        env = {**self.env, "BEAT_SCHEDULE_FILE": str(run_dir / "celerybeat-schedule")}
        for name, argv in (("api", [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"]),
                           ("worker", [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "-n",
                                       "bench-tail@%h", "--loglevel=WARNING"]),
                           ("beat", [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel=WARNING"])):
            self.procs.append(Process(name, argv, env, run_dir / f"{name}.log").start())
        wait_until(lambda: requests.get(f"http://127.0.0.1:{self.port}/livez", timeout=2).status_code == 200, 60,
                   "the API")
        # Warm-up (imports, caches, connections; the drain answers), as much as one round.
        post_all(self.url, bodies_for(self.args.logs, self.args.batch, self.args.devices))
        self.wait_stored()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(30)
        delete_namespace(self.prefix)
        drop_database(self.database_url, DATABASE)

    def wait_stored(self) -> None:
        def stored() -> bool:
            return backlog(self.redis, self.settings.stream, self.settings.consumer_group) == 0
        wait_until(stored, 600, "every log stored", interval=0.05)

    def cost(self) -> dict:
        a = self.args
        bodies = bodies_for(a.logs, a.batch, a.devices)
        active = [f"bench-tail-{i:04d}" for i in range(a.tails)]
        idle = [f"bench-tail-idle-{i:04d}" for i in range(a.tails)]
        expected = sum(a.batch for k in range(len(bodies)) if k % a.devices < a.tails)
        seconds = {"none": 0.0, "idle": 0.0, "active": 0.0}
        per_round: dict[str, list[float]] = {mode: [] for mode in seconds}
        modes = list(seconds)
        for r in range(a.rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:
                tails = Tails(self.port, {"none": [], "idle": idle, "active": active}[mode]) if mode != "none" else None
                before = api_cpu_seconds(self.procs[0].pid)
                post_all(self.url, bodies)
                self.wait_stored()
                if mode == "active":
                    wait_until(lambda t=tails: t.received() >= expected, 120, f"{expected} tailed logs received")
                time.sleep(0.5)  # the same settle in every mode: a few poller ticks
                spent = api_cpu_seconds(self.procs[0].pid) - before
                seconds[mode] += spent
                per_round[mode].append(round(1000 * spent / a.logs, 4))
                if tails is not None:
                    tails.close()
                log(f"round {r + 1}/{a.rounds}: {mode} done ({seconds[mode]:.2f} CPU s so far)")
        total = a.logs * a.rounds
        per_1000 = {mode: round(1000 * s / total, 4) for mode, s in seconds.items()}
        return {"api_cpu_seconds": {m: round(s, 2) for m, s in seconds.items()},
                "api_cpu_seconds_per_1000_logs": per_1000, "per_round": per_round,
                "increase_percent": {m: round(100 * (per_1000[m] / per_1000["none"] - 1), 1)
                                     for m in ("idle", "active")},
                # Each round's modes ran back to back: their ratio cancels drift between rounds.
                "median_round_increase_percent": {
                    m: round(100 * (statistics.median(x / n for x, n in zip(per_round[m], per_round["none"],
                                                                             strict=True)) - 1), 1)
                    for m in ("idle", "active")},
                "tailed_share_of_logs_active": round(expected / a.logs, 3)}

    def latency(self, rate: float) -> dict:
        a = self.args
        requests_per_second = rate / a.batch
        bodies = bodies_for(int(rate * a.seconds), a.batch, a.devices, probe_every=True)
        answered: dict[int, tuple[float, tuple[int, int]]] = {}
        stored: dict[int, float] = {}
        tails = Tails(self.port, [PROBE] + [f"bench-tail-{i:04d}" for i in range(a.tails - 1)])
        sampling = threading.Event()

        def on_answer(k: int, when: float, body: dict) -> None:
            answered[k] = (when, parse_id(body["message_ids"][-1]))

        def sample() -> None:  # when each probe's entry came under the watermark
            while not sampling.is_set():
                w = stored_up_to(self.redis, self.settings.stream, self.settings.consumer_group)
                now = time.monotonic()
                for k, (_, entry) in list(answered.items()):
                    if k not in stored and w is not None and entry <= w.entry:
                        stored[k] = now
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        before, started = api_cpu_seconds(self.procs[0].pid), time.monotonic()
        post_all(self.url, bodies, rate=requests_per_second, on_answer=on_answer)
        posting = time.monotonic() - started
        cpu = api_cpu_seconds(self.procs[0].pid) - before
        wait_until(lambda: len(tails.probes) >= len(bodies), 300, "every probe in the tail")
        sampling.set()
        sampler.join()
        tails.close()
        to_tail = [tails.probes[k] - answered[k][0] for k in answered]
        to_stored = [stored[k] - answered[k][0] for k in answered if k in stored]
        after_stored = [tails.probes[k] - stored[k] for k in answered if k in stored]
        return {"target_logs_per_s": rate, "achieved_logs_per_s": round(len(bodies) * a.batch / posting),
                "probes": len(bodies), "api_cpu_seconds_per_1000_logs": round(1000 * cpu / (len(bodies) * a.batch), 4),
                "200_to_tail": percentiles(to_tail), "200_to_stored": percentiles(to_stored),
                "stored_to_tail": percentiles(after_stored)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tail_cost", description=__doc__.split("\n")[0])
    p.add_argument("--tails", type=int, default=200)
    p.add_argument("--devices", type=int, default=1000, help="devices the logs are spread over")
    p.add_argument("--logs", type=int, default=50_000, help="logs per round and mode")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=50, help="logs per request")
    p.add_argument("--rates", default="1000,10000", help="logs/s of the latency runs, comma-separated")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds of each latency run")
    p.add_argument("--drain-interval", type=float, default=1.0, help="DRAIN_INTERVAL of the drain (its default: 1)")
    p.add_argument("--record", type=Path, help="also write the result here")
    args = p.parse_args(argv)
    if not 0 < args.tails <= args.devices or args.logs % args.batch or args.rounds < 0:
        p.error("--tails must be 1..--devices, --logs a multiple of --batch, --rounds >= 0 (0: latency only)")
    bench = Bench(args)
    started = time.time()
    try:
        bench.start()
        cost = bench.cost() if args.rounds else None
        latency = [bench.latency(float(rate)) for rate in args.rates.split(",")]
    finally:
        bench.stop()
    result = {
        "command": " ".join(["python -m bench.tail_cost", *(argv if argv is not None else sys.argv[1:])]),
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "tails": args.tails, "devices": args.devices, "logs_per_round": args.logs, "rounds": args.rounds,
        "logs_per_request": args.batch, "clients": CLIENTS, "drain_interval": args.drain_interval,
        "api": "one Gunicorn master + one gevent worker (WEB_CONCURRENCY=1); Celery worker and beat as the Procfile",
        "cost": cost, "latency": latency, "machine": machine_info(), "revision": git_revision(),
    }
    if cost is not None:
        c = cost["api_cpu_seconds_per_1000_logs"]
        print(f"API CPU per 1,000 logs ({args.logs:,} logs x {args.rounds} rounds each, batches of {args.batch}): "
              f"no tails {c['none']:.4f} s; {args.tails} idle tails {c['idle']:.4f} s "
              f"({cost['increase_percent']['idle']:+.1f}%); {args.tails} tails on sending devices {c['active']:.4f} s "
              f"({cost['increase_percent']['active']:+.1f}%, {cost['tailed_share_of_logs_active']:.0%} of logs "
              f"tailed); median of the rounds' own ratios: idle {cost['median_round_increase_percent']['idle']:+.1f}%, "
              f"active {cost['median_round_increase_percent']['active']:+.1f}%; per round: {cost['per_round']}")
    for run in latency:
        print(f"at {run['target_logs_per_s']:,.0f} logs/s (achieved {run['achieved_logs_per_s']:,}): 200 -> tail "
              f"{run['200_to_tail']}; 200 -> stored {run['200_to_stored']}; stored -> tail {run['stored_to_tail']}")
    for path in (ROOT / "bench-results" / "tail_cost.json", args.record):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
