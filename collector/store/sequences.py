"""Device sequence numbers: claiming (device_id, boot_id, seq) as logs are stored, and
the gap audit, which tells which numbered logs never reached us.

Both use log_sequence_blocks (migration 0004): a bit per seq, about one row per
1,024 logs, so an audit of a device with millions of logs reads a few thousand
short rows, and a drained batch updates one row per device it touches.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import psycopg

from collector.core.model import Row

BLOCK_BITS = 1024
EMPTY_BLOCK = bytes(BLOCK_BITS // 8)
_ZERO_RUNS = re.compile("0+")


def audit(conn: psycopg.Connection, device_id: str, max_ranges: int = 1000) -> list[dict]:
    """Per boot_id: first and last seq seen, how many were received, how many are
    missing between them, and the missing ranges as inclusive [from, to] pairs (the
    first `max_ranges`; `ranges_truncated` says whether there were more)."""
    rows = conn.execute(
        "SELECT boot_id, block, bits FROM log_sequence_blocks WHERE device_id = %s ORDER BY boot_id, block",
        (device_id,),
    ).fetchall()
    boots: list[dict] = []
    current = None
    for boot_id, block, raw in rows:
        bits = _as_text(bytes(raw))
        if current is None or current["boot_id"] != boot_id:
            current = {"boot_id": boot_id, "first_seq": None, "last_seq": None, "received": 0,
                       "missing": 0, "missing_ranges": [], "ranges_truncated": False}
            boots.append(current)
        _add_block(current, block * BLOCK_BITS, bits, max_ranges)
    return boots


def _as_text(raw: bytes) -> str:
    """"0"/"1" per seq of the block, the block's first seq first."""
    return format(int.from_bytes(raw, "little"), f"0{BLOCK_BITS}b")[::-1]


def _add_block(boot: dict, base: int, bits: str, max_ranges: int) -> None:
    first, last = bits.find("1"), bits.rfind("1")
    if first < 0:
        return
    if boot["first_seq"] is None:
        boot["first_seq"] = base + first
    else:  # the numbers between the previous block's last seq and this block's first
        _missing(boot, boot["last_seq"] + 1, base + first - 1, max_ranges)
    for run in _ZERO_RUNS.finditer(bits, first, last + 1):
        _missing(boot, base + run.start(), base + run.end() - 1, max_ranges)
    boot["last_seq"] = base + last
    boot["received"] += bits.count("1")


def _missing(boot: dict, low: int, high: int, max_ranges: int) -> None:
    if low > high:
        return
    boot["missing"] += high - low + 1
    if len(boot["missing_ranges"]) < max_ranges:
        boot["missing_ranges"].append([low, high])
    else:
        boot["ranges_truncated"] = True


class Claims:
    """The numbered rows of one batch whose (device_id, boot_id, seq) is not stored yet.

    `check` locks the blocks the rows fall in (created if missing, locked in one order,
    so concurrent drains wait for each other instead of deadlocking) and reads their
    bits; `record` sets the bits of the rows that were then actually inserted and
    writes each changed block back once. One statement per step, not per row, and
    all of it in the caller's transaction, so it rolls back with the rows.
    """

    def __init__(self, bits: dict[tuple, int], fresh: list[Row]) -> None:
        self._bits, self.fresh = bits, fresh

    @classmethod
    def check(cls, cur: psycopg.Cursor, rows: Sequence[Row]) -> Claims:
        keys = sorted({(row[2], row[7], row[8] >> 10) for row in rows})
        columns = [list(column) for column in zip(*keys, strict=True)]
        cur.execute(
            """
            INSERT INTO log_sequence_blocks (device_id, boot_id, block, bits)
            SELECT d, b, n, %s FROM unnest(%b::varchar[], %b::varchar[], %b::bigint[]) AS k(d, b, n)
            ON CONFLICT DO NOTHING
            """, [EMPTY_BLOCK, *columns])
        cur.execute(
            """
            SELECT s.device_id, s.boot_id, s.block, s.bits FROM log_sequence_blocks s
            JOIN unnest(%b::varchar[], %b::varchar[], %b::bigint[]) AS k(d, b, n)
              ON s.device_id = k.d AND s.boot_id = k.b AND s.block = k.n
            ORDER BY s.device_id, s.boot_id, s.block
            FOR UPDATE OF s
            """, columns)
        # Bit i of the int is seq block * 1024 + i.
        bits = {(d, b, n): int.from_bytes(raw, "little") for d, b, n, raw in cur.fetchall()}
        seen = dict(bits)
        fresh = []
        for row in rows:
            key, bit = _key(row), _bit(row)
            if seen[key] & bit:
                continue  # stored before, or a copy earlier in this batch
            seen[key] |= bit
            fresh.append(row)
        return cls(bits, fresh)

    def record(self, cur: psycopg.Cursor, inserted: Sequence[Row]) -> None:
        """Mark the numbers of these rows (some of `fresh`, as inserted) as stored."""
        changed = set()
        for row in inserted:
            self._bits[_key(row)] |= _bit(row)
            changed.add(_key(row))
        if not changed:
            return
        order = sorted(changed)
        cur.execute(
            """
            UPDATE log_sequence_blocks s SET bits = k.bits
            FROM unnest(%b::varchar[], %b::varchar[], %b::bigint[], %b::bytea[]) AS k(d, b, n, bits)
            WHERE s.device_id = k.d AND s.boot_id = k.b AND s.block = k.n
            """,
            [[k[0] for k in order], [k[1] for k in order], [k[2] for k in order],
             [self._bits[k].to_bytes(BLOCK_BITS // 8, "little") for k in order]])


def _key(row: Row) -> tuple[str, str, int]:
    return row[2], row[7], row[8] >> 10


def _bit(row: Row) -> int:
    return 1 << (row[8] & (BLOCK_BITS - 1))

