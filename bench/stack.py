"""The stack the bench starts: the Procfile's api1, api2, worker, beat and nginx, each a
`collector.devtools.processes.Process` in a process group of its own, on the bench's
ports, database and Redis namespace; by default this checkout's code, or another
checkout's (`Checkout`: its Procfile, directory, PYTHONPATH and virtualenv), which
`python -m bench.wrk --code DIR` runs to compare revisions."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.common import PROCFILE, BenchError, http_ok, log
from bench.machine import git_revision
from bench.options import BENCH_DATABASE, Target, target_redis_url
from collector.devtools.processes import ROOT, Process, WaitTimeout, nginx_binary, port_in_use, wait_until

STOP_TIMEOUT = 30.0  # seconds a service gets to shut down gracefully before SIGKILL
FLEET_PREFIX = "bench-"  # every device id the bench's phases use starts with it (--device-prefix bench-<phase>)
# Not passed on from our environment: the bench sets its own, or leaves them unset. WORKER_PIDFILE is
# `make run`'s (collector/devtools/run.py); unset, the Procfile's --pidfile="${WORKER_PIDFILE:-}" is
# empty and the worker writes no pidfile.
NOT_INHERITED = ("BIND", "PORT", "INSTANCE_NAME", "WORKER_PIDFILE")

_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand(word: str, env: Mapping[str, str]) -> str:
    """`${VAR:-default}` and `${VAR}` in `word` as a shell expands them (honcho runs each
    Procfile line in one): VAR's value, else the default (or nothing) when VAR is unset or empty."""
    return _VARIABLE.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", word)


def read_procfile(path: Path = PROCFILE, env: Mapping[str, str] | None = None
                  ) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (env assignments, argv) for each `name: VAR=value command args` line, with
    `${VAR:-default}` expanded from `env` (default: ours), as honcho's shell would.

    The bench starts exactly what `make run` starts, so a change to the Procfile (say,
    worker concurrency) shows up in the next benchmark without touching the bench.
    """
    env = os.environ if env is None else env
    entries = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        name, command = line.split(":", 1)
        words = [expand(word, env) for word in shlex.split(command)]
        assignments = {}
        while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
            key, value = words.pop(0).split("=", 1)
            assignments[key] = value
        entries[name.strip()] = (assignments, words)
    return entries


def bench_node_name(name: str) -> str:
    """worker1@%h -> bench-worker1@%h: a Celery node name of our own."""
    return name if name.startswith("bench-") else f"bench-{name}"


@dataclass(frozen=True)
class Checkout:
    """The code a stack runs: a checkout of the collector, the virtualenv its Procfile's
    `.venv/bin/...` paths mean, and its revision.

    Another checkout than this one runs in its own directory with PYTHONPATH=root: a shared
    virtualenv (this one's) has this checkout installed in editable mode."""

    root: Path
    venv: Path
    revision: str

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self) -> dict[str, str]:
        """What its processes need besides the stack's settings."""
        return {} if self.root == ROOT else {"PYTHONPATH": str(self.root)}

    def command(self, argv: list[str]) -> list[str]:
        """A Procfile command, its `.venv/...` words made paths into `venv`."""
        if self.venv == self.root / ".venv":
            return argv
        return [str(self.venv / word[len(".venv/"):]) if word.startswith(".venv/") else word for word in argv]


def checkout_at(root: Path = ROOT) -> Checkout:
    """The checkout at `root` (default: this one), with its own .venv, or else this one's."""
    root = root.resolve()
    venv = root / ".venv" if (root / ".venv" / "bin" / "python").exists() else ROOT / ".venv"
    return Checkout(root, venv, git_revision(root))


class Stack:
    """api1, api2, worker, beat and nginx from the Procfile of `checkout` (default: this one),
    on the bench's ports and namespace; `settings` (collector settings, say AUTH_ENABLED) go to
    every process and to `base_env`, the environment of the commands run beside them."""

    NAMES = ("worker", "beat", "api1", "api2", "nginx")

    def __init__(self, args: argparse.Namespace, target: Target, run_dir: Path, checkout: Checkout | None = None,
                 settings: Mapping[str, str] | None = None) -> None:
        self.checkout = checkout or checkout_at()
        base = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        base.update(
            DATABASE_URL=target.database_url,
            KEY_PREFIX=target.key_prefix,
            # Not the default /tmp path, which a `make run` beat on this host would share.
            BEAT_SCHEDULE_FILE=str(run_dir / "celerybeat-schedule"),
            PYTHONUNBUFFERED="1",
            **self.checkout.env(),
            **(settings or {}),
        )
        ports = {"api1": args.api1_port, "api2": args.api2_port}
        path = self.checkout.root / "Procfile"
        # Its ${API1_PORT:-8001}s mean our ports (an older Procfile has the ports as they are: set below).
        procfile = read_procfile(path, {**base, "API1_PORT": str(args.api1_port), "API2_PORT": str(args.api2_port)})
        missing = [n for n in self.NAMES if n not in procfile]
        if missing:
            raise BenchError(f"{path} has no {', '.join(missing)} entry")
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
            argv = self.checkout.command(argv)
            argv = [bench_node_name(w) if i and argv[i - 1] in ("-n", "--hostname") else w
                    for i, w in enumerate(argv)]
            self.services[name] = Process(name, argv, env, run_dir / "logs" / f"{name}.log", cwd=self.checkout.root)

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


