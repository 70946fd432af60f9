"""Marshmallow schemas for what devices send and what the query API returns.

Validation is the only guard in front of the stream: whatever these schemas
accept must later insert into PostgreSQL without error, because the device has
already been told "queued". So besides types and sizes they reject what
PostgreSQL cannot store: NUL characters (text and jsonb refuse them) and
timestamps outside the range both Python and PostgreSQL can represent.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any

import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from collector.core.model import DEVICE_ID_RE, LEVELS, MAX_BOOT_ID_CHARS, MAX_SEQ

# An escaped NUL in compact JSON: "\u0000" preceded by an even number of backslashes.
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_UTC = dt.UTC


class Level(fields.String):
    """A log level; lower-case input is accepted and stored upper-case."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        level = super()._deserialize(value, attr, data, **kwargs).upper()
        if level not in LEVELS:
            raise ValidationError(f"Must be one of: {', '.join(LEVELS)}.")
        return level


class Text(fields.String):
    """A string PostgreSQL can store: no NUL characters."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("Must not contain NUL characters.")
        return text


class UtcDateTime(fields.DateTime):
    """An ISO 8601 timestamp, returned in UTC; one without an offset is taken as UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            if moment.tzinfo is None:
                return moment.replace(tzinfo=_UTC)
            return moment.astimezone(_UTC)
        except (OverflowError, ValueError):
            raise ValidationError("Out of the representable range of timestamps.") from None


