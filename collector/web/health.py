"""/health, for load balancers and people: can this instance reach Redis and PostgreSQL
(and, when DATABASE_READ_URL is set, the read replica its queries use: `postgres_read`)?"""

from __future__ import annotations

import datetime as dt
import time

from collector.pipeline import shards
from collector.store import logs as storage
from collector.web.auth import principal
from collector.web.extensions import backends, settings


def health():
    s = settings()
    b = backends()
    checks, errors = {}, {}
    started = time.perf_counter()
    age = None
    try:
        age = shards.pipeline_stats(b.redis, s)["oldest_unstored_age_seconds"]
        checks["redis"] = True
    except Exception as exc:  # any failure is a failed check, reported by name
        checks["redis"], errors["redis"] = False, repr(exc)
    databases = {"postgres": b.db}
    if b.replica:  # the queries' database: down, they answer 503 as they do with the primary down
        databases["postgres_read"] = b.read_db
    for name, pool in databases.items():
        try:
            with pool.connection(timeout=min(1.0, s.db_timeout)) as conn:
                storage.ping(conn)
            checks[name] = True
        except Exception as exc:
            checks[name], errors[name] = False, repr(exc)
    healthy = all(checks.values())
    # A stalled drain is not a reason to take this instance out of the load balancer
    # (ingest still works), but it must not look green: 200 with "degraded".
    stalled = age is not None and age > s.drain_stall_seconds
    body = {
        "status": ("degraded" if stalled else "healthy") if healthy else "unhealthy",
        "oldest_unstored_age_seconds": age,
        "instance": s.instance_name,
        "checks": checks,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": round(time.perf_counter() - started, 4),
    }
    who = principal()
    if errors and who is not None and who.role in ("reader", "admin"):
        body["errors"] = errors  # exception texts name hosts and users: not for anonymous callers
    headers = {} if healthy else {"Retry-After": str(s.retry_after)}
    return body, 200 if healthy else 503, headers


def live():
    """For load balancers and container health checks: 200 when this instance can take
    logs (Redis answers), whatever PostgreSQL does, so a cold start while PostgreSQL is
    down still serves ingest. /health says more."""
    try:
        backends().redis.ping()
    except Exception:  # down is down, for whatever reason
        return {"status": "down", "checks": {"redis": False}}, 503, {"Retry-After": str(settings().retry_after)}
    return {"status": "up", "checks": {"redis": True}}

