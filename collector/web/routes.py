"""The API's URL map in one place; the views live in modules by audience."""

from __future__ import annotations

from flask import Blueprint

from collector.web import admin, console, health, ingest, landing, otlp, query, tail

# One blueprint, so endpoint names (and the `endpoint` label of the latency
# metric) stay `api.<view>` whichever module a view lives in.
api = Blueprint("api", __name__)

for rule, view, methods in (
    ("/api/log", ingest.ingest_log, ["POST"]),
    ("/api/logs/batch", ingest.ingest_batch, ["POST"]),
    ("/v1/logs", otlp.otlp_logs, ["POST"]),  # OTLP/HTTP's own path, so exporters need only the base URL
    ("/api/logs", query.fleet_logs, ["GET"]),
    ("/api/logs/tail", tail.fleet_tail, ["GET"]),  # a device named "tail" is read with ?device_id=tail
    ("/api/logs/<device_id>", query.device_logs, ["GET"]),
    ("/api/logs/<device_id>/tail", tail.device_tail, ["GET"]),
    ("/api/devices", query.devices, ["GET"]),
    ("/console", console.console, ["GET"]),
    ("/console/assets/<path:name>", console.console_asset, ["GET"]),
    ("/api/devices/<device_id>/sequence", query.device_sequence, ["GET"]),
    ("/api/stats", query.stats, ["GET"]),
    ("/api/dead-letters", admin.dead_letters, ["GET"]),
    ("/metrics", admin.prometheus_metrics, ["GET"]),
    ("/health", health.health, ["GET"]),
    ("/livez", health.live, ["GET"]),
    ("/", landing.index, ["GET"]),
):
    api.add_url_rule(rule, view_func=view, methods=methods)

# OTLP answers its errors as a google.rpc.Status (the spec's), whoever raised them: the
# central handlers make the answer, this re-encodes its body for /v1/logs only.
api.after_request(otlp.errors_as_status)
