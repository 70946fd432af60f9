"""The gap audit: which of a device's numbered logs (boot_id, seq) never reached us.

Reads log_sequence_blocks (migration 0004): about one row per 1,024 logs, so an
audit of a device with millions of logs reads a few thousand short rows.
"""

from __future__ import annotations

import re

import psycopg

BLOCK_BITS = 1024
_ZERO_RUNS = re.compile("0+")


def audit(conn: psycopg.Connection, device_id: str, max_ranges: int = 1000) -> list[dict]:
    """Per boot_id: first and last seq seen, how many were received, how many are
    missing between them, and the missing ranges as inclusive [from, to] pairs (the
    first `max_ranges`; `ranges_truncated` says whether there were more)."""
    rows = conn.execute(
        "SELECT boot_id, block, bits::text FROM log_sequence_blocks WHERE device_id = %s ORDER BY boot_id, block",
        (device_id,),
    ).fetchall()
    boots: list[dict] = []
    current = None
    for boot_id, block, bits in rows:
        if current is None or current["boot_id"] != boot_id:
            current = {"boot_id": boot_id, "first_seq": None, "last_seq": None, "received": 0,
                       "missing": 0, "missing_ranges": [], "ranges_truncated": False}
            boots.append(current)
        _add_block(current, block * BLOCK_BITS, bits, max_ranges)
    return boots


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
