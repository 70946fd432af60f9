"""The log model every layer shares: levels, the device-id rule, and a stored row."""

from __future__ import annotations

import datetime as dt
import re

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# \Z, not $: $ also matches before a trailing newline, which would let a 101-character id through.
DEVICE_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}\Z"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

# Device sequence numbers: 0 <= seq < 2**63 within one boot_id (1-64 characters).
MAX_SEQ = 2**63 - 1
MAX_BOOT_ID_CHARS = 64

# The `logs` row a stream entry becomes:
# (stream, stream_id, device_id, log_level, message, log_data JSON text or None, created_at,
#  boot_id or None, seq or None).
# (stream, stream_id) is the entry's identity in the pipeline (pipeline.group.stream_identity);
# (device_id, boot_id, seq), when the device numbers its logs, is the log's identity end to end.
Row = tuple[str, str, str, str, str, "str | None", str, "str | None", "int | None"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS_PER_DAY = 86_400_000


def entry_identity(stream_id: str) -> tuple[dt.datetime, int, dt.date]:
    """(received_at, entry_seq, UTC day of received_at) of a stream entry id "<ms>-<n>".

    The receive time of a log is its entry's time: Redis fixed it when the log was
    queued, and it travels with the entry, so every copy of an entry has the same one.
    Raises ValueError for anything that is not an entry id we can store (n beyond 2**31
    needs a Redis clock stuck for days)."""
    ms_text, sep, n_text = stream_id.partition("-")
    if not sep or not ms_text.isdigit() or not n_text.isdigit():
        raise ValueError(f"not a stream entry id: {stream_id!r}")
    ms, n = int(ms_text), int(n_text)
    if n >= 2**31:
        raise ValueError(f"stream entry id {stream_id!r}: sequence part beyond 2**31")
    return (_EPOCH + dt.timedelta(milliseconds=ms), n,
            _EPOCH.date() + dt.timedelta(days=ms // _MS_PER_DAY))
