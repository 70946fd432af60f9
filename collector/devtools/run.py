"""`make run`: the whole stack in the foreground, on whatever servers there are.

Redis and PostgreSQL that answer at REDIS_URL / DATABASE_URL are used as they are;
where nothing answers at a loopback address, servers of our own start on those
ports with their data under var/ (collector.devtools.servers). Then migrations,
the demo keys, and the Procfile's processes under honcho; a banner says when the
front and Flower answer and where everything is. Ctrl-C stops the processes first
and our own servers last, so nothing is left running or listening, and `make run`
exits 0.

The order of the stop: the worker's main process alone gets a SIGTERM (its pid from
WORKER_PIDFILE, which the Procfile hands to Celery), and its warm shutdown finishes
the batch in hand and stops the pool itself; then honcho, which stops every process
once one has ended, sends the others a SIGTERM (a SIGINT makes it do so if it has not
within HONCHO_STOP_TIMEOUT). honcho signalled first would signal the worker's whole
process group, and Celery's pool children would die on their own SIGTERM mid-batch.

Who sees the Ctrl-C: honcho runs in a session of its own, and when standard input
is a terminal this process puts itself in a process group of its own and makes
that the terminal's foreground group until it exits. A Ctrl-C then reaches only
this process, not make: GNU make, given a SIGINT, kills itself with it once its
recipe has ended however the recipe ended ("Interrupt", status 130), so no trap
or `exec` in the recipe could make it exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from collector.core.settings import load_settings
from collector.devtools import demo_keys
from collector.devtools.processes import ROOT, nginx_binary, wait_until
from collector.devtools.servers import ServerError, ensure_servers, stop_servers, var_dir
from collector.store.migrations import migrate

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/logs"
# How long the banner waits for the front and Flower before saying they are not up
# (the processes keep running either way; their output says why).
READY_TIMEOUT = 120.0
# How long the worker's warm shutdown may take at Ctrl-C (a batch, at most its
# time limit) before honcho stops it and the rest anyway.
WORKER_STOP_TIMEOUT = 60.0
# honcho's own stop of the others: SIGTERM, then SIGKILL after its KILL_WAIT of 5 s.
HONCHO_STOP_TIMEOUT = 15.0


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def front_url(env: dict[str, str]) -> str:
    listen = env.get("LISTEN", "127.0.0.1:18723")
    scheme = "https" if env.get("TLS_CERT") else "http"
    return f"{scheme}://{listen if ':' in listen else '127.0.0.1:' + listen}"


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def flower_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}"


def banner(env: dict[str, str], own_servers: list, var: Path) -> str:
    front = front_url(env)
    keys = shown(var / "demo-keys.env")
    servers = ", ".join(f"{type(s).__name__.removesuffix('Server')} on :{s.port} (data in {shown(s.data_dir)})"
                        for s in own_servers) or "none: using the Redis and PostgreSQL that answered"
    return "\n".join([
        "",
        "  The stack is ready.",
        f"  front (nginx)   {front}/   <- start here: what runs and how to send a first log",
        f"  console         {front}/console (a reader key: COLLECTOR_READER_KEY below)",
        f"  API docs        {front}/docs",
        f"  health          {front}/health",
        f"  metrics         {front}/metrics (admin key or METRICS_TOKEN)",
        f"  Flower          {flower_url(env)}",
        f"  APIs            http://127.0.0.1:{env.get('API1_PORT', '8001')}, "
        f"http://127.0.0.1:{env.get('API2_PORT', '8002')} (both behind the front)",
        f"  demo keys       {keys} (for curl: export $(grep -v '^#' {keys} | xargs))",
        f"  own servers     {servers}",
        "  Ctrl-C stops everything (the drain first: the worker's warm shutdown), then our own servers.",
        "",
    ])


def answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own URLs
        return answer.status == 200


def wait_for_stack(env: dict[str, str], honcho: subprocess.Popen, stop: threading.Event) -> bool:
    """Whether the front and Flower answered (Flower starts once the worker answers)."""
    def check() -> None:
        if stop.is_set() or honcho.poll() is not None:
            raise SystemExit

    try:
        # /health, not /livez: ready means an API behind the front reaches Redis and PostgreSQL.
        for what, url in (("the front", f"{front_url(env)}/health"), ("Flower", f"{flower_url(env)}/healthcheck")):
            try:
                wait_until(lambda url=url: answers(url), READY_TIMEOUT, f"{what} to answer", interval=0.5,
                           check=check)
            except TimeoutError:
                say(f"{what} did not answer {url} within {READY_TIMEOUT:.0f} s; see the output above")
                return False
        return True
    except SystemExit:
        return False


def worker_pid(pidfile: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(pidfile.read_text().strip())
    return None


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):  # an exited process its parent has not reaped yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def stop_processes(honcho: subprocess.Popen, pidfile: Path) -> None:
    """The worker's main process first, alone (its warm shutdown stops its pool), then
    the rest through honcho."""
    pid = worker_pid(pidfile)
    if pid is not None and honcho.poll() is None and running(pid):
        say("stopping the worker (warm shutdown: it finishes the batch in hand)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not running(pid), WORKER_STOP_TIMEOUT, "the worker's warm shutdown", interval=0.2)
        # honcho stops the others by itself once it has seen a process end. A SIGINT sent
        # before it had seen the worker's end made it signal the worker's group too: give
        # it the time to see it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            honcho.wait(HONCHO_STOP_TIMEOUT)
    if honcho.poll() is None:
        honcho.send_signal(signal.SIGINT)


@contextlib.contextmanager
def terminal_to_ourselves():
    """While it runs, make this process alone the terminal's foreground group (see the
    module's doc), when standard input is a terminal and the foreground is ours."""
    try:
        fd = sys.stdin.fileno()
        ours = os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError):
        ours = False
    if not ours:
        yield
        return
    previous = os.getpgrp()

    def hand_terminal_to(group: int) -> None:
        # A background group changing the foreground gets a SIGTTOU unless it ignores it.
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            with contextlib.suppress(OSError):  # make gone, say: the shell takes the terminal back
                os.tcsetpgrp(fd, group)
        finally:
            signal.signal(signal.SIGTTOU, old)

    os.setpgid(0, 0)
    hand_terminal_to(os.getpgrp())
    # Ctrl-Z would stop this process alone while make waits for it: the terminal would hang.
    old_tstp = signal.signal(signal.SIGTSTP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, old_tstp)
        hand_terminal_to(previous)


