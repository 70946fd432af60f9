"""Replaying dead letters after a fix (the CLI is `python -m collector.deadletters`).

Replay stores each dead letter's original entry straight into `logs`, under its
original identity (stream and stream id), and deletes the dead letter in the same PostgreSQL
transaction: it happens exactly once or not at all, however often replay is run
or wherever it is interrupted. Entries that still fail stay, with the new reason.
Replayed logs move from the dead-lettered count to the persisted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
import redis

from collector.core.settings import Settings
from collector.pipeline import cache
from collector.pipeline.codec import MalformedEntry, decode_entry
from collector.store import deadletters
from collector.store import logs as storage


@dataclass(frozen=True)
class ReplayResult:
    stored: int
    still_failing: int


def replay(conn: psycopg.Connection, client: redis.Redis, settings: Settings, ids: list[int] | None) -> ReplayResult:
    """Store the dead letters with these ids (all when None); see the module doc. `client`
    is the query cache's Redis (its entries for the replayed devices are invalidated)."""
    failures: list[tuple[int, str]] = []
    with conn.transaction():
        letters = deadletters.lock_for_replay(conn, ids)
        rows, letter_of = [], {}
        for letter_id, stream, stream_id, payload in letters:
            try:
                row = decode_entry(stream, stream_id, {k.encode(): v.encode() for k, v in payload.items()})
            except MalformedEntry as exc:
                failures.append((letter_id, f"replay: malformed entry: {exc}"))
                continue
            rows.append(row)
            letter_of[row[:2]] = letter_id
        outcome = storage.store_rows(conn, rows, writer="replay")
        failures += [(letter_of[row[:2]], f"replay: rejected by PostgreSQL: {error}")
                     for row, error in outcome.rejected]
        failed = {letter_id for letter_id, _ in failures}
        stored = [letter_id for letter_id in letter_of.values() if letter_id not in failed]
        deadletters.delete(conn, stored)
        deadletters.record_failures(conn, failures)
    devices = {row[2] for row in rows}
    cache.invalidate(client, settings.key_prefix, [cache.STATS_SCOPE, *map(cache.device_scope, devices)])
    return ReplayResult(stored=len(stored), still_failing=len(failures))
