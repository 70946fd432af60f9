"""How long the gap audit takes for a device with millions of numbered logs.

    .venv/bin/python -m bench.sequence_audit [--logs 5000000] [--missing 1000] [--repeat 5]

Claims seq 1..--logs for one device (minus --missing random numbers) in a scratch
database through the drain's own claims (store.sequences.Claims, in batches of 1,000),
then times store.sequences.audit, which serves GET /api/devices/<id>/sequence, and
prints the median, the rows it read and the missing count it found.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from collector.core.settings import load_settings
from collector.store import sequences
from collector.store.migrations import migrate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sequence_audit", description=__doc__.split("\n")[0])
    parser.add_argument("--logs", type=int, default=5_000_000)
    parser.add_argument("--missing", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    base = load_settings().database_url
    name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    url = urlunsplit(urlsplit(base)._replace(path=f"/{name}"))
    migrate(url)
    try:
        rng = random.Random(1)
        gone = set(rng.sample(range(1, args.logs + 1), args.missing))
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            for start in range(1, args.logs + 1, 1000):
                rows = [("s", str(i), "device-1", "INFO", "m", None, "", "", "boot-1", i)
                        for i in range(start, min(start + 1000, args.logs + 1)) if i not in gone]
                with conn.transaction(), conn.cursor() as cur:
                    claims = sequences.Claims.check(cur, rows)
                    claims.record(cur, claims.fresh)  # as if every fresh row were inserted
            fill = time.perf_counter() - started
            blocks = conn.execute("SELECT count(*) FROM log_sequence_blocks").fetchone()[0]
            timings = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                [boot] = sequences.audit(conn, "device-1")
                timings.append(time.perf_counter() - t0)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    assert boot["missing"] == args.missing and boot["received"] == args.logs - args.missing
    print(f"{args.logs:,} numbered logs of one device ({args.missing:,} missing), claimed in {fill:.1f} s "
          f"({args.logs / fill:,.0f} claims/s in batches of 1,000): {blocks:,} block rows")
    print(f"gap audit: median {statistics.median(timings) * 1000:.0f} ms over {args.repeat} runs "
          f"(min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f}); found {boot['missing']:,} missing in "
          f"{len(boot['missing_ranges']):,} ranges")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