def main() -> int:
    with terminal_to_ourselves():
        return run()


def run() -> int:
    env = dict(os.environ)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    env.setdefault("FLOWER_URL", flower_url(env))  # the landing page links Flower where it runs
    # Where our own servers keep their data and the demo keys live (a test moves it).
    var = var_dir()
    if nginx_binary() is None:
        say("nginx is not installed: run `make install`, which says how to install it")
        return 1
    stop = threading.Event()
    # Until honcho runs, a Ctrl-C (or a SIGTERM) stops the set-up, and our servers below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    own: list = []
    try:
        own = ensure_servers(env["REDIS_URL"], env["DATABASE_URL"], var, say=say)
        say("applying migrations")
        settings = load_settings(env)
        migrate(env["DATABASE_URL"], settings.partition_interval, settings.partitions_ahead)
        os.environ.update(REDIS_URL=env["REDIS_URL"], DATABASE_URL=env["DATABASE_URL"])
        demo_keys.main(["--file", str(var / "demo-keys.env")])
        pidfile = var / "worker.pid"
        env["WORKER_PIDFILE"] = str(pidfile)
        honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f", "Procfile"],
                                  cwd=ROOT, env=env, start_new_session=True)

        def interrupt(*_: object) -> None:
            if not stop.is_set():
                stop.set()
                say("stopping: the processes first, then our own servers")
            else:  # a second Ctrl-C: no more waiting for the worker
                honcho.send_signal(signal.SIGINT)

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        if wait_for_stack(env, honcho, stop) and not stop.is_set():
            print(banner(env, own, var), flush=True)
        while not stop.wait(0.5) and honcho.poll() is None:
            pass
        if stop.is_set():
            stop_processes(honcho, pidfile)
        honcho.wait()
        return 0 if stop.is_set() else honcho.returncode
    except ServerError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if own:
            say("stopping our own servers")
            stop_servers(own)


if __name__ == "__main__":
    sys.exit(main())
