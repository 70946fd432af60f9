"""Bytes Redis keeps per remembered Idempotency-Key answer, and what IDEMPOTENCY_TTL costs.

    .venv/bin/python -m bench.idempotency_memory [--rate 4000] [--maxmemory-mb 1024]

Posts through the real app (in-process, against REDIS_URL / DATABASE_URL) batches of
5 logs with UUID keys, reads MEMORY USAGE of the records, and prints the bytes per
key and the memory the default TTL needs at `--rate` requests per second. The
default rate is an input, not a measurement: about the single-log wrk rate the
performance issue reports for this 2-core machine (3,900/s), rounded up.
"""

from __future__ import annotations

import argparse
import statistics
import uuid

import redis

from collector.core.settings import load_settings
from collector.web.app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idempotency_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=4000.0, help="requests per second to size for")
    parser.add_argument("--maxmemory-mb", type=float, default=1024.0, help="Redis maxmemory (docker-compose: 1 GB)")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)

    prefix = f"bench-idem:{uuid.uuid4().hex[:8]}:"
    # Keys off: records are then scoped by device id ("d:device_042"), a little longer than by key id.
    settings = load_settings(key_prefix=prefix, auth_enabled=False)
    client = create_app(settings).test_client()
    r = redis.Redis.from_url(settings.redis_url)
    try:
        for i in range(args.samples):
            logs = [{"device_id": f"device_{i % 100:03d}", "log_level": "INFO", "message": f"m{j}"} for j in range(5)]
            response = client.post("/api/logs/batch", json={"logs": logs},
                                   headers={"Idempotency-Key": str(uuid.uuid4())})
            assert response.status_code == 200, response.get_json()
        sizes = [r.memory_usage(k) for k in r.scan_iter(match=f"{prefix}idem:*", count=1000)]
    finally:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
    per_key = statistics.median(sizes)
    keys_held = args.rate * settings.idempotency_ttl
    total_mb = keys_held * per_key / 2**20
    print(f"bytes per remembered answer (MEMORY USAGE, median of {len(sizes)}): {per_key:.0f}")
    print(f"IDEMPOTENCY_TTL={settings.idempotency_ttl} s at {args.rate:.0f} requests/s: {keys_held:,.0f} keys, "
          f"{total_mb:.0f} MiB = {total_mb / args.maxmemory_mb:.1%} of {args.maxmemory_mb:.0f} MiB maxmemory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
