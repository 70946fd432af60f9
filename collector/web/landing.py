"""`/`: where to go from here, for whoever opens the collector's address.

A small HTML page for browsers (Accept prefers text/html), the same links as JSON for
everyone else (curl's */*, no Accept, application/json). A reader's or admin's key adds
the pipeline's live figures, taken from what /api/stats computes. Self-contained: inline
CSS, no scripts, nothing fetched from elsewhere; every value is escaped by Jinja.
"""

from __future__ import annotations

import importlib.metadata
import logging
from functools import cache

from flask import render_template_string, request

from collector.pipeline.group import backlog_of
from collector.web import query
from collector.web.auth import principal
from collector.web.extensions import settings

log = logging.getLogger(__name__)

DISTRIBUTION = "device-log-collector"
FIGURES_ROLES = ("reader", "admin")  # the roles /api/stats admits
AUTH_HINT = "Authorization: Bearer <key> (python -m collector.keys create ...)"
# Responses differ by what the client accepts and by who asks (the figures).
VARY = "Accept, Authorization, X-API-Key"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Device log collector {{ version }}</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem;color:#222;background:#fff}
h1{font-size:1.5rem;margin-bottom:0}h2{font-size:1.1rem;margin-top:1.75rem}
.version{color:#666;margin-top:0}a{color:#0645ad}code{background:#f3f3f3;padding:0 .25em;border-radius:3px}
ul{padding-left:1.2rem}li{margin:.3rem 0}table{border-collapse:collapse}
td,th{padding:.2rem .9rem .2rem 0;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9rem}
</style></head>
<body>
<h1>Device log collector</h1>
<p class="version">version {{ version }}</p>
<p>Devices POST JSON logs to <code>/api/log</code> or <code>/api/logs/batch</code>; they are queued
in a Redis stream and stored in PostgreSQL in batches.</p>
<h2>Links</h2>
<ul>
<li><a href="{{ links.console }}">Console</a>: devices, their logs with filters, and a live tail
  (a reader key)</li>
<li><a href="{{ links.docs }}">API documentation</a> (Swagger UI) and the
  <a href="{{ links.openapi }}">OpenAPI document</a></li>
<li><a href="{{ links.health }}">Health</a>: can this instance reach Redis and PostgreSQL;
  <a href="{{ links.livez }}">liveness</a>: can it take logs</li>
<li><a href="{{ links.metrics }}">Prometheus metrics</a>: an admin key or the <code>METRICS_TOKEN</code></li>
<li><a href="{{ links.stats }}">Statistics</a>: a reader or admin key</li>
<li><a href="{{ links.flower }}">Flower</a>, the Celery task monitor: a process of its own,
  at <code>{{ links.flower }}</code> (<code>FLOWER_URL</code>)</li>
</ul>
<h2>Keys</h2>
<p>Every other endpoint needs a key: <code>{{ auth }}</code>.</p>
{% if pipeline is not none %}
<h2>Pipeline</h2>
{% if pipeline %}
<table>
<tr><th>accepted</th><td class="n">{{ pipeline.accepted }}</td><td class="note">answered <code>queued</code></td></tr>
<tr><th>persisted</th><td class="n">{{ pipeline.persisted }}</td><td class="note">stored in PostgreSQL</td></tr>
<tr><th>backlog</th><td class="n">{{ pipeline.backlog }}</td><td class="note">in Redis, not stored yet</td></tr>
<tr><th>dead-lettered</th><td class="n">{{ pipeline.dead_lettered }}</td><td class="note">set aside after
  repeated failures</td></tr>
</table>
{% else %}
<p>The figures are unavailable right now (see <a href="{{ links.health }}">health</a>).</p>
{% endif %}
{% endif %}
</body></html>
"""


@cache
def version() -> str:
    """The installed distribution's version (setup.cfg's metadata)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def pipeline_figures() -> dict | None:
    """accepted, persisted, backlog, dead_lettered, from /api/stats' own function; None when
    Redis or PostgreSQL cannot say (the landing page still answers)."""
    try:
        pipeline = query.stats()["pipeline"]
    except Exception:  # any backend failure: the page without figures, not an error
        log.warning("landing page: pipeline figures unavailable", exc_info=True)
        return None
    return {"accepted": pipeline["accepted"], "persisted": pipeline["persisted"], "backlog": backlog_of(pipeline),
            "dead_lettered": pipeline["dead_lettered"]}


def wants_html() -> bool:
    """Browsers put text/html first; curl's */*, no Accept or application/json get JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def index():
    links = {"console": "/console", "docs": "/docs", "openapi": "/openapi.json", "health": "/health", "livez": "/livez",
             "metrics": "/metrics", "stats": "/api/stats", "flower": settings().flower_url}
    who = principal()
    figures = who is not None and who.role in FIGURES_ROLES
    pipeline = pipeline_figures() if figures else None
    headers = {"Vary": VARY}
    if figures:
        headers["Cache-Control"] = "private, no-store"
    if wants_html():
        page = render_template_string(PAGE, version=version(), links=links, auth=AUTH_HINT,
                                      pipeline=(pipeline or {}) if figures else None)
        return page, 200, {**headers, "Content-Type": "text/html; charset=utf-8"}
    body = {"service": DISTRIBUTION, **links, "auth": AUTH_HINT, "version": version()}
    if figures:
        body["pipeline"] = pipeline  # null when unavailable
    return body, 200, headers
