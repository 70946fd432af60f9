"""Dead letters: list them and, after a fix, replay them into the stream.

    python -m collector.deadletters list [--limit N]
    python -m collector.deadletters replay --all | --id ID [--id ID ...]

Replay re-adds each entry's original fields to the stream as a new entry and
deletes its dead letter in the same transaction, so a failed XADD leaves the
dead letter in place. Replayed logs are not counted as accepted again: they
move from the dead-lettered count to the persisted one.
"""

from __future__ import annotations

import argparse
import json
import sys

import psycopg
import redis

from collector import storage
from collector.clients import make_redis
from collector.settings import Settings, load_settings


def replay(conn: psycopg.Connection, client: redis.Redis, settings: Settings, ids: list[int] | None) -> list[str]:
    """Re-queue the dead letters with these ids (all when None); returns the new stream ids."""
    with conn.transaction():
        rows = conn.execute(
            "DELETE FROM dead_letters WHERE %(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s) RETURNING id, payload",
            {"ids": ids},
        ).fetchall()
        if not rows:
            return []
        pipe = client.pipeline(transaction=True)
        for _, payload in sorted(rows):
            pipe.xadd(settings.stream, {k.encode(): v.encode() for k, v in payload.items()})
        return [entry_id.decode() for entry_id in pipe.execute()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m collector.deadletters", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="print dead letters as JSON lines")
    listing.add_argument("--limit", type=int, default=100)
    again = sub.add_parser("replay", help="re-queue dead letters into the stream")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("--id", type=int, action="append", dest="ids")
    args = parser.parse_args(argv)

    settings = load_settings()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        if args.command == "list":
            for row in storage.list_dead_letters(conn, args.limit):
                print(json.dumps(row, default=str))
            return 0
        client = make_redis(settings, timeout=5.0)
        new_ids = replay(conn, client, settings, None if args.all else args.ids)
        print(f"replayed {len(new_ids)} dead letter(s) into {settings.stream}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
