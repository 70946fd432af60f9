"""The Celery app: Redis broker, explicit options, connections opened per process.

Run a worker with `celery -A tasks.celery_app worker` and, separately, exactly
one `celery -A tasks.celery_app beat`.
"""

from __future__ import annotations

from celery import Celery, signals

from collector.logging_setup import configure_logging
from collector.settings import load_settings
from tasks import resources

settings = load_settings()

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


@signals.worker_process_init.connect
def _open_connections(**kwargs) -> None:
    # Each prefork child builds its own clients after the fork.
    resources.open_backends(settings)


@signals.worker_process_shutdown.connect
def _close_connections(**kwargs) -> None:
    resources.close_backends()
