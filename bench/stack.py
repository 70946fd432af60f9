"""The stack the bench starts: the Procfile's api1, api2, worker, beat and nginx, each a
`collector.devtools.processes.Process` in a process group of its own, on the bench's
ports, database and Redis namespace."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import PROCFILE, BenchError, http_ok, log
from bench.options import BENCH_DATABASE, Target, target_redis_url
from collector.devtools.processes import ROOT, Process, WaitTimeout, nginx_binary, port_in_use, wait_until

STOP_TIMEOUT = 30.0  # seconds a service gets to shut down gracefully before SIGKILL
FLEET_PREFIX = "bench-"  # every device id the bench's phases use starts with it (--device-prefix bench-<phase>)


def read_procfile(path: Path = PROCFILE) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (env assignments, argv) for each `name: VAR=value command args` line.

    The bench starts exactly what `make run` starts, so a change to the Procfile (say,
    worker concurrency) shows up in the next benchmark without touching the bench.
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


def _bench_node_name(name: str) -> str:
    """worker1@%h -> bench-worker1@%h: a Celery node name of our own."""
    return name if name.startswith("bench-") else f"bench-{name}"


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
        self.services: dict[str, Process] = {}
        self.running: set[str] = set()  # started and not stopped on purpose
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
            self.services[name] = Process(name, argv, env, run_dir / "logs" / f"{name}.log")

    def start(self, name: str) -> None:
        service = self.services[name].start()
        self.running.add(name)
        log(f"started {name} (pid {service.pid}): {shlex.join(service.argv)}")

    def stop(self, name: str) -> None:
        if name not in self.running:
            return
        self.running.discard(name)
        code = self.services[name].stop(STOP_TIMEOUT)
        if code == -signal.SIGKILL:
            log(f"{name} did not stop within {STOP_TIMEOUT:.0f} s: killed it")
        log(f"stopped {name} (exit {code})")

    def stop_all(self) -> None:
        # Front to back: no new requests, then no new logs, then the drain.
        for name in ("nginx", "api1", "api2", "beat", "worker"):
            try:
                self.stop(name)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others, whatever happened
                log(f"could not stop {name}: {exc!r}")

    def check(self) -> None:
        """Fail fast if a service died: numbers from a half-dead stack would mislead."""
        for name in self.running:
            service = self.services[name]
            if not service.alive():
                raise BenchError(f"{name} exited with {service.returncode}; see {service.log_path}")

    def pids(self, *names: str) -> list[int]:
        return [s.pid for n in names if (s := self.services[n]).alive() and s.pid]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25,
              check: Callable[[], None] | None = None) -> None:
    """devtools' wait_until, its timeout reported as a BenchError (the run cannot go on)."""
    try:
        wait_until(predicate, timeout, what, interval=interval, check=check)
    except WaitTimeout as exc:
        raise BenchError(str(exc)) from None


def run_checked(argv: list[str], env: dict[str, str], timeout: float, what: str) -> None:
    try:
        out = subprocess.run(argv, check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise BenchError(f"{what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    log(f"{what}: {(out.stdout or out.stderr).strip().splitlines()[-1:] or ['ok']}")


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


def drop_database(database_url: str, name: str) -> None:
    """DROP DATABASE `name` (one of the bench's own) on the server of `database_url`."""
    import psycopg
    from psycopg import sql

    admin = psycopg.conninfo.make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    log(f"dropped database {name} (the bench's own)")


def reset_for_drain(settings, database_name: str) -> None:
    """For the benches that drain in-process (drainloop, storage): wipe their own database
    and key prefix, migrate, and create the consumer group at id 0 (so it sees a pre-fill)."""
    import redis

    from collector.pipeline.group import ensure_group
    from collector.store.migrations import migrate

    drop_database(settings.database_url, database_name)
    delete_namespace(settings.key_prefix)
    migrate(settings.database_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=30)
    try:
        ensure_group(client, settings.stream, settings.consumer_group)
    finally:
        client.close()


def prepare_own_namespace(target: Target, stack_env: dict[str, str]) -> None:
    """Wipe the bench's own database and key prefix (never one the user chose), then migrate."""
    if target.wipe_database:
        drop_database(target.database_url, BENCH_DATABASE)
    if target.wipe_redis:
        delete_namespace(target.key_prefix)
    run_checked([sys.executable, "-m", "collector.migrate"], stack_env, 120, "migrate")


def start_stack(args: argparse.Namespace, target: Target, stack: Stack) -> None:
    for port in (args.api1_port, args.api2_port):
        if port_in_use(port):
            raise BenchError(f"port {port} is in use but nothing answers /health on :{args.port}; "
                             "stop it or choose --api1-port/--api2-port/--port")
    if nginx_binary() is None:
        raise BenchError("nginx is not installed: sudo apt-get install -y nginx (or brew install nginx)")
    started = time.monotonic()
    for name in ("worker", "beat", "api1", "api2", "nginx"):
        stack.start(name)
    for port in (args.api1_port, args.api2_port):
        wait_for(lambda p=port: http_ok(f"http://127.0.0.1:{p}/health"), 60, f"the API on :{port}",
                 check=stack.check)
    wait_for(lambda: http_ok(f"{target.base_url}/health"), 30, f"nginx on :{args.port}", check=stack.check)
    wait_for(lambda: worker_polled_since(stack, started), 90, "the Celery worker's first drain run",
             interval=0.5, check=stack.check)
    target.locust_env.update(
        DEVICES_API_KEY=create_key(stack, "--prefix", FLEET_PREFIX, "--name", "bench fleet"),
        DEVICES_READER_KEY=create_key(stack, "--role", "reader", "--name", "bench reader"))
    log(f"stack ready in {time.monotonic() - started:.1f} s")


def create_key(stack: Stack, *options: str) -> str:
    """A key made with the collector's own CLI in the stack's database and namespace; its secret."""
    argv = [sys.executable, "-m", "collector.keys", "create", *options]
    try:
        out = subprocess.run(argv, check=False, cwd=ROOT, env=stack.base_env, capture_output=True, text=True,
                             timeout=60)
    except subprocess.TimeoutExpired:
        raise BenchError("python -m collector.keys create did not finish within 60 s") from None
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise BenchError(f"python -m collector.keys create {' '.join(options)} failed ({out.returncode}): "
                         f"{out.stderr.strip()}")
    return lines[-1].strip()  # the secret alone on the last line: the CLI's contract


def worker_polled_since(stack: Stack, since: float) -> bool:
    """True once a consumer of the drain group read the stream after `since`: the worker
    runs, beat reaches it, and the drain works (better than waiting a fixed time)."""
    import redis

    from collector.core.settings import load_settings

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
