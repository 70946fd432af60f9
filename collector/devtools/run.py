"""`make run`: the whole stack in the foreground, on whatever servers there are.

Redis and PostgreSQL that answer at REDIS_URL / DATABASE_URL are used as they are;
where nothing answers at a loopback address, servers of our own start on those
ports with their data under var/ (collector.devtools.servers). Then migrations,
the demo keys, and the Procfile's processes under honcho; a banner says when the
front answers and where everything is. Ctrl-C stops the processes first (honcho
sends each a SIGTERM: the worker's warm shutdown finishes its batch) and our own
servers last, so nothing is left running or listening.

honcho runs in a session of its own, so a Ctrl-C in the terminal reaches only
this process, which hands honcho a single SIGINT; a terminal's SIGINT to the whole
foreground group would also hit Celery's pool children directly, cutting their
batch short instead of the warm shutdown.
"""

from __future__ import annotations

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
# How long the banner waits for the front before saying it is not up (the processes
# keep running either way; their output says why).
READY_TIMEOUT = 120.0


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def front_url(env: dict[str, str]) -> str:
    listen = env.get("LISTEN", "127.0.0.1:18723")
    scheme = "https" if env.get("TLS_CERT") else "http"
    return f"{scheme}://{listen if ':' in listen else '127.0.0.1:' + listen}"


def shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def banner(env: dict[str, str], own_servers: list, var: Path) -> str:
    front = front_url(env)
    servers = ", ".join(f"{type(s).__name__.removesuffix('Server')} on :{s.port} (data in {shown(s.data_dir)})"
                        for s in own_servers) or "none: using the Redis and PostgreSQL that answered"
    return "\n".join([
        "",
        "  The stack is ready.",
        f"  front (nginx)   {front}",
        f"  API docs        {front}/docs",
        f"  health          {front}/health",
        f"  metrics         {front}/metrics (admin key or METRICS_TOKEN)",
        f"  APIs            http://127.0.0.1:{env.get('API1_PORT', '8001')}, "
        f"http://127.0.0.1:{env.get('API2_PORT', '8002')}",
        f"  Flower          http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}",
        f"  demo keys       {shown(var / 'demo-keys.env')}",
        f"  own servers     {servers}",
        "  Ctrl-C stops everything (the drain first).",
        "",
    ])


def wait_for_front(env: dict[str, str], honcho: subprocess.Popen) -> bool:
    def up() -> bool:
        if honcho.poll() is not None:
            raise SystemExit(honcho.returncode)
        with urllib.request.urlopen(f"{front_url(env)}/livez", timeout=2) as answer:  # noqa: S310 - our own URL
            return answer.status == 200

    try:
        wait_until(up, READY_TIMEOUT, "the front to answer", interval=0.5)
        return True
    except SystemExit:
        return False
    except TimeoutError:
        say(f"the front did not answer {front_url(env)}/livez within {READY_TIMEOUT:.0f} s; see the output above")
        return False


def main() -> int:
    env = dict(os.environ)
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
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
        honcho = subprocess.Popen([str(Path(sys.executable).parent / "honcho"), "start", "-f", "Procfile"],
                                  cwd=ROOT, env=env, start_new_session=True)

        def interrupt(*_: object) -> None:
            if not stop.is_set():
                stop.set()
                say("stopping: the processes first, then our own servers")
                honcho.send_signal(signal.SIGINT)

        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        if wait_for_front(env, honcho) and not stop.is_set():
            print(banner(env, own, var), flush=True)
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
