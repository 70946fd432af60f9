"""bench.redis_rates, small, against the real Redis: every log written is read back once, the
figures are consistent, and no key is left behind."""

from __future__ import annotations

import redis

from bench import redis_rates
from tests.conftest import REDIS_URL


def test_redis_rates_writes_reads_and_cleans_up(key_prefix: str):
    prefix = f"{key_prefix}redis-rates:"
    results = redis_rates.run(REDIS_URL, logs=1_003, clients=2, key_prefix=prefix)

    assert [r["phase"] for r in results] == ["ingest, MULTI/EXEC of 5", "ingest, MULTI/EXEC of 50",
                                             "drain, XREADGROUP COUNT 100 + XACK"]
    for r in results:
        assert r["logs"] == 1_003  # run() also checks the stream's length and the drain's count
        assert r["seconds"] > 0 and r["redis_cpu_s"] >= 0
    text = redis_rates.report(results, clients=2)
    assert "One Redis core, ingest in MULTI/EXECs of 5 plus the drain:" in text
    with redis.Redis.from_url(REDIS_URL) as client:
        assert not list(client.scan_iter(match=f"{prefix}*"))
