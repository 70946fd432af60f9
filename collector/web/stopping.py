"""Whether this API process is shutting down gracefully (Gunicorn's SIGTERM).

Set from the worker's exit handling (collector/web/gunicorn_worker.py), in a signal
handler: so only a flag, which the live tails read (collector.web.tail_poller checks
it at every tick and wakes them). Deliberately free of imports: Gunicorn's master
imports the worker class, and must not import the app with it.
"""

from __future__ import annotations

_requested = [False]


def request() -> None:
    _requested[0] = True


def requested() -> bool:
    return _requested[0]
