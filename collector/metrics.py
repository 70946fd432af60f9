"""Prometheus metrics for the API and the workers.

Gunicorn and Celery both fork several processes, so prometheus_client runs in
multiprocess mode: each process writes its samples to files under
PROMETHEUS_MULTIPROC_DIR, and whoever serves /metrics adds them up. Gunicorn
(gunicorn.conf.py) and the Celery worker (tasks.celery_app) set that directory
up before this module is imported; without it (tests, a shell) the metrics
live in the process's own registry.
"""

from __future__ import annotations

import os

import redis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from collector import stream
from collector.settings import Settings

LOGS_ACCEPTED = Counter("collector_logs_accepted_total", "Logs queued in the stream (answered 2xx).")
REQUESTS_REJECTED = Counter("collector_requests_rejected_total", "Ingest requests refused, by reason.",
                            ["reason"])
LOGS_PERSISTED = Counter("collector_logs_persisted_total", "Logs newly stored in PostgreSQL by the drain.")
LOGS_DUPLICATE = Counter("collector_logs_duplicates_skipped_total",
                         "Redelivered stream entries that were already stored.")
LOGS_DEAD_LETTERED = Counter("collector_logs_dead_lettered_total", "Stream entries moved to dead_letters.")
REQUEST_SECONDS = Histogram(
    "collector_http_request_duration_seconds", "API request latency, by endpoint and status.",
    ["endpoint", "method", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SECONDS = Histogram(
    "collector_drain_batch_duration_seconds", "Time to read, store and acknowledge one drain batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
BATCH_SIZE = Histogram("collector_drain_batch_entries", "Entries per drain batch.",
                       buckets=(0, 1, 10, 25, 50, 100, 250, 1000))


class StreamCollector:
    """Stream length, pending and lag, read from Redis at scrape time."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.settings = client, settings

    def collect(self):
        try:
            figures = stream.pipeline_stats(self.client, self.settings.stream, self.settings.consumer_group)
        except redis.RedisError:
            return
        for name, key, doc in (
            ("collector_stream_length", "stream_length", "Entries in the Redis Stream (stored or not)."),
            ("collector_stream_pending", "pending", "Entries delivered to a drain but not yet acknowledged."),
            ("collector_stream_lag", "lag", "Entries not yet delivered to any drain."),
        ):
            if figures.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=figures[key])


def render(client: redis.Redis | None = None, settings: Settings | None = None) -> tuple[bytes, str]:
    """The /metrics body: every process's samples, plus the stream gauges."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Delegate(REGISTRY))
    if client is not None and settings is not None:
        registry.register(StreamCollector(client, settings))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Delegate:
    """This process's own default registry, for runs without multiprocess mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()
