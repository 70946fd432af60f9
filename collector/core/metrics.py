"""Prometheus metrics for the API and the workers.

Gunicorn and Celery both fork several processes, so prometheus_client runs in
multiprocess mode: each process writes its samples to files under
PROMETHEUS_MULTIPROC_DIR, and whoever serves /metrics adds them up. Gunicorn
(gunicorn.conf.py) and the Celery worker (worker_init, in tasks.celery_app) set
that directory up; without it (tests, a shell) the metrics live in the
process's own registry.

Each metric belongs to one role: the API's (ingest, request latency, rejections)
or the worker's (the drain and retention). A role's metrics are created together
on first use of any of them, never the other role's, and a /metrics body carries
only its own role's families: the API exports no drain series stuck at 0, the
worker no ingest series. Every sample it carries gets the label
`collector_instance` (INSTANCE_NAME), added here at render time, so two API
instances behind one nginx, or several worker replicas, are told apart whoever
scrapes them. (Not `instance`: Prometheus overwrites that with the target's
address.) A label added at render time works the same in multiprocess mode,
where prometheus_client has no constant labels, and in a plain registry.

The metrics are created on first use, not at import: prometheus_client chooses
between in-memory and file-backed values when a metric is created, and the
Celery worker only switches to multiprocess mode in its worker_init signal,
after this module has been imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
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
from prometheus_client.metrics_core import Metric

API = "api"
WORKER = "worker"
INSTANCE_LABEL = "collector_instance"


def _api() -> dict[str, Any]:
    return {
        "LOGS_ACCEPTED": Counter("collector_logs_accepted_total", "Logs queued in the stream (answered 2xx)."),
        "REQUESTS_REJECTED": Counter("collector_requests_rejected_total", "Ingest requests refused, by reason.",
                                     ["reason"]),
        "REQUEST_SECONDS": Histogram(
            "collector_http_request_duration_seconds", "API request latency, by endpoint and status.",
            ["endpoint", "method", "status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        ),
    }


def _worker() -> dict[str, Any]:
    return {
        "LOGS_PERSISTED": Counter("collector_logs_persisted_total", "Logs newly stored in PostgreSQL by the drain."),
        "LOGS_DUPLICATE": Counter("collector_logs_duplicates_skipped_total",
                                  "Redelivered stream entries that were already stored."),
        "LOGS_DEAD_LETTERED": Counter("collector_logs_dead_lettered_total", "Stream entries moved to dead_letters."),
        "BATCH_SECONDS": Histogram(
            "collector_drain_batch_duration_seconds", "Time to read, store and acknowledge one drain batch.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        ),
        "BATCH_SIZE": Histogram("collector_drain_batch_entries", "Entries per drain batch.",
                                buckets=(0, 1, 10, 25, 50, 100, 250, 1000)),
        # Retention runs as a worker task (tasks.storage).
        "PARTITIONS_DROPPED": Counter("collector_partitions_dropped_total",
                                      "Partitions of logs dropped by retention."),
        "LOGS_EXPIRED": Counter("collector_logs_expired_total", "Stored logs removed by retention."),
        "DEAD_LETTERS_EXPIRED": Counter("collector_dead_letters_expired_total",
                                        "Dead letters deleted by DEAD_LETTER_RETENTION_DAYS."),
    }


_DEFINE: dict[str, Callable[[], dict[str, Any]]] = {API: _api, WORKER: _worker}
# Which role each attribute belongs to, and the family names (a counter's without `_total`,
# as prometheus_client names them) each role's /metrics carries.
ROLE_OF = {
    **dict.fromkeys(("LOGS_ACCEPTED", "REQUESTS_REJECTED", "REQUEST_SECONDS"), API),
    **dict.fromkeys(("LOGS_PERSISTED", "LOGS_DUPLICATE", "LOGS_DEAD_LETTERED", "BATCH_SECONDS", "BATCH_SIZE",
                     "PARTITIONS_DROPPED", "LOGS_EXPIRED", "DEAD_LETTERS_EXPIRED"), WORKER),
}
FAMILIES = {
    API: frozenset({"collector_logs_accepted", "collector_requests_rejected",
                    "collector_http_request_duration_seconds"}),
    WORKER: frozenset({"collector_logs_persisted", "collector_logs_duplicates_skipped",
                       "collector_logs_dead_lettered", "collector_drain_batch_duration_seconds",
                       "collector_drain_batch_entries", "collector_partitions_dropped", "collector_logs_expired",
                       "collector_dead_letters_expired"}),
}
_metrics: dict[str, dict[str, Any]] = {}


def define(role: str) -> dict[str, Any]:
    """Create `role`'s metrics (once per process; every later call returns the same)."""
    if role not in _metrics:
        _metrics[role] = _DEFINE[role]()
    return _metrics[role]


def __getattr__(name: str) -> Any:
    """`metrics.LOGS_ACCEPTED` and friends, created with the rest of their role on first use."""
    if name not in ROLE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return define(ROLE_OF[name])[name]


def registry(role: str, instance: str, extra: Iterable[object] = ()) -> CollectorRegistry:
    """What `role`'s /metrics serves: its own families from every process (the multiprocess
    files, or this process's registry without them) plus `extra` collectors (read at scrape
    time), every sample labelled collector_instance=`instance`. Creates the role's metrics
    here, so their counters read 0 from the first scrape instead of being absent."""
    define(role)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        source: Any = multiprocess.MultiProcessCollector(None)  # not registered: read through _Labelled
    else:
        source = REGISTRY
    result = CollectorRegistry()
    result.register(_Labelled(source, instance, FAMILIES[role]))
    for collector in extra:
        result.register(_Labelled(collector, instance))
    return result


def render(role: str, instance: str, extra: Iterable[object] = ()) -> tuple[bytes, str]:
    """The /metrics body of `role` (see registry) and its content type."""
    return generate_latest(registry(role, instance, extra)), CONTENT_TYPE_LATEST


class _Labelled:
    """The families of `source` (only those named in `families`, when given), each sample
    with collector_instance=`instance` added."""

    def __init__(self, source: Any, instance: str, families: frozenset[str] | None = None) -> None:
        self.source, self.instance, self.families = source, instance, families

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if self.families is not None and family.name not in self.families:
                continue
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [sample._replace(labels={**sample.labels, INSTANCE_LABEL: self.instance})
                                for sample in family.samples]
            yield labelled
