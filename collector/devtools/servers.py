"""Redis and PostgreSQL servers of our own, for when none answer: the one module that
starts and stops them, shared by `make run`, the test suite and the bench.

`ensure_servers()` looks at REDIS_URL and DATABASE_URL: a server that answers is
used as it is; one at a loopback address where nothing listens is started on
exactly that port, with its data under `var/` (kept between runs: Redis with an
append-only file, PostgreSQL's own data directory); anything else is the user's to
start, and is said so in one line. PostgreSQL's initdb refuses to run as root, so
as root every PostgreSQL command runs as the `postgres` user (as Debian's own
scripts do), which must then be able to reach the data directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from collector.devtools.processes import ROOT, Process, redis_server_binary, wait_until

VAR = ROOT / "var"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A bound on a broken setup (a server that will never answer), not a measure of speed.
START_TIMEOUT = 60.0


class ServerError(RuntimeError):
    """A server we need cannot be used or started; the message says what to do."""


def _address(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def answering(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_with_progress(predicate: Callable[[], object], what: str, say: Callable[[str], None],
                       timeout: float = START_TIMEOUT) -> None:
    """wait_until, telling the user every few seconds that we are still waiting."""
    started = time.monotonic()
    next_note = started + 3

    def ready() -> object:
        nonlocal next_note
        if time.monotonic() >= next_note:
            say(f"  still waiting for {what} ({time.monotonic() - started:.0f} s)")
            next_note += 3
        return predicate()

    wait_until(ready, timeout, what, interval=0.2)


class RedisServer:
    """redis-server on 127.0.0.1:`port`, data (the AOF) in `data_dir`, noeviction like
    the Redis docker-compose ships; `args` adds options (e.g. a small --maxmemory)."""

    def __init__(self, port: int, data_dir: Path, *args: str, fsync: str = "everysec") -> None:
        self.port, self.data_dir, self.args, self.fsync = port, Path(data_dir), args, fsync
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: Process | None = None

    def start(self, say: Callable[[str], None] = lambda _: None) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = Process(f"redis-{self.port}", [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", self.fsync, "--maxmemory-policy", "noeviction",
            *self.args,
        ], os.environ.copy(), self.data_dir / "redis.log").start()

        def ping() -> bool:
            if not self.proc.alive():
                raise ServerError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            return answering("127.0.0.1", self.port)

        wait_with_progress(ping, f"Redis on 127.0.0.1:{self.port}", say)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()  # SIGTERM: Redis flushes its AOF and exits cleanly
            self.proc = None


def postgres_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and pg_isready: Debian keeps them off PATH,
    one directory per version (the newest wins), and its /usr/bin wrappers lack initdb."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))[::-1]
    candidates += glob.glob("/usr/local/opt/postgresql*/bin") + glob.glob("/opt/homebrew/opt/postgresql*/bin")
    if found := shutil.which("initdb"):
        candidates.insert(0, str(Path(found).parent))
    for directory in map(Path, candidates):
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "pg_isready")):
            return directory
    return None


class PostgresServer:
    """A PostgreSQL cluster of our own in `data_dir` on 127.0.0.1:`port`, trust auth for
    local connections (it listens on loopback only), its socket in the data directory."""

    def __init__(self, port: int, data_dir: Path, user: str = "postgres", database: str = "logs") -> None:
        self.port, self.data_dir, self.user = port, Path(data_dir), user
        self.url = f"postgresql://{user}@127.0.0.1:{port}/{database}"
        self.bin = postgres_bin()
        if self.bin is None:
            raise ServerError("PostgreSQL's initdb/pg_ctl not found: run `make install` to see how to install them")
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.running = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self._as_postgres, *argv], capture_output=True, text=True)

    def init(self) -> bool:
        """initdb unless the data directory holds a cluster already; True if it was created."""
        if (self.data_dir / "PG_VERSION").exists():
            return False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.data_dir, account.pw_uid, account.pw_gid)
        done = self._run(str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                         "-E", "UTF8", "--no-sync")
        if done.returncode:
            raise ServerError(f"initdb failed in {self.data_dir}: {done.stderr.strip().splitlines()[-1:]}"
                              + (" (the postgres user must be able to reach that directory)"
                                 if self._as_postgres else ""))
        return True

    def start(self, say: Callable[[str], None] = lambda _: None, options: str = "") -> PostgresServer:
        self.init()
        done = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
                         "-o", f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 {options}", "start")
        if done.returncode:
            raise ServerError(f"PostgreSQL did not start; see {self.data_dir / 'server.log'}")
        self.running = True
        wait_with_progress(lambda: answering("127.0.0.1", self.port) and self._accepting(),
                           f"PostgreSQL on 127.0.0.1:{self.port}", say)
        return self

    def _accepting(self) -> bool:
        return self._run(str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-w", "-m", mode, "stop")
        self.running = False

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)


Server = RedisServer | PostgresServer


def var_dir() -> Path:
    """Where our own servers keep their data: VAR_DIR, else the checkout's var/."""
    return Path(os.environ.get("VAR_DIR") or VAR).resolve()


def ensure_servers(redis_url: str, database_url: str, var: Path | None = None,
                   say: Callable[[str], None] = print) -> list[Server]:
    """Start a Redis and a PostgreSQL of our own where nothing answers at a loopback
    REDIS_URL / DATABASE_URL; returns what was started (the caller stops it)."""
    var = var or var_dir()
    started: list[Server] = []
    try:
        host, port = _address(redis_url, 6379)
        if not answering(host, port):
            _startable(redis_url, host, "Redis", "REDIS_URL")
            say(f"nothing answers at {host}:{port}: starting a Redis of our own (data in {var / 'redis'})")
            started.append(RedisServer(port, var / "redis").start(say))
        host, port = _address(database_url, 5432)
        if not answering(host, port):
            _startable(database_url, host, "PostgreSQL", "DATABASE_URL")
            say(f"nothing answers at {host}:{port}: starting a PostgreSQL of our own (data in {var / 'postgres'})")
            user = urlsplit(database_url).username or "postgres"
            started.append(PostgresServer(port, var / "postgres", user=user).start(say))
    except BaseException:
        stop_servers(started)
        raise
    return started


def _startable(url: str, host: str, what: str, variable: str) -> None:
    if host not in LOOPBACK or url.startswith("unix"):
        raise ServerError(f"nothing answers at {variable}={url}: start that {what} server, or unset "
                          f"{variable} to let `make run` start one of its own")


def stop_servers(servers: list[Server]) -> None:
    for server in reversed(servers):
        server.stop()
