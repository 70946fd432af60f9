"""Prometheus metrics for the API and the workers.

Gunicorn and Celery both fork several processes, so prometheus_client runs in
multiprocess mode: each process writes its samples to files under
PROMETHEUS_MULTIPROC_DIR, and whoever serves /metrics adds them up. Gunicorn
(gunicorn.conf.py) and the Celery worker (worker_init, in tasks.celery_app) set
that directory up; without it (tests, a shell) the metrics live in the
process's own registry.

The metrics are created on first use, not at import: prometheus_client chooses
between in-memory and file-backed values when a metric is created, and the
Celery worker only switches to multiprocess mode in its worker_init signal,
after this module has been imported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)


def _define() -> dict[str, Any]:
    return {
        "LOGS_ACCEPTED": Counter("collector_logs_accepted_total", "Logs queued in the stream (answered 2xx)."),
        "REQUESTS_REJECTED": Counter("collector_requests_rejected_total", "Ingest requests refused, by reason.",
                                     ["reason"]),
        "LOGS_PERSISTED": Counter("collector_logs_persisted_total", "Logs newly stored in PostgreSQL by the drain."),
        "LOGS_DUPLICATE": Counter("collector_logs_duplicates_skipped_total",
                                  "Redelivered stream entries that were already stored."),
        "LOGS_DEAD_LETTERED": Counter("collector_logs_dead_lettered_total", "Stream entries moved to dead_letters."),
        "PARTITIONS_DROPPED": Counter("collector_partitions_dropped_total",
                                      "Partitions of logs dropped by retention."),
        "LOGS_EXPIRED": Counter("collector_logs_expired_total", "Stored logs removed by retention."),
        "DEAD_LETTERS_EXPIRED": Counter("collector_dead_letters_expired_total",
                                        "Dead letters deleted by DEAD_LETTER_RETENTION_DAYS."),
        "REQUEST_SECONDS": Histogram(
            "collector_http_request_duration_seconds", "API request latency, by endpoint and status.",
            ["endpoint", "method", "status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        ),
        "BATCH_SECONDS": Histogram(
            "collector_drain_batch_duration_seconds", "Time to read, store and acknowledge one drain batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        ),
        "BATCH_SIZE": Histogram("collector_drain_batch_entries", "Entries per drain batch.",
                                buckets=(0, 1, 10, 25, 50, 100, 250, 1000)),
    }


_NAMES = frozenset({"LOGS_ACCEPTED", "REQUESTS_REJECTED", "LOGS_PERSISTED", "LOGS_DUPLICATE",
                    "LOGS_DEAD_LETTERED", "PARTITIONS_DROPPED", "LOGS_EXPIRED", "DEAD_LETTERS_EXPIRED",
                    "REQUEST_SECONDS", "BATCH_SECONDS", "BATCH_SIZE"})
_metrics: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """`metrics.LOGS_ACCEPTED` and friends, created together on first use."""
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _metrics:
        _metrics.update(_define())
    return _metrics[name]


def render(extra: Iterable[object] = ()) -> tuple[bytes, str]:
    """The /metrics body: every process's samples, plus `extra` collectors (read at scrape time)."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Delegate(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Delegate:
    """This process's own default registry, for runs without multiprocess mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()
