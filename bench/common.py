"""What every part of the bench shares: progress output, the error that ends a run,
SIGTERM as an exit, one JSON-over-HTTP GET, and the results' JSON layout."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from collector.devtools.processes import ROOT

LOCUSTFILE = ROOT / "locustfiles" / "devices.py"
PROCFILE = ROOT / "Procfile"


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


def log(message: str) -> None:
    """Progress goes to stderr, so stdout carries only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so the `finally` blocks stop what we started."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def http_get(url: str, timeout: float = 3.0, headers: dict[str, str] | None = None
             ) -> tuple[int, dict | None] | None:
    """(status, JSON body or None), or None if nothing answered."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def http_ok(url: str) -> bool:
    return (http_get(url) or (0,))[0] == 200


# A list of numbers (one sample) printed on one line.
_NUMBER_LIST = re.compile(r"\[\s+((?:-?[\d.eE+-]+|null)(?:,\s+(?:-?[\d.eE+-]+|null))*)\s+\]")


def dumps(data: dict) -> str:
    """Indented JSON whose samples ([t, rows, backlog, ...]) take one line each."""
    text = json.dumps(data, indent=2)
    return _NUMBER_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text) + "\n"
