"""Gunicorn settings for the API (every value can be overridden by GUNICORN_* style env below).

gevent workers: ingest is I/O-bound (one Redis round trip per request), so one
process serves hundreds of concurrent device connections.
"""

import os
import tempfile

# prometheus_client multiprocess mode: every worker writes its samples under this
# directory and /metrics adds them up. It must be set before any worker imports
# prometheus_client, and start empty, so each master gets a fresh one.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="collector-api-metrics-")

wsgi_app = "collector.web.app:create_app()"
bind = os.environ.get("BIND", f"127.0.0.1:{os.environ.get('PORT', '8001')}")
# Gunicorn's gevent worker, but the requests Gunicorn refuses itself get our JSON shape
# instead of its HTML page (collector/web/gunicorn_worker.py).
worker_class = "collector.web.gunicorn_worker.JsonErrorWorker"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# Longer than nginx's upstream keepalive_timeout so nginx, not us, closes idle connections.
keepalive = 75
timeout = 30
graceful_timeout = 20
backlog = 2048
# Request limits: nginx enforces every limit on the request line and headers (and
# answers JSON: docs/limits.md); these are strictly looser than anything nginx can
# forward, so a request that passed nginx is never refused for its size here.
# - The request line: 8190 is Gunicorn's ceiling. nginx's large_client_header_buffers
#   (8190 bytes, line end included) lets through lines of at most 8189 bytes, and
#   forwards the line unchanged or shorter (it refuses HTTP/0.9, the one form it
#   would lengthen by appending " HTTP/1.1").
# - One header line: nginx forwards at most 8189 bytes, plus the space it puts after
#   the colon when the client left it out; twice its buffer leaves a wide margin.
# - The header count: Gunicorn's ceiling. nginx holds at most 4 x 8190 bytes of
#   headers, so at most ~11,000 of the shortest lines ("a:"), fewer where it also
#   counts them (max_headers, 1000 by default).
# Hit directly (the API ports are never published), Gunicorn may buffer up to
# fields x field size bytes of headers before refusing them (docs/limits.md).
limit_request_line = 8190
limit_request_field_size = 16384
limit_request_fields = 32768
accesslog = os.environ.get("ACCESS_LOG") or None
# JSON lines, with nginx's request id so the two access logs can be joined.
access_log_format = ('{"remote": "%(h)s", "method": "%(m)s", "path": "%(U)s", "status": %(s)s, '
                     '"bytes": "%(B)s", "ms": %(M)s, "request_id": "%({x-request-id}i)s"}')
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
proc_name = f"collector-api-{os.environ.get('INSTANCE_NAME', 'api')}"
# Gunicorn >= 27 opens a control socket at a fixed path by default; two API
# instances on one host would fight over it, and we do not use it.
control_socket_disable = True


def child_exit(server, worker):
    # A dead worker's live gauges must not be summed into /metrics any more.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _own_metrics_dir:
        import shutil

        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
