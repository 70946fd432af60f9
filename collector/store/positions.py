"""Positions in the stream of stored logs, and reading stored logs by position (live tails).

A stored row's position is its stream entry: the entry id "<ms>-<n>" (the row's
received_at and entry_seq, migration 0007) within one stream incarnation, whose
epoch tag is part of the row's stream identity "<key>#<epoch>" (log_streams).
Entries of one incarnation are totally ordered by their ids, which Redis hands out
in increasing order; rows are read in that order, through the unique index
logs_entry_key (received_at, entry_seq, stream).

Written "<ms>-<n>@<epoch>" (the SSE id of a tail's events). The epoch is there because
entry ids mean nothing across incarnations: a replacement Redis starts its ids from
its own clock, which may be behind the old one's.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection
from typing import NamedTuple

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from collector.store.search import COLUMNS, LogFilter, finish_row

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# entry_seq is an integer column: an id's n beyond it (a bound like "<ms>-18446744073709551615",
# the last id of a millisecond) compares as the largest n a row can have.
MAX_ENTRY_SEQ = 2**31 - 1
MAX_STREAM_SEQ = 2**64 - 1
_TEXT = re.compile(r"\A(\d{1,20})-(\d{1,20})@([A-Za-z0-9]{1,64})\Z")


class Position(NamedTuple):
    """Just after the entry (ms, seq) of the stream incarnation `epoch`: every row up to it."""

    epoch: str
    ms: int
    seq: int

    @property
    def entry(self) -> tuple[int, int]:
        return self.ms, self.seq

    def text(self) -> str:
        return f"{self.ms}-{self.seq}@{self.epoch}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Raises ValueError for anything that is not a position as text() writes it."""
        match = _TEXT.match(text.strip())
        if not match or int(match[1]) > MAX_STREAM_SEQ or int(match[2]) > MAX_STREAM_SEQ:
            raise ValueError(f"not a position: {text!r}")
        return cls(match[3], int(match[1]), int(match[2]))

    @classmethod
    def before(cls, epoch: str, entry: tuple[int, int]) -> Position:
        """The position just before the entry (every row of smaller id)."""
        ms, seq = entry
        return cls(epoch, ms, seq - 1) if seq else cls(epoch, ms - 1, MAX_STREAM_SEQ)


def stream_name(stream_key: str, epoch: str) -> str:
    """The stream identity rows of that incarnation name (pipeline.group.stream_identity)."""
    return f"{stream_key}#{epoch}"


def stream_id(conn: psycopg.Connection, name: str) -> int | None:
    """log_streams.id of a stream identity; None while nothing of it was ever stored."""
    row = conn.execute("SELECT id FROM log_streams WHERE name = %s", (name,)).fetchone()
    return row[0] if row else None


def _bound(entry: tuple[int, int]) -> tuple[dt.datetime, int]:
    ms, seq = entry
    return _EPOCH + dt.timedelta(milliseconds=ms), min(seq, MAX_ENTRY_SEQ)


class Stored:
    """A stored log and its entry. `log` is as search.finish_row makes it (what LogOut dumps
    and LogFilter.matches reads); `data` is left for whoever encodes it first, so that a
    log sent to many tails is encoded once."""

    __slots__ = ("entry", "log", "data")

    def __init__(self, entry: tuple[int, int], log: dict) -> None:
        self.entry, self.log, self.data = entry, log, None


def rows_after(conn: psycopg.Connection, stream: int, after: tuple[int, int], upto: tuple[int, int] | None,
               limit: int, devices: Collection[str] | None = None, filt: LogFilter | None = None) -> list[Stored]:
    """Rows of the stream whose entry is in (after, upto] (upto None: no end), in entry
    order, at most `limit`: of those devices only (None: all), matching `filt` (None: all).

    The plain bounds on received_at are implied by the row comparisons; they are what
    prunes partitions."""
    low = _bound(after)
    conds = [sql.SQL("stream = %s"), sql.SQL("received_at >= %s"), sql.SQL("(received_at, entry_seq) > (%s, %s)")]
    params: list = [stream, low[0], *low]
    if upto is not None:
        high = _bound(upto)
        conds += [sql.SQL("received_at <= %s"), sql.SQL("(received_at, entry_seq) <= (%s, %s)")]
        params += [high[0], *high]
    if devices is not None:
        conds.append(sql.SQL("device_id = ANY(%s)"))
        params.append(list(devices))
    if filt is not None:
        more, more_params = filt.where()
        conds += more
        params += more_params
    query = sql.SQL("""SELECT {}, (extract(epoch FROM received_at) * 1000)::bigint AS entry_ms, entry_seq
        FROM logs WHERE {} ORDER BY received_at, entry_seq LIMIT %s""").format(COLUMNS, sql.SQL(" AND ").join(conds))
    params.append(limit)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        rows = cur.fetchall()
    found = []
    for row in rows:
        entry = (row.pop("entry_ms"), row.pop("entry_seq"))
        found.append(Stored(entry, finish_row(row)))
    return found
