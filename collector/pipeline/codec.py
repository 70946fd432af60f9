"""Stream entries: one per log, with short field names and values kept as text.

The API does no JSON work beyond `log_data`, and the drain hands the values to
PostgreSQL without decoding JSON at all.
"""

from __future__ import annotations

import datetime as dt

from collector.core.model import Row, entry_identity

# Field names in the stream entry; short because every entry repeats them. The receive
# time is the entry id's (core.model.entry_identity); entries queued before migration
# 0007 also carry it as a field "r", which is ignored.
DEVICE, LEVEL, MESSAGE, DATA, CREATED = b"d", b"l", b"m", b"j", b"t"
BOOT, SEQ = b"b", b"s"  # only when the device numbers its logs


class MalformedEntry(ValueError):
    """A stream entry that is not one of ours (missing or undecodable fields)."""


def encode_entry(log: dict, received_at: dt.datetime) -> dict[bytes, bytes | str]:
    """Stream fields for one validated log (the output of collector.web.schemas.log_schema().load);
    `received_at` is its created_at when the device sent no timestamp."""
    timestamp = log.get("timestamp")
    fields: dict[bytes, bytes | str] = {
        DEVICE: log["device_id"],
        LEVEL: log["log_level"],
        MESSAGE: log["message"],
        CREATED: (timestamp if timestamp is not None else received_at).isoformat(),
    }
    if log.get("log_data") is not None:
        fields[DATA] = log["log_data"]  # already compact JSON bytes
    if log.get("seq") is not None:
        fields[BOOT], fields[SEQ] = log["boot_id"], str(log["seq"])
    return fields


def decode_entry(stream: str, entry_id: bytes | str, fields: dict[bytes, bytes]) -> Row:
    """The `logs` row for one entry of `stream` (its identity: group.stream_identity);
    raises MalformedEntry if the entry is not ours."""
    try:
        data, boot, seq = fields.get(DATA), fields.get(BOOT), fields.get(SEQ)
        stream_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        entry_identity(stream_id)  # storable, or a dead letter now rather than a failing batch
        return (
            stream,
            stream_id,
            fields[DEVICE].decode(),
            fields[LEVEL].decode(),
            fields[MESSAGE].decode(),
            data.decode() if data is not None else None,
            fields[CREATED].decode(),
            boot.decode() if boot is not None else None,
            int(seq) if seq is not None else None,
        )
    except (KeyError, UnicodeDecodeError, AttributeError, ValueError) as exc:
        raise MalformedEntry(f"entry {entry_id!r}: {exc!r}") from None


def payload_of(fields: dict) -> dict:
    """An entry's fields as JSON-able text for the dead-letter store (NULs escaped, which jsonb refuses)."""
    def text(value: bytes) -> str:
        return value.decode("utf-8", "backslashreplace").replace("\x00", "\\u0000")

    return {text(k): text(v) for k, v in fields.items()}
