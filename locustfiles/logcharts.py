"""Logs, not requests: a "Collector logs" tab and chart in Locust's web UI.

Locust counts requests; the collector's unit is logs (a batch request carries
several). One greenlet on the process that serves the web UI (the master, or the
only process) samples every SAMPLE_SECONDS:

- accepted: the fleet's own count of logs that got a 2xx (accounting.tally; on a
  master, the workers' reports added up),
- persisted and backlog: the collector's pipeline figures from GET /api/stats
  (``pipeline.persisted``, and ``lag + pending``: entries not yet stored), read with
  the reader key the fleet already has — one request per sample, not per user, and
  outside Locust's request statistics.

They are shown with Locust's documented extension points only (docs "Extending
the web UI"): ``template_args["extended_tabs"]`` / ``["extended_tables"]`` for
the tab, an ``extended_stats`` entry added to /stats/requests for its rows, and
``["extended_csv_files"]`` for links under "Download Data"; routes on a Flask
blueprint of ``web_ui.app``: /logs/figures (JSON: the latest sample and the
history), /logs/csv, and /logs/chart (a self-contained page, no external assets,
charting logs/s accepted and persisted and the backlog).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import deque

import gevent
import requests
from accounting import tally  # beside this file: Locust puts its directory on sys.path
from flask import Blueprint, Response, jsonify, request
from locust import events

log = logging.getLogger("devices")

SAMPLE_SECONDS = 3.0
HISTORY = 1200  # samples kept: an hour at 3 s
TAB = "logs"


class Figures:
    """The samples: totals as read, rates between consecutive samples; `time` is Unix time."""

    def __init__(self) -> None:
        self.history: deque[dict] = deque(maxlen=HISTORY)
        self.error: str | None = None  # why the last /api/stats read failed
        self._clock: float | None = None  # time.monotonic() of the latest sample, for the rates

    def reset(self) -> None:
        self.history.clear()
        self._clock = None

    def add(self, accepted: int, persisted: int | None, backlog: int | None) -> dict:
        previous, clock, self._clock = self.latest(), self._clock, time.monotonic()
        sample = {"time": round(time.time(), 3), "accepted": accepted, "persisted": persisted,
                  "backlog": backlog, "accepted_per_second": None, "persisted_per_second": None}
        if previous is not None and clock is not None and self._clock > clock:
            seconds = self._clock - clock
            # A new test resets the fleet's count: a drop is a restart, not a negative rate.
            if accepted >= previous["accepted"]:
                sample["accepted_per_second"] = round((accepted - previous["accepted"]) / seconds, 1)
            if persisted is not None and previous["persisted"] is not None and persisted >= previous["persisted"]:
                sample["persisted_per_second"] = round((persisted - previous["persisted"]) / seconds, 1)
        self.history.append(sample)
        return sample

    def latest(self) -> dict | None:
        return self.history[-1] if self.history else None

    def rows(self) -> list[dict]:
        """The tab's table."""
        last = self.latest() or {}
        return [
            {"name": "accepted (2xx, this fleet)", "per_second": last.get("accepted_per_second"),
             "total": last.get("accepted")},
            {"name": "persisted (PostgreSQL)", "per_second": last.get("persisted_per_second"),
             "total": last.get("persisted")},
            {"name": "backlog (not yet stored)", "per_second": None, "total": last.get("backlog")},
        ]


figures = Figures()


def read_pipeline(host: str, headers: dict | None, timeout: float = 5.0) -> tuple[int, int]:
    """(persisted, backlog) from the collector's /api/stats."""
    resp = requests.get(f"{host.rstrip('/')}/api/stats", headers=headers or {}, timeout=timeout)
    resp.raise_for_status()
    pipeline = resp.json()["pipeline"]
    lag = pipeline.get("lag")
    backlog = pipeline["stream_length"] if lag is None else lag + pipeline["pending"]
    return int(pipeline["persisted"]), int(backlog)


def _sample(environment, headers: dict | None) -> None:
    persisted = backlog = None
    host = environment.host or next((user.host for user in environment.user_classes if user.host), "")
    if host:
        try:
            persisted, backlog = read_pipeline(host, headers)
            figures.error = None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            if figures.error is None:  # once per outage, not every sample
                log.warning("logs chart: GET %s/api/stats failed: %s", host, exc)
            figures.error = f"{type(exc).__name__}: {exc}"[:200]
    figures.add(tally.accepted, persisted, backlog)


def _sampler(environment, headers: dict | None) -> None:
    while True:
        _sample(environment, headers)
        gevent.sleep(SAMPLE_SECONDS)