def run_checked(argv: list[str], env: Mapping[str, str], timeout: float, what: str, cwd: Path = ROOT,
                echo: bool = True) -> str:
    """Run a command to its end in `cwd`; its stdout. `echo`: log its last line (not for a secret)."""
    try:
        out = subprocess.run(argv, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish within {timeout:.0f} s") from None
    if out.returncode != 0:
        raise BenchError(f"{what} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    if echo:
        log(f"{what}: {(out.stdout or out.stderr).strip().splitlines()[-1:] or ['ok']}")
    return out.stdout


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


def prepare_own_namespace(target: Target, stack: Stack) -> None:
    """Wipe the bench's own database and key prefix (never one the user chose), then migrate
    with the stack's code."""
    if target.wipe_database:
        drop_database(target.database_url, BENCH_DATABASE)
    if target.wipe_redis:
        delete_namespace(target.key_prefix)
    run_checked([stack.checkout.python, "-m", "collector.migrate"], stack.base_env, 120, "migrate",
                cwd=stack.checkout.root)


def start_stack(args: argparse.Namespace, target: Target, stack: Stack, keys: bool = True) -> None:
    """Start the stack's processes and wait until each answers; with `keys`, make the fleet's
    key (device ids bench-*) and a reader key for Locust (target.locust_env)."""
    for port in (args.port, args.api1_port, args.api2_port):
        if port_in_use(port):
            raise BenchError(f"port {port} is in use: stop what listens there or choose "
                             "--port/--api1-port/--api2-port")
    if nginx_binary() is None:
        raise BenchError("nginx is not installed: sudo apt-get install -y nginx (or brew install nginx)")
    started = time.monotonic()
    for name in ("worker", "beat", "api1", "api2", "nginx"):
        stack.start(name)
    for port in (args.api1_port, args.api2_port):
        wait_for(lambda p=port: http_ok(f"http://127.0.0.1:{p}/health"), 60, f"the API on :{port}",
                 check=stack.check)
    wait_for(lambda: http_ok(f"{target.base_url}/health"), 30, f"nginx on :{args.port}", check=stack.check)
    wait_for(lambda: worker_answers(stack), 90, "the Celery worker's answer to `celery inspect ping`",
             interval=0.5, check=stack.check)
    if keys:
        target.locust_env.update(
            DEVICES_API_KEY=create_key(stack, "--prefix", FLEET_PREFIX, "--name", "bench fleet"),
            DEVICES_READER_KEY=create_key(stack, "--role", "reader", "--name", "bench reader"))
    code = "" if stack.checkout.root == ROOT else f" of {stack.checkout.revision} ({stack.checkout.root})"
    log(f"stack{code} ready in {time.monotonic() - started:.1f} s")


def create_key(stack: Stack, *options: str) -> str:
    """A key made with the stack's code's own CLI in its database and namespace; its secret."""
    what = f"python -m collector.keys create {' '.join(options)}"
    lines = run_checked([stack.checkout.python, "-m", "collector.keys", "create", *options], stack.base_env, 60,
                        what, cwd=stack.checkout.root, echo=False).strip().splitlines()
    if not lines:
        raise BenchError(f"{what} printed no key")
    return lines[-1].strip()  # the secret alone on the last line: the CLI's contract


def worker_answers(stack: Stack) -> bool:
    """True once the stack's Celery worker answers `celery inspect ping` by its node name (the
    Procfile's -n, made ours): it runs and hears its broker. Not a drain run, which the bench
    once waited for: with the stream empty the drain tick sends none (tasks/drain.py), and an
    older checkout's worker is asked the same way. The Procfile's flower line waits so too."""
    words = stack.services["worker"].argv
    node = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-n", "--hostname")), None)
    # The Procfile's own `celery -A <app>`, then the ping (to any worker of our namespace without a -n).
    argv = [*words[:words.index("worker")], "inspect", "ping", "--timeout=1",
            *(["-d", node.replace("%h", socket.gethostname())] if node else [])]
    return subprocess.run(argv, cwd=stack.checkout.root, env=stack.base_env, capture_output=True, timeout=30,
                          check=False).returncode == 0
