"""JSON log lines for the API and the workers, one configuration for both.

Every record carries the instance name, and, when there is one, the request id
(nginx's X-Request-Id, so a line can be matched with nginx's access log) or the
Celery task id.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from collector.settings import Settings

_configured = False


class ContextFilter(logging.Filter):
    """Adds request_id / task_id to records logged inside a request or a task."""

    def filter(self, record: logging.LogRecord) -> bool:
        from flask import has_request_context, request

        if has_request_context():
            record.request_id = request.headers.get("X-Request-Id")
        else:
            from celery import current_task

            if current_task and current_task.request.id:
                record.task_id = current_task.request.id
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