class LogData(fields.Dict):
    """Free-form JSON object, kept as its compact JSON text for the stream."""

    def __init__(self, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bytes:
        mapping = super()._deserialize(value, attr, data, **kwargs)
        try:
            encoded = orjson.dumps(mapping)
        except orjson.JSONEncodeError as exc:  # e.g. nested deeper than orjson writes
            raise ValidationError(f"Cannot be stored as JSON: {exc}.") from None
        if len(encoded) > self.max_bytes:
            raise ValidationError(f"Longer than {self.max_bytes} bytes as JSON.")
        if b"\\u0000" in encoded and _JSON_NUL.search(encoded):
            raise ValidationError("Must not contain NUL characters.")
        return encoded


@lru_cache(maxsize=8)
def log_schema(max_message_chars: int, max_log_data_bytes: int) -> Schema:
    """One log as a device sends it; `load` returns a dict ready for the stream codec."""

    class LogIn(Schema):
        class Meta:
            unknown = RAISE

        device_id = fields.String(
            required=True,
            validate=validate.Regexp(
                DEVICE_ID_RE,
                error="Must be 1-100 characters: letters, digits and . _ : @ - (starting with a letter or digit).",
            ),
        )
        log_level = Level(required=True)
        message = Text(required=True, validate=validate.Length(min=1, max=max_message_chars))
        log_data = LogData(max_log_data_bytes, load_default=None, allow_none=True)
        timestamp = UtcDateTime(load_default=None, allow_none=True)
        seq = fields.Integer(
            strict=True, allow_none=True, validate=validate.Range(min=0, max=MAX_SEQ),
            metadata={"description": "The device's number for this log, unique within boot_id; a copy with "
                                     "the same (device_id, boot_id, seq) is stored only once."})
        boot_id = Text(
            allow_none=True, validate=validate.Length(min=1, max=MAX_BOOT_ID_CHARS),
            metadata={"description": "Names one run of the device's seq counter (e.g. a boot); required with seq."})

    return LogIn()


SEQ_PAIR_ERROR = "seq and boot_id go together: send both or neither."


def check_sequence_pairs(logs: list[dict], in_batch: bool) -> None:
    """seq without boot_id (or the reverse) is a 422 naming the missing field. Checked
    after loading rather than by a marshmallow schema hook, which costs more per log."""
    errors = {}
    for index, log in enumerate(logs):
        seq, boot = log.get("seq"), log.get("boot_id")
        if (seq is None) != (boot is None):
            errors[index] = {"boot_id" if boot is None else "seq": [SEQ_PAIR_ERROR]}
    if errors:
        raise ValidationError({"logs": errors} if in_batch else errors[0])


@lru_cache(maxsize=8)
def batch_schema(max_batch_logs: int, max_message_chars: int, max_log_data_bytes: int) -> Schema:
    """A batch: every entry is validated, and one bad entry rejects the batch."""
    item = log_schema(max_message_chars, max_log_data_bytes)

    class BatchIn(Schema):
        class Meta:
            unknown = RAISE

        logs = fields.List(
            fields.Nested(item),
            required=True,
            validate=validate.Length(min=1, max=max_batch_logs),
        )

    return BatchIn()


class LogOut(Schema):
    """A stored log as the query API returns it (the seed's fields)."""

    id = fields.Integer()
    device_id = fields.String()
    log_level = fields.String()
    message = fields.String()
    log_data = fields.Raw(allow_none=True)
    created_at = fields.DateTime()


@lru_cache(maxsize=8)
def query_args_schema(max_limit: int) -> Schema:
    """Query string of GET /api/logs/<device_id>."""

    class QueryArgs(Schema):
        class Meta:
            unknown = RAISE

        limit = fields.Integer(load_default=min(100, max_limit), validate=validate.Range(min=1, max=max_limit))

    return QueryArgs()


class DeadLetterOut(Schema):
    """A dead letter as GET /api/dead-letters returns it."""

    id = fields.Integer()
    stream = fields.String(metadata={"description": "The stream (and its incarnation) the entry came from."})
    stream_id = fields.String()
    payload = fields.Raw()
    reason = fields.String()
    delivery_count = fields.Integer()
    first_failed_at = fields.DateTime()
    last_failed_at = fields.DateTime()


@lru_cache(maxsize=8)
def dead_letter_args_schema(max_limit: int) -> Schema:
    """Query string of GET /api/dead-letters: a page of `limit` after id `after_id`."""

    class DeadLetterArgs(Schema):
        class Meta:
            unknown = RAISE

        limit = fields.Integer(load_default=min(100, max_limit), validate=validate.Range(min=1, max=max_limit))
        after_id = fields.Integer(load_default=0, validate=validate.Range(min=0))

    return DeadLetterArgs()


# Response shapes, for the OpenAPI document (the views build plain dicts for speed).

class QueuedOut(Schema):
    status = fields.String(metadata={"example": "queued"})
    message_id = fields.String(metadata={"description": "Stream entry id; also the stored row's stream_id."})
    received_at = fields.DateTime()


class QueuedBatchOut(Schema):
    status = fields.String(metadata={"example": "queued"})
    count = fields.Integer()
    message_ids = fields.List(fields.String())
    received_at = fields.DateTime()


class LogsPageOut(Schema):
    total = fields.Integer()
    source = fields.String(metadata={"enum": ["cache", "database"]})
    data = fields.List(fields.Nested(LogOut))


class PipelineOut(Schema):
    stream_length = fields.Integer()
    pending = fields.Integer()
    lag = fields.Integer(allow_none=True)
    persisted = fields.Integer()
    dead_lettered = fields.Integer()
    accepted = fields.Integer()
    rejected = fields.Integer()
    rejected_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    duplicates_skipped = fields.Integer()
    oldest_unstored_age_seconds = fields.Float(allow_none=True, metadata={
        "description": "Age of the oldest accepted log not yet stored; null when none waits."})


class StatsOut(Schema):
    total_logs = fields.Integer()
    logs_by_level = fields.Dict(keys=fields.String(), values=fields.Integer())
    recent_devices = fields.List(fields.String())
    pipeline = fields.Nested(PipelineOut)
    source = fields.String(metadata={"enum": ["cache", "database"]})


class HealthOut(Schema):
    status = fields.String(metadata={"enum": ["healthy", "degraded", "unhealthy"],
                                     "description": "degraded (200): the oldest log not yet stored is older than "
                                                    "DRAIN_STALL_SECONDS"})
    oldest_unstored_age_seconds = fields.Float(allow_none=True)
    instance = fields.String()
    checks = fields.Dict(keys=fields.String(), values=fields.Boolean())
    errors = fields.Dict(keys=fields.String(), values=fields.String())
    timestamp = fields.DateTime()
    seconds = fields.Float()


class DeadLettersPageOut(Schema):
    total = fields.Integer()
    data = fields.List(fields.Nested(DeadLetterOut))


class BootSequenceOut(Schema):
    boot_id = fields.String()
    first_seq = fields.Integer()
    last_seq = fields.Integer()
    received = fields.Integer()
    missing = fields.Integer(metadata={"description": "How many numbers between first_seq and last_seq never came."})
    missing_ranges = fields.List(fields.List(fields.Integer()),
                                 metadata={"description": "Inclusive [from, to] pairs; the first 1,000."})
    ranges_truncated = fields.Boolean()


class SequenceAuditOut(Schema):
    device_id = fields.String()
    boots = fields.List(fields.Nested(BootSequenceOut))


class ErrorOut(Schema):
    error = fields.String(metadata={"description": "Machine-readable code, e.g. validation_failed."})
    message = fields.String()
    fields = fields.Dict(metadata={"description": "Validation errors by field (and by index in a batch)."})
