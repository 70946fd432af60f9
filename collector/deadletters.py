"""Dead letters from the command line: list them and, after a fix, replay them.

    python -m collector.deadletters list [--limit N]
    python -m collector.deadletters replay --all | --id ID [--id ID ...]

`list` prints one JSON line per dead letter on standard output and how many there
are on standard error ("no dead letters" when there are none). A replay stores each
entry exactly once, however often it is run (see collector.pipeline.replay), and
says how many it stored, how many still fail and how many ids it did not find. Failures
(a bad setting, PostgreSQL unreachable) are one line on standard error (collector.cli).
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg

from collector import cli
from collector.core.clients import make_cache_redis, make_redis
from collector.core.settings import load_settings
from collector.pipeline.replay import ReplayResult, replay
from collector.store import deadletters

__all__ = ["ReplayResult", "main", "replay"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.deadletters", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print dead letters as JSON lines")
    listing.add_argument("--limit", type=_positive, default=100, help="most to print, oldest first (100)")
    again = sub.add_parser("replay", help="store dead letters after a fix")
    which = again.add_mutually_exclusive_group(required=True)  # no accidental "replay everything"
    which.add_argument("--all", action="store_true")
    which.add_argument("--id", type=int, action="append", dest="ids")
    args = parser.parse_args(argv)

    settings = load_settings()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.command == "list":
            rows = deadletters.page(conn, args.limit)
            for row in rows:
                print(json.dumps(row, default=str))
            total = deadletters.count(conn) if len(rows) == args.limit else len(rows)
            print(f"{len(rows)} of {total} dead letter(s) (--limit to see more)" if total > len(rows)
                  else f"{total} dead letter(s)" if total else "no dead letters", file=sys.stderr)
            return 0
        if args.ids is None and not deadletters.count(conn):
            print("no dead letters to replay")
            return 0
        # Replay talks to Redis only to invalidate the query cache (best-effort: a warning if down).
        client = make_cache_redis(settings, make_redis(settings, timeout=5.0))
        result = replay_in_chunks(conn, client, settings, args.ids)
        print(f"stored {result.stored} dead letter(s); {result.still_failing} still failing (see `list`)")
        if args.ids is not None and (missing := len(set(args.ids)) - result.stored - result.still_failing):
            print(f"{missing} of the {len(set(args.ids))} id(s) given are not dead letters (already replayed, "
                  "deleted, or never were)")
    return 1 if result.still_failing else 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


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
    sys.exit(cli.run(main))