def install(environment, reader_headers: dict | None) -> None:
    """Add the tab, the routes and the sampling greenlet to this process's web UI, if it has one."""
    web_ui = environment.web_ui
    if web_ui is None:
        return
    # Not "Logs": Locust has a tab of that name already (its log viewer).
    web_ui.template_args["extended_tabs"] = [{"title": "Collector logs", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": [
        {"key": "name", "title": "Logs"},
        {"key": "per_second", "title": "Per second"},
        {"key": "total", "title": "Total (backlog: now)"},
    ]}]
    web_ui.template_args["extended_csv_files"] = [
        {"href": "./logs/csv", "title": "Download logs per second CSV (accepted, persisted, backlog)"},
        {"href": "./logs/chart", "title": "Open the logs per second chart (accepted, persisted, backlog)"},
    ]

    @web_ui.app.after_request
    def _extend_stats(response: Response) -> Response:
        if request.path.endswith("/stats/requests") and response.is_json:
            body = response.get_json()
            body["extended_stats"] = [{"key": TAB, "data": figures.rows()}]
            response.set_data(jsonify(body).get_data())
        return response

    blueprint = Blueprint("collector_logs", __name__)

    @blueprint.route("/logs/figures")
    @web_ui.auth_required_if_enabled
    def logs_figures() -> Response:
        return jsonify({"unit": "logs", "sample_seconds": SAMPLE_SECONDS, "latest": figures.latest(),
                        "stats_error": figures.error, "history": list(figures.history)})

    @blueprint.route("/logs/csv")
    @web_ui.auth_required_if_enabled
    def logs_csv() -> Response:
        out = io.StringIO()
        fields = ["time", "accepted", "accepted_per_second", "persisted", "persisted_per_second", "backlog"]
        writer = csv.DictWriter(out, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(figures.history)
        return Response(out.getvalue(), mimetype="text/csv",
                        headers={"Content-Disposition": "attachment; filename=logs.csv"})

    @blueprint.route("/logs/chart")
    @web_ui.auth_required_if_enabled
    def logs_chart() -> Response:
        return Response(CHART_PAGE, mimetype="text/html")

    web_ui.app.register_blueprint(blueprint)
    gevent.spawn(_sampler, environment, reader_headers)


@events.test_start.add_listener
def _on_test_start(environment, **kwargs) -> None:
    figures.reset()  # like Locust's own charts, a new test starts a new history


# Self-contained: inline SVG drawn by a few lines of JavaScript, nothing fetched from elsewhere.
CHART_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Locust: logs per second</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 svg { border: 1px solid #ccc; background: #fff; display: block; margin-bottom: 1.5em; }
 .accepted { stroke: #1f77b4; } .persisted { stroke: #2ca02c; } .backlog { stroke: #d62728; }
 polyline { fill: none; stroke-width: 2; } .axis { font-size: 11px; fill: #666; }
 #error { color: #d62728; }
</style></head>
<body>
<h1>Logs, not requests</h1>
<p><a href="../">back to Locust</a> · <span id="now"></span> <span id="error"></span></p>
<h2>Logs per second: <span class="accepted">accepted (2xx)</span> and
 <span class="persisted">persisted (PostgreSQL)</span></h2>
<svg id="rates" width="900" height="260"></svg>
<h2 class="backlog">Backlog (entries not yet stored)</h2>
<svg id="backlog" width="900" height="200"></svg>
<script>
const NS = "http://www.w3.org/2000/svg";
function draw(svg, history, series) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = svg.width.baseVal.value, h = svg.height.baseVal.value, pad = 40;
  const values = history.flatMap(s => series.map(k => s[k])).filter(v => v !== null);
  const top = Math.max(1, ...values);
  const label = document.createElementNS(NS, "text");
  label.setAttribute("x", 4); label.setAttribute("y", 14); label.setAttribute("class", "axis");
  label.textContent = top.toFixed(0); svg.appendChild(label);
  for (const key of series) {
    const points = history.map((s, i) => s[key] === null ? null :
      [pad + i * (w - pad - 10) / Math.max(1, history.length - 1), h - 20 - s[key] * (h - 40) / top])
      .filter(p => p !== null).map(p => p.join(",")).join(" ");
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", points); line.setAttribute("class", key.split("_")[0]);
    svg.appendChild(line);
  }
}
async function refresh() {
  try {
    const body = await (await fetch("./figures", {credentials: "include"})).json();
    const last = body.latest || {};
    document.getElementById("now").textContent =
      `accepted ${last.accepted_per_second ?? "-"}/s, persisted ${last.persisted_per_second ?? "-"}/s, ` +
      `backlog ${last.backlog ?? "-"}`;
    document.getElementById("error").textContent = body.stats_error ? `/api/stats: ${body.stats_error}` : "";
    draw(document.getElementById("rates"), body.history, ["accepted_per_second", "persisted_per_second"]);
    draw(document.getElementById("backlog"), body.history, ["backlog"]);
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
}
refresh(); setInterval(refresh, 3000);
</script>
</body></html>
"""
