"""Starting, watching and stopping local processes: the one supervisor the bench, the
tests and the local nginx launcher share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

# The checkout this package was installed from (`pip install -e .`): the Procfile,
# gunicorn.conf.py, nginx/ and migrations/ live there.
ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class WaitTimeout(TimeoutError):
    """What we waited for did not happen in time; the message says what it was."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1,
               check: Callable[[], None] | None = None) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Exceptions from `predicate` count as "not yet" (a server still starting refuses
    connections); the last one is named if time runs out. `check` runs before each
    try and may raise to give up early (a process we depend on has died). The
    timeout is a bound on a broken setup, never a measure of speed.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if check is not None:
            check()
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # not up yet
            last_error = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{suffix}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def nginx_binary() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a normal user's PATH)."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def redis_server_binary() -> str:
    return shutil.which("redis-server") or "/usr/bin/redis-server"


class Process:
    """A child process in a session (process group) of its own, its output in a log file.

    A new session lets one signal reach whatever the process forked (Gunicorn's and
    Celery's workers), and keeps a Ctrl-C in the terminal from reaching it directly.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path = ROOT) -> None:
        self.name, self.argv, self.env, self.log_path, self.cwd = name, argv, env, log_path, cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> Process:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.popen = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode if self.popen else None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        """Send `sig` to the whole process group (kill -9 of a worker and its pool, say)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM to the leader (Gunicorn, Celery, nginx and Redis then shut their own
        children down gracefully), SIGKILL to the whole group after `timeout` and for
        anything left over; returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # orphaned children, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        return self.popen.returncode
