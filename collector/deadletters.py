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
        result = replay(conn, client, settings, None if args.all else args.ids)
        print(f"stored {result.stored} dead letter(s); {result.still_failing} still failing (see `list`)")
    return 1 if result.still_failing else 0


if __name__ == "__main__":
    sys.exit(main())
