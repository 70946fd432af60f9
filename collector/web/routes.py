"""The API's URL map in one place; the views live in modules by audience."""

from __future__ import annotations

from flask import Blueprint

from collector.web import admin, health, ingest, query

# One blueprint, so endpoint names (and the `endpoint` label of the latency
# metric) stay `api.<view>` whichever module a view lives in.
api = Blueprint("api", __name__)

for rule, view, methods in (
    ("/api/log", ingest.ingest_log, ["POST"]),
    ("/api/logs/batch", ingest.ingest_batch, ["POST"]),
    ("/api/logs/<device_id>", query.device_logs, ["GET"]),
    ("/api/devices/<device_id>/sequence", query.device_sequence, ["GET"]),
    ("/api/stats", query.stats, ["GET"]),
    ("/api/dead-letters", admin.dead_letters, ["GET"]),
    ("/metrics", admin.prometheus_metrics, ["GET"]),
    ("/health", health.health, ["GET"]),
    ("/livez", health.live, ["GET"]),
    ("/", health.index, ["GET"]),
):
    api.add_url_rule(rule, view_func=view, methods=methods)
