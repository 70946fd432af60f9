"""Stream figures as Prometheus gauges, read from Redis at scrape time.

The API's /metrics serves them (collector.web.admin, through collector.core.metrics.render,
which adds the collector_instance label); the worker's does not. Every API instance reads
the same Redis, so queries take their max across instances, never their sum."""

from __future__ import annotations

import redis
from prometheus_client.core import GaugeMetricFamily

from collector.core.settings import Settings
from collector.pipeline.group import backlog_of
from collector.pipeline.shards import pipeline_stats


class StreamCollector:
    """Stream length, pending and lag over every stream shard (and, sharded, each shard's
    backlog: one shard falling behind shows even while the totals look fine)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client, self.settings = client, settings

    def collect(self):
        try:
            figures = pipeline_stats(self.client, self.settings)
        except redis.RedisError:
            return
        if "shards" in figures:
            family = GaugeMetricFamily("collector_shard_backlog", "Entries of one stream shard not yet stored.",
                                       labels=["shard"])
            for index, shard in enumerate(figures["shards"]):
                family.add_metric([str(index)], backlog_of(shard))
            yield family
        for name, key, doc in (
            ("collector_stream_length", "stream_length", "Entries in the Redis Stream (stored or not)."),
            ("collector_stream_pending", "pending", "Entries delivered to a drain but not yet acknowledged."),
            ("collector_stream_lag", "lag", "Entries not yet delivered to any drain."),
        ):
            if figures.get(key) is not None:
                yield GaugeMetricFamily(name, doc, value=figures[key])
        yield GaugeMetricFamily(
            "collector_oldest_unstored_age_seconds",
            "Age of the oldest accepted log not yet stored (0 when none waits); grows when the drain stalls.",
            value=figures.get("oldest_unstored_age_seconds") or 0.0)
