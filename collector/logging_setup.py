"""JSON log lines for the API and the workers, one configuration for both."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from collector.settings import Settings

_configured = False


def configure_logging(settings: Settings) -> None:
    """Send the service's own records to stderr as JSON lines, tagged with the instance."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler(sys.stderr)
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
