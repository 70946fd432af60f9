"""Dead letters from the command line: list them and, after a fix, replay them.

    python -m collector.deadletters list [--limit N]
    python -m collector.deadletters replay --all | --id ID [--id ID ...]

A replay stores each entry exactly once, however often it is run (see
collector.pipeline.replay).
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from collector.core.clients import make_cache_redis, make_redis
from collector.core.settings import load_settings
from collector.pipeline.replay import ReplayResult, replay
from collector.store import deadletters

__all__ = ["ReplayResult", "main", "replay"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.deadletters", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print dead letters as JSON lines")
    listing.add_argument("--limit", type=int, default=100)
    again = sub.add_parser("replay", help="store dead letters after a fix")
    which = again.add_mutually_exclusive_group(required=True)  # no accidental "replay everything"
    which.add_argument("--all", action="store_true")
    which.add_argument("--id", type=int, action="append", dest="ids")
    args = parser.parse_args(argv)

    settings = load_settings()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.command == "list":
            for row in deadletters.page(conn, args.limit):
                print(json.dumps(row, default=str))
            return 0
        # Replay talks to Redis only to invalidate the query cache.
        client = make_cache_redis(settings, make_redis(settings, timeout=5.0))
        result = replay_in_chunks(conn, client, settings, args.ids)
        print(f"stored {result.stored} dead letter(s); {result.still_failing} still failing (see `list`)")
    return 1 if result.still_failing else 0


# Dead letters per replay transaction: each chunk is stored exactly once or not at all,
# and a long replay says how far along it is after each.
CHUNK = 500


def replay_in_chunks(conn: psycopg.Connection, client, settings, ids: list[int] | None) -> ReplayResult:
    """Replay these ids (all when None), CHUNK at a time, with a progress line per chunk."""
    if ids is None:
        ids, after = [], 0
        while rows := deadletters.page(conn, 10_000, after_id=after):
            ids += [row["id"] for row in rows]
            after = rows[-1]["id"]
    stored = failing = 0
    for start in range(0, len(ids), CHUNK):
        result = replay(conn, client, settings, ids[start:start + CHUNK])
        stored, failing = stored + result.stored, failing + result.still_failing
        if len(ids) > CHUNK:
            print(f"  {min(start + CHUNK, len(ids))} of {len(ids)} replayed ({stored} stored, {failing} still failing)",
                  flush=True)
    return ReplayResult(stored=stored, still_failing=failing)


if __name__ == "__main__":
    sys.exit(main())
