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
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# Longer than nginx's upstream keepalive_timeout so nginx, not us, closes idle connections.
keepalive = 75
timeout = 30
graceful_timeout = 20
backlog = 2048
# As long as nginx's large_client_header_buffers (8 KiB), so an over-long URL gets
# our JSON 404/422 rather than Gunicorn's HTML 400.
limit_request_line = 8190
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
