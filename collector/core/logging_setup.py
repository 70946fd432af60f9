"""JSON log lines for the API and the workers, one configuration for both.

Every record carries the instance name and, when there is one, the request id
(nginx's X-Request-Id, so a line can be matched with nginx's access log) or the
Celery task id. The web layer and the task layer set those in `log_context`;
contextvars are per greenlet under gevent, so concurrent requests keep theirs
apart, and this module needs to know neither Flask nor Celery.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from collector.core.settings import Settings

# {"request_id": ...} or {"task_id": ...} for the request or task being handled.
log_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("log_context", default=None)

_configured = False


class ContextFilter(logging.Filter):
    """Adds the current request_id / task_id to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context.get()
        if context:
            for key, value in context.items():
                setattr(record, key, value)
        return True


def configure_logging(settings: Settings) -> None:
    """Send the service's own records to stderr as JSON lines, tagged with the instance."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "asctime": "time"},
        static_fields={"instance": settings.instance_name},
    ))
    for name in ("collector", "tasks"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(settings.log_level.upper())
        logger.propagate = False
    _configured = True
