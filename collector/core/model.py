"""The log model every layer shares: levels, the device-id rule, and a stored row."""

from __future__ import annotations

import re

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# \Z, not $: $ also matches before a trailing newline, which would let a 101-character id through.
DEVICE_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}\Z"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

# The `logs` row a stream entry becomes, in the column order of store.logs.INSERT_LOG:
# (stream_id, device_id, log_level, message, log_data JSON text or None, created_at, received_at).
Row = tuple[str, str, str, str, "str | None", str, str]
