"""The log model every layer shares: levels, the device-id rule, and a stored row."""

from __future__ import annotations

import re

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# \Z, not $: $ also matches before a trailing newline, which would let a 101-character id through.
DEVICE_ID_PATTERN = r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}\Z"
DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)

# Device sequence numbers: 0 <= seq < 2**63 within one boot_id (1-64 characters).
MAX_SEQ = 2**63 - 1
MAX_BOOT_ID_CHARS = 64

# The `logs` row a stream entry becomes, in the column order of store.logs.INSERT_LOG:
# (stream, stream_id, device_id, log_level, message, log_data JSON text or None, created_at,
#  received_at, boot_id or None, seq or None).
# (stream, stream_id) is the entry's identity in the pipeline (pipeline.group.stream_identity);
# (device_id, boot_id, seq), when the device numbers its logs, is the log's identity end to end.
Row = tuple[str, str, str, str, str, "str | None", str, str, "str | None", "int | None"]
