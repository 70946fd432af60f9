"""The Celery app: Redis broker, explicit options, connections opened per process.

Run a worker with `celery -A tasks.celery_app worker` and, separately, exactly
one `celery -A tasks.celery_app beat`.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

# prometheus_client decides at import whether samples go to per-process files (so
# the worker's pool children are counted) or stay in memory. The celery command
# may have imported it already (Flower's CLI plugin does), so decide again after
# setting the directory; metrics created from here on use files.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="collector-worker-metrics-")
    _METRICS_DIR_OWNER = os.getpid()

    @atexit.register
    def _remove_metrics_dir() -> None:
        # Only the process that made it (beat and flower make one too; pool children inherit it).
        if os.getpid() == _METRICS_DIR_OWNER:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)

from prometheus_client import values as _prometheus_values  # noqa: E402

_prometheus_values.ValueClass = _prometheus_values.get_value_class()

from celery import Celery, signals  # noqa: E402

from collector.logging_setup import configure_logging  # noqa: E402
from collector.settings import load_settings  # noqa: E402
from tasks import resources  # noqa: E402

settings = load_settings()
log = logging.getLogger("tasks")

app = Celery("collector")
app.conf.update(
    broker_url=settings.celery_broker_url,
    # Several stacks (or test runs) can share one Redis: every kombu key gets the prefix.
    broker_transport_options={"global_keyprefix": settings.key_prefix} if settings.key_prefix else {},
    broker_connection_retry_on_startup=True,
    task_default_queue=settings.celery_queue,
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    result_backend=None,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,
    worker_send_task_events=True,  # Flower shows tasks as they run
    task_send_sent_event=True,
    timezone="UTC",
    beat_schedule_filename=settings.beat_schedule_file,
)

from tasks.drain import BEAT_SCHEDULE  # noqa: E402  (the schedule lives beside its task)

app.conf.beat_schedule = BEAT_SCHEDULE


@signals.setup_logging.connect
def _logging(**kwargs) -> None:
    configure_logging(settings)


@signals.worker_init.connect
def _serve_metrics(**kwargs) -> None:
    """The worker's /metrics (all pool processes added up), on WORKER_METRICS_PORT."""
    if settings.worker_metrics_port:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        try:
            start_http_server(settings.worker_metrics_port, addr="127.0.0.1", registry=registry)
        except OSError as exc:  # metrics are worth a warning, not a worker that will not start
            log.warning("worker metrics not served on port %s: %s", settings.worker_metrics_port, exc)


@signals.worker_process_init.connect
def _open_connections(**kwargs) -> None:
    # Each prefork child builds its own clients after the fork.
    resources.open_backends(settings)


@signals.worker_process_shutdown.connect
def _close_connections(pid=None, **kwargs) -> None:
    from prometheus_client import multiprocess

    resources.close_backends()
    multiprocess.mark_process_dead(pid or os.getpid())
