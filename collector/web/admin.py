"""For operators and scrapers: dead letters and Prometheus metrics."""

from __future__ import annotations

from flask import Response, request

from collector.core import metrics
from collector.pipeline.gauges import StreamCollector
from collector.store import deadletters
from collector.web.extensions import backends, settings
from collector.web.schemas import DeadLetterOut, dead_letter_args_schema

_dead_letter_out = DeadLetterOut(many=True)


def dead_letters():
    args = dead_letter_args_schema(settings().max_query_limit).load(request.args.to_dict())
    with backends().db.connection() as conn:
        rows = deadletters.page(conn, args["limit"], args["after_id"])
        total = deadletters.count(conn)
    return {"total": total, "data": _dead_letter_out.dump(rows)}


def prometheus_metrics():
    s = settings()
    # The API's own metrics and the stream gauges (read from Redis now), all labelled with this
    # instance's name: nginx sends a scrape through its port to whichever instance it picks.
    body, content_type = metrics.render(metrics.API, s.instance_name,
                                        [StreamCollector(backends().redis, s)])
    return Response(body, content_type=content_type)
