"""The Celery app: Redis broker, explicit options, connections opened per process.

Run a worker with `celery -A tasks.celery_app worker` and, separately, exactly
one `celery -A tasks.celery_app beat`. `make_celery(settings)` builds an app
from any settings (the tests build their own); importing this module only reads
the environment. Everything with an effect outside the app (the metrics
directory, the metrics server, connections) happens in the worker's signals.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from celery import Celery, current_app, signals

from collector.core.logging_setup import configure_logging, log_context
from collector.core.settings import Settings, load_settings
from tasks import resources
from tasks.drain import beat_schedule

log = logging.getLogger("tasks")


def make_celery(settings: Settings) -> Celery:
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
        task_send_sent_event=False,  # beat's drain ticks would show in Flower as PENDING forever (tasks/drain.py)
        timezone="UTC",
        beat_schedule_filename=settings.beat_schedule_file,
        beat_schedule=beat_schedule(settings),
        include=["tasks.drain", "tasks.storage"],
    )
    app.collector_settings = settings  # what the tasks read their settings from
    _connect_signals()
    return app


def _connect_signals() -> None:
    # Celery's signals are global; dispatch_uid makes connecting again (a second app) a no-op.
    for signal, receiver in (
        (signals.setup_logging, _setup_logging),
        (signals.worker_init, _worker_init),
        (signals.worker_process_init, _open_connections),
        (signals.worker_process_shutdown, _close_connections),
        (signals.task_prerun, _bind_task_id),
        (signals.task_postrun, _unbind_task_id),
    ):
        signal.connect(receiver, weak=False, dispatch_uid=f"collector.{receiver.__name__}")


def _current_settings() -> Settings:
    """The settings of the app this process runs (the worker's, in its signals)."""
    return getattr(current_app, "collector_settings", None) or load_settings()


def _setup_logging(**kwargs) -> None:
    configure_logging(_current_settings())


def _worker_init(**kwargs) -> None:
    settings = _current_settings()
    _use_multiprocess_metrics()
    if settings.worker_metrics_port:
        _serve_metrics(settings.worker_metrics_port, settings.worker_metrics_addr, settings.instance_name)


def _use_multiprocess_metrics() -> None:
    """Pool processes write their samples to files that the worker's /metrics adds up.

    prometheus_client decides at import whether values go to files or stay in memory,
    and the celery command may have imported it already (Flower's CLI plugin does), so
    decide again once the directory is set; collector.core.metrics creates its metrics
    on first use, after this.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    path = tempfile.mkdtemp(prefix="collector-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    owner = os.getpid()

    from prometheus_client import values

    values.ValueClass = values.get_value_class()

    @signals.worker_shutdown.connect(weak=False)
    def _remove_metrics_dir(**kwargs) -> None:
        if os.getpid() == owner:  # pool children inherit the directory; only its maker removes it
            shutil.rmtree(path, ignore_errors=True)


def _serve_metrics(port: int, worker_metrics_addr: str, instance: str) -> None:
    """The worker's /metrics (all pool processes added up: the drain's and retention's
    metrics only, each sample labelled collector_instance=INSTANCE_NAME), on
    WORKER_METRICS_ADDR (127.0.0.1 unless a container needs it reachable)."""
    from prometheus_client import start_http_server

    from collector.core import metrics

    try:
        start_http_server(port, addr=worker_metrics_addr, registry=metrics.registry(metrics.WORKER, instance))
    except OSError as exc:  # metrics are worth a warning, not a worker that will not start
        log.warning("worker metrics not served on port %s: %s", port, exc)


def _open_connections(**kwargs) -> None:
    # Each prefork child builds its own clients after the fork.
    resources.open_backends(_current_settings())


def _close_connections(pid=None, **kwargs) -> None:
    from prometheus_client import multiprocess

    resources.close_backends()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid or os.getpid())


def _bind_task_id(task_id=None, **kwargs) -> None:
    log_context.set({"task_id": task_id} if task_id else None)


def _unbind_task_id(**kwargs) -> None:
    log_context.set(None)


app = make_celery(load_settings())
