"""The collector's processes, started for real: Gunicorn APIs, a Celery worker and beat,
nginx, and throwaway Redis or PostgreSQL servers for tests that must stop one."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import psycopg
import requests

from collector.devtools.processes import ROOT, Process, free_port, wait_until
from collector.devtools.servers import PostgresServer, RedisServer
from collector.store.migrations import migrate

# The virtualenv's scripts (gunicorn, celery, locust), beside the running interpreter.
BIN = Path(sys.executable).parent


def wait_http_ok(url: str, timeout: float = 30) -> None:
    wait_until(lambda: requests.get(url, timeout=2).status_code == 200, timeout, f"{url} to answer 200")


class Stack:
    """One collector deployment; every process gets `env` plus its own variables."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        # Keys are off (AUTH_ENABLED): these stacks test the pipeline, not access control.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "BEAT_SCHEDULE_FILE": str(log_dir / "beat-schedule"),
                    "AUTH_ENABLED": "false", **env}
        self.log_dir = log_dir
        self.procs: dict[str, Process] = {}  # the latest process of each name
        self._all: list[Process] = []
        self.api_ports: list[int] = []
        self.front_port: int | None = None
        self._restarts = 0

    def _start(self, name: str, argv: list[str], **env: str) -> Process:
        if name in self.procs:
            self._restarts += 1
        proc = Process(f"{name}-{self._restarts}", argv, {**self.env, **env},
                       self.log_dir / f"{name}-{self._restarts}.log")
        self.procs[name] = proc
        self._all.append(proc)
        return proc.start()

    def start_api(self, index: int, port: int | None = None) -> str:
        port = port or free_port()
        if index >= len(self.api_ports):
            self.api_ports.append(port)
        self._start(f"api{index + 1}", [str(BIN / "gunicorn"), "-c", "gunicorn.conf.py"], PORT=str(port),
                    INSTANCE_NAME=f"api{index + 1}", WEB_CONCURRENCY="1")
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/health")
        return url

    def start_worker(self, concurrency: int = 2, name: str = "worker") -> None:
        # The node name is fixed, so a restarted worker has the same stream consumers
        # (and a second one, under another process `name`, collides with it on purpose).
        self.worker_metrics_port = free_port()
        self._start(name, [str(BIN / "celery"), "-A", "tasks.celery_app", "worker", "-n", "test@%h",
                               "--concurrency", str(concurrency), "--loglevel", "INFO"],
                    INSTANCE_NAME="test-worker", WORKER_METRICS_PORT=str(self.worker_metrics_port))

    def start_beat(self) -> None:
        self._start("beat", [str(BIN / "celery"), "-A", "tasks.celery_app", "beat", "--loglevel", "INFO"],
                    INSTANCE_NAME="test-beat")

    def start_nginx(self) -> str:
        self.front_port = self.front_port or free_port()
        self._start("nginx", [sys.executable, str(ROOT / "nginx" / "run_local.py")],
                    API1_ADDR=f"127.0.0.1:{self.api_ports[0]}", API2_ADDR=f"127.0.0.1:{self.api_ports[1]}",
                    LISTEN=f"127.0.0.1:{self.front_port}", NGINX_STATE_DIR=str(self.log_dir / "nginx"))
        url = f"http://127.0.0.1:{self.front_port}"
        wait_until(lambda: requests.get(f"{url}/health", timeout=2).status_code in (200, 503), 30, "nginx")
        return url

    def start_all(self, nginx: bool = True) -> str:
        urls = [self.start_api(0), self.start_api(1)]
        self.start_worker()
        self.start_beat()
        return self.start_nginx() if nginx else urls[0]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a process and all its children (kill -9 by default), and wait for them."""
        proc = self.procs[name]
        proc.signal(sig)
        proc.wait(60)

    def stop(self) -> None:
        for proc in reversed(self._all):
            proc.stop()

    def tail(self, name: str, chars: int = 3000) -> str:
        return self.procs[name].output()[-chars:]


class ThrowawayRedis(RedisServer):
    """A Redis of the test's own on a free port, with an append-only file fsynced on
    every write, so a clean stop and start keeps the stream, like the Redis we ship in
    docker-compose; `args` adds redis-server options (e.g. a small --maxmemory)."""

    def __init__(self, log_dir: Path, *args: str) -> None:
        super().__init__(free_port(), log_dir / "redis-data", *args, fsync="always")


class ThrowawayPostgres(PostgresServer):
    """A PostgreSQL cluster of the test's own (initdb in a temp dir), so a test can stop it
    without touching the shared one."""

    def __init__(self) -> None:
        # Not under pytest's tmp dirs: those are private to root, and the server runs as postgres.
        super().__init__(free_port(), Path(tempfile.mkdtemp(prefix="collector-test-pg-")))
        self.init()

    def start(self) -> ThrowawayPostgres:
        return super().start(options="-c fsync=off")

    def migrate(self) -> None:
        migrate(self.url)

    def count(self, sql: str = "SELECT count(*) FROM logs") -> int:
        with psycopg.connect(self.url, connect_timeout=3) as conn:
            return conn.execute(sql).fetchone()[0]
