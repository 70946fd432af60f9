"""Dead letters: list them and, after a fix, replay them.

    python -m collector.deadletters list [--limit N]
    python -m collector.deadletters replay --all | --id ID [--id ID ...]

Replay stores each dead letter's original entry straight into `logs`, under its
original stream id, and deletes the dead letter in the same PostgreSQL
transaction: it happens exactly once or not at all, however often replay is run
or wherever it is interrupted. Entries that still fail stay, with the new reason.
Replayed logs move from the dead-lettered count to the persisted one.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import psycopg
import redis

from collector import cache, storage
from collector.clients import make_redis
from collector.settings import Settings, load_settings
from collector.stream import MalformedEntry, decode_entry


@dataclass(frozen=True)
class ReplayResult:
    stored: int
    still_failing: int


def replay(conn: psycopg.Connection, client: redis.Redis, settings: Settings, ids: list[int] | None) -> ReplayResult:
    """Store the dead letters with these ids (all when None); see the module doc."""
    failures: list[tuple[int, str]] = []
    with conn.transaction():
        letters = conn.execute(
            """
            SELECT id, stream_id, payload FROM dead_letters
            WHERE %(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s)
            ORDER BY id FOR UPDATE SKIP LOCKED
            """,
            {"ids": ids},
        ).fetchall()
        rows, letter_of = [], {}
        for letter_id, stream_id, payload in letters:
            try:
                row = decode_entry(stream_id, {k.encode(): v.encode() for k, v in payload.items()})
            except MalformedEntry as exc:
                failures.append((letter_id, f"replay: malformed entry: {exc}"))
                continue
            rows.append(row)
            letter_of[row[0]] = letter_id
        outcome = storage.store_rows(conn, rows, writer="replay")
        failures += [(letter_of[row[0]], f"replay: rejected by PostgreSQL: {error}") for row, error in outcome.rejected]
        failed = {letter_id for letter_id, _ in failures}
        stored = [letter_id for letter_id in letter_of.values() if letter_id not in failed]
        conn.execute("DELETE FROM dead_letters WHERE id = ANY(%s)", (stored,))
        if failures:
            conn.cursor().executemany(
                "UPDATE dead_letters SET reason = %s, last_failed_at = now() WHERE id = %s",
                [(reason, letter_id) for letter_id, reason in failures])
    devices = {row[1] for row in rows}
    pipe = client.pipeline(transaction=False)
    cache.invalidate(pipe, settings.key_prefix, [cache.STATS_SCOPE, *map(cache.device_scope, devices)])
    pipe.execute()
    return ReplayResult(stored=len(stored), still_failing=len(failures))


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
            for row in storage.list_dead_letters(conn, args.limit):
                print(json.dumps(row, default=str))
            return 0
        client = make_redis(settings, timeout=5.0)
        result = replay(conn, client, settings, None if args.all else args.ids)
        print(f"stored {result.stored} dead letter(s); {result.still_failing} still failing (see `list`)")
    return 1 if result.still_failing else 0


if __name__ == "__main__":
    sys.exit(main())
