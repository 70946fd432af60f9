"""Gunicorn's gevent worker, answering the requests Gunicorn itself refuses in our JSON shape.

Gunicorn refuses some requests before the Flask app sees them (a method of 2 or 21
letters, a byte outside printable ASCII in the URI, a control character in a header
value, two Content-Type headers, conflicting X-Forwarded-* scheme headers, a header
over its limits...) and writes an HTML page for them. nginx passes those answers on
unchanged (the API's own errors must reach devices as they are), so without this
class a device behind nginx could get HTML. gunicorn.conf.py names it as worker_class.

The base class still decides everything (the status, the warning it logs, the access
log line): its HTML answer is written to a stand-in socket, only its status line is
kept, and the client gets {"error": "<code>", "message": "<text>"} with that status.
tests/test_front_door.py checks it against a real Gunicorn, directly and behind nginx.

It also tells the live tails when a graceful shutdown starts (collector.web.stopping).
"""

from __future__ import annotations

import json
import re

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from collector.web import stopping

# Codes for the statuses Gunicorn answers itself, named as nginx's answers for the same
# condition are (nginx/collector.conf.template); others become the reason in snake case.
CODES = {400: "bad_request", 403: "forbidden", 414: "uri_too_long", 417: "expectation_failed",
         431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}
MAX_DETAIL = 300  # Gunicorn's detail may quote the whole request line (8 KiB)


class _Captured:
    """Stands in for the client socket while the base class writes its HTML answer."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # non-blocking already: util.write_nonblock writes straight to sendall

    def sendall(self, data: bytes) -> None:
        self.data += data


def json_answer(status: int, reason: str, detail: str) -> bytes:
    """The whole HTTP answer, closing the connection as Gunicorn's own error answers do."""
    if status >= 500:
        message = "An unexpected error occurred; it has been logged."  # never the exception's text
    else:
        message = f"{reason}: {detail}"[:MAX_DETAIL] if detail else reason
    code = CODES.get(status) or re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"
    body = (json.dumps({"error": code, "message": message}) + "\n").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrorWorker(GeventWorker):
    def handle_exit(self, sig, frame):
        # Graceful shutdown (SIGTERM): live tails end their streams now, so their clients
        # reconnect elsewhere with Last-Event-ID instead of being cut at graceful_timeout.
        stopping.request()
        super().handle_exit(sig, frame)

    def handle_error(self, req, client, addr, exc):
        captured = _Captured()
        super().handle_error(req, captured, addr, exc)
        # "HTTP/1.1 431 Request Header Fields Too Large\r\n..." (gunicorn.util.write_error)
        match = re.match(rb"HTTP/1\.1 (\d{3}) ([^\r\n]*)\r\n", captured.data)
        status, reason = (int(match[1]), match[2].decode("latin-1")) if match else (500, "Internal Server Error")
        try:
            util.write_nonblock(client, json_answer(status, reason, str(exc)))
        except Exception:
            self.log.debug("Failed to send error message.")
