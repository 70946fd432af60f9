"""What OTLP ingest costs the API next to our own JSON batches, in CPU per 1,000 logs.

    .venv/bin/python -m bench.otlp_cost [--logs 20000] [--rounds 4] [--batch 5] [--record PATH]

Starts one Gunicorn API (gunicorn.conf.py, one gevent worker, keys and rate limits off)
against a database and Redis key prefix of its own (both removed afterwards), and posts
the same logs in batches of `--batch`: as protobuf ExportLogsServiceRequests to
/v1/logs, and as JSON to /api/logs/batch carrying exactly what /v1/logs makes of them
(the same message, level, time and log_data: both queue identical entries),
interleaved in `--rounds` rounds (the order
alternating), so drift in what else the machine runs lands on both alike. The figure is
the CPU time (utime + stime, /proc/<pid>/stat) of the Gunicorn master and its children
per 1,000 logs queued, for each. Nothing drains the stream: PostgreSQL plays no part in
ingest. The bodies are built before the clock starts; the client's CPU is not counted.
Prints one line and writes bench-results/otlp_cost.json (and --record PATH).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from bench.common import BenchError, dumps, log
from bench.machine import git_revision, machine_info
from bench.options import own_database_url, target_redis_url
from bench.probes import CLOCK_TICKS, descendants, proc_table
from bench.stack import delete_namespace, drop_database
from collector.core.settings import load_settings
from collector.devtools.processes import ROOT, Process, free_port, wait_until
from collector.store.migrations import migrate
from collector.web import otlp_mapping

DATABASE = "collector_bench_otlp_cost"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SEVERITY = {"DEBUG": 5, "INFO": 9, "WARNING": 13, "ERROR": 17, "CRITICAL": 21}  # the first of each OTel range
DEVICES = 100
CLIENTS = 8  # concurrent connections: enough to keep the one worker busy, few enough for 2 cores
EPOCH_NS = 1_764_547_200_000_000_000  # 2025-12-01T00:00:00Z


def the_logs(n: int, batch: int) -> list[dict]:
    """The logs both endpoints get: each batch one device's (of DEVICES), as a device sends
    its own; a level, a message, log_data and a time each."""
    return [{"device_id": f"bench-otlp-{(i // batch) % DEVICES:03d}", "log_level": LEVELS[i % len(LEVELS)],
             "message": f"otlp cost log {i}", "log_data": {"seq": i, "fw": "1.2.3"},
             "nanos": EPOCH_NS + i * 1000} for i in range(n)]


def json_body(otlp: bytes) -> bytes:
    """The logs an OTLP body becomes (collector.web.otlp_mapping: the device's resource
    attributes, the record's attributes and severity number in log_data), as our JSON
    batch: both endpoints then queue the very same logs, so what differs is the protocol."""
    export = ExportLogsServiceRequest()
    export.ParseFromString(otlp)
    logs = []
    for resource_logs in export.resource_logs:
        device, _ = otlp_mapping.device_of(resource_logs.resource.attributes, ["device.id"])
        resource = otlp_mapping.attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:  # the bench's scopes are empty
            logs += [otlp_mapping.to_candidate(record, device, resource, {}) for record in scope_logs.log_records]
    for one in logs:
        one["timestamp"] = one["timestamp"].isoformat()  # as a device writes it
    return json.dumps({"logs": logs}).encode()


def otlp_body(batch: list[dict]) -> bytes:
    """The same logs as an exporter sends them: records grouped under their resource (the
    device, as resource attribute device.id) and scope; the log_data as record attributes."""
    export = ExportLogsServiceRequest()
    records = None
    for x in batch:
        if records is None or export.resource_logs[-1].resource.attributes[0].value.string_value != x["device_id"]:
            resource_logs = export.resource_logs.add()
            resource_logs.resource.attributes.append(
                KeyValue(key="device.id", value=AnyValue(string_value=x["device_id"])))
            records = resource_logs.scope_logs.add().log_records
        records.append(LogRecord(
            time_unix_nano=x["nanos"], severity_number=SEVERITY[x["log_level"]],
            body=AnyValue(string_value=x["message"]),
            attributes=[KeyValue(key="seq", value=AnyValue(int_value=x["log_data"]["seq"])),
                        KeyValue(key="fw", value=AnyValue(string_value=x["log_data"]["fw"]))]))
    return export.SerializeToString()


def api_cpu_seconds(master_pid: int) -> float:
    """CPU time so far of the Gunicorn master and every process under it."""
    table = proc_table()
    return sum(table[pid].cpu_ticks for pid in descendants([master_pid], table)) / CLOCK_TICKS


def post_all(url: str, content_type: str, bodies: list[bytes]) -> None:
    def send(chunk: list[bytes]) -> None:
        with requests.Session() as http:
            for body in chunk:
                response = http.post(url, data=body, headers={"Content-Type": content_type}, timeout=30)
                if response.status_code != 200:
                    raise BenchError(f"{url} answered {response.status_code}: {response.text[:300]}")

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, [bodies[i::CLIENTS] for i in range(CLIENTS)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_cost", description=__doc__.split("\n")[0])
    parser.add_argument("--logs", type=int, default=20_000, help="logs sent through each endpoint")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=5, help="logs per request")
    parser.add_argument("--record", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    per_round = args.logs // args.rounds
    if per_round % args.batch or per_round == 0:
        parser.error("--logs / --rounds must be a positive multiple of --batch")

    database_url, prefix = own_database_url(DATABASE), f"bench-otlp:{uuid.uuid4().hex[:8]}:"
    logs = the_logs(per_round, args.batch)  # every round sends the same logs (their ids repeat; nothing dedupes them)
    batches = [logs[i:i + args.batch] for i in range(0, per_round, args.batch)]
    otlp_bodies = [otlp_body(b) for b in batches]
    bodies = {"json": [json_body(b) for b in otlp_bodies], "otlp": otlp_bodies}
    endpoints = {"json": ("/api/logs/batch", "application/json"), "otlp": ("/v1/logs", "application/x-protobuf")}

    drop_database(database_url, DATABASE)
    migrate(database_url)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in ("BIND", "ACCESS_LOG")},
           "PORT": str(port), "WEB_CONCURRENCY": "1",
           "REDIS_URL": target_redis_url(), "DATABASE_URL": database_url, "KEY_PREFIX": prefix,
           "INSTANCE_NAME": "bench-otlp-cost", "AUTH_ENABLED": "false", "RATE_LIMIT_PER_DEVICE": "0",
           "BACKLOG_HIGH_WATER": "100000000", "BACKLOG_LOW_WATER": "99000000", "LOG_LEVEL": "WARNING"}
    run_dir = ROOT / "bench-results" / "otlp-cost"
    api = Process("api", [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py"], env,
                  run_dir / "api.log").start()
    base = f"http://127.0.0.1:{port}"
    seconds = {"json": 0.0, "otlp": 0.0}
    try:
        wait_until(lambda: requests.get(f"{base}/livez", timeout=2).status_code == 200, 60, "the API")
        for kind in ("json", "otlp"):  # warm up: imports, schema caches, connections
            post_all(base + endpoints[kind][0], endpoints[kind][1], bodies[kind][:200])
        started = time.time()
        for r in range(args.rounds):
            for kind in (("json", "otlp") if r % 2 == 0 else ("otlp", "json")):
                before = api_cpu_seconds(api.pid)
                post_all(base + endpoints[kind][0], endpoints[kind][1], bodies[kind])
                seconds[kind] += api_cpu_seconds(api.pid) - before
                log(f"round {r + 1}/{args.rounds}: {kind} done ({seconds[kind]:.2f} CPU s so far)")
        finished = time.time()
        # Every log sent was queued (warm-up included): the figures are about work done.
        queued = redis.Redis.from_url(target_redis_url()).xlen(load_settings(env).stream)
        expected = 2 * (args.logs + 200 * args.batch)
        if queued != expected:
            raise BenchError(f"{queued} entries in the stream, not the {expected} logs sent")
    finally:
        api.stop(30)
        delete_namespace(prefix)
        drop_database(database_url, DATABASE)

    per_1000 = {kind: round(1000 * seconds[kind] / args.logs, 3) for kind in seconds}
    ratio = round(per_1000["otlp"] / per_1000["json"], 2) if per_1000["json"] else None
    result = {
        "command": " ".join(["python -m bench.otlp_cost", *(argv if argv is not None else sys.argv[1:])]),
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(timespec="seconds"),
        "finished": dt.datetime.fromtimestamp(finished, dt.UTC).isoformat(timespec="seconds"),
        "logs_per_endpoint": args.logs, "rounds": args.rounds, "logs_per_request": args.batch,
        "clients": CLIENTS, "api": "one Gunicorn master + one gevent worker (WEB_CONCURRENCY=1)",
        "api_cpu_seconds": {kind: round(v, 2) for kind, v in seconds.items()},
        "logs_queued": queued,
        "api_cpu_seconds_per_1000_logs": {"json_api_logs_batch": per_1000["json"], "otlp_protobuf_v1_logs":
                                          per_1000["otlp"]},
        "otlp_over_json": ratio,
        "machine": machine_info(), "revision": git_revision(),
    }
    print(f"API CPU per 1,000 logs (batches of {args.batch}, {args.logs:,} logs each, {args.rounds} rounds): "
          f"/api/logs/batch JSON {per_1000['json']:.3f} s, /v1/logs protobuf {per_1000['otlp']:.3f} s "
          f"(/v1/logs costs {ratio}x /api/logs/batch)")
    for path in (ROOT / "bench-results" / "otlp_cost.json", args.record):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
