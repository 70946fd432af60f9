"""Marshmallow schemas for what devices send and what the query API returns.

Validation is the only guard in front of the stream: whatever these schemas
accept must later insert into PostgreSQL without error, because the device has
already been told "queued", and must come back from every read path with the
same meaning. So besides types and sizes they reject what PostgreSQL cannot
store (NUL characters: text and jsonb refuse them), what JSON readers cannot
give back (integers beyond 64 bits, non-finite numbers, nesting deeper than an
answer can be written) and timestamps that would not be the same instant once
stored (outside years 1-9999 in UTC, finer than a microsecond).
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from collector.core.model import DEVICE_ID_RE, LEVELS, MAX_BOOT_ID_CHARS, MAX_SEQ
from collector.web import logdata

_UTC = dt.UTC

# A fraction of a second with a non-zero digit past the sixth: fromisoformat would drop
# it silently, and the instant stored would not be the one sent.
_SUB_MICROSECOND = re.compile(r"[.,]\d{6}\d*[1-9]")


class Level(fields.String):
    """A log level; lower-case input is accepted and stored upper-case."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        level = super()._deserialize(value, attr, data, **kwargs).upper()
        if level not in LEVELS:
            raise ValidationError(f"Must be one of: {', '.join(LEVELS)}.")
        return level


class Text(fields.String):
    """A string PostgreSQL can store: no NUL characters, no lone surrogates."""

    def __init__(self, orjson_parsed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.orjson_parsed = orjson_parsed

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise ValidationError("Must not contain NUL characters.")
        # orjson refuses lone surrogates, so only other input needs the check (isascii is O(1)).
        if not self.orjson_parsed and not text.isascii() and not logdata.is_unicode(text):
            raise ValidationError("Must be Unicode text (no lone surrogates).")
        return text


class UtcDateTime(fields.DateTime):
    """An ISO 8601 timestamp (datetime.fromisoformat's forms), returned in UTC; one without
    an offset is taken as UTC. It must be an instant of years 1-9999 in UTC, to the
    microsecond: that is what Python and PostgreSQL both hold exactly."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.datetime:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            # Only from in-process callers (OTLP's mapping, from nanoseconds): JSON has no
            # datetimes. Already an instant to the microsecond; no text to parse.
            return value.astimezone(_UTC)
        moment = super()._deserialize(value, attr, data, **kwargs)  # refuses second 60 and hour 24
        if _SUB_MICROSECOND.search(value):
            raise ValidationError("More precise than a microsecond, which is all that is stored; "
                                  "round it to 6 fractional digits.")
        try:
            if moment.tzinfo is None:
                return moment.replace(tzinfo=_UTC)
            return moment.astimezone(_UTC)
        except (OverflowError, ValueError):
            raise ValidationError("Out of the representable range of timestamps "
                                  "(0001-01-01 to 9999-12-31 in UTC).") from None


class LogData(fields.Dict):
    """Free-form JSON object, kept as its compact JSON text for the stream and the table
    (which stores that text as it is, so numbers keep their form: 1e20 stays a float)."""

    def __init__(self, max_bytes: int, orjson_parsed: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_bytes = max_bytes
        self.orjson_parsed = orjson_parsed

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bytes:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        try:
            encoded = logdata.encode(value, self.orjson_parsed)
        except logdata.Refused as refused:
            raise ValidationError(str(refused)) from None
        if len(encoded) > self.max_bytes:
            raise ValidationError(f"Longer than {self.max_bytes} bytes as JSON.")
        return encoded


LOG_DATA_DESCRIPTION = (
    "A JSON object, at most {max_bytes} bytes as compact JSON and nested at most {depth} levels deep. "
    "Integers anywhere in it must lie between -2^63 and 2^64-1 (a longer one is refused: send it as a "
    "float or a string); other numbers are IEEE 754 doubles (finite; a literal is read as the nearest "
    "double). Strings and keys: any Unicode text without NUL (U+0000). It comes back with the same "
    "meaning: integers as integers, floats as floats (1e20 as 1e+20, -0.0 with its sign), keys in order.")
# The device-id rule as the OpenAPI document states it: DEVICE_ID_RE's, in the ECMA-262 syntax
# that OpenAPI patterns use (\A and \Z are Python's only: JavaScript reads \A as a plain "A").
DEVICE_ID_DOC_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$"
DEVICE_ID_DESCRIPTION = ("The device's id: 1-100 of A-Za-z0-9 . _ : @ -, starting with a letter or digit. "
                         "A device key accepts only the ids in its scope.")
TIMESTAMP_DESCRIPTION = (
    "When the log was made: ISO 8601 (as Python's datetime.fromisoformat reads it, e.g. "
    "2024-05-01T12:00:00.123456+02:00 or ...Z); without an offset it is UTC. It must be an instant "
    "from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z, to the microsecond (more fractional "
    "digits only if they are zeros); offsets up to +-23:59:59.999999; no leap second (:60). "
    "It becomes created_at, returned in UTC; without it the receive time does.")


def log_schema(max_message_chars: int, max_log_data_bytes: int, orjson_parsed: bool = False) -> Schema:
    """One log as a device sends it; `load` returns a dict ready for the stream codec.

    orjson_parsed: the input comes from orjson.loads, which refuses lone surrogates
    (their check is skipped) but reads an integer beyond 64 bits as a float (so a float
    that large in log_data raises logdata.AmbiguousNumber: load the exactly parsed body instead).
    """
    return _log_schema(max_message_chars, max_log_data_bytes, orjson_parsed)  # one instance per arguments


@lru_cache(maxsize=16)
def _log_schema(max_message_chars: int, max_log_data_bytes: int, orjson_parsed: bool) -> Schema:

    class LogIn(Schema):
        class Meta:
            unknown = RAISE

        device_id = fields.String(
            required=True,
            validate=validate.Regexp(
                DEVICE_ID_RE,
                error="Must be 1-100 characters: letters, digits and . _ : @ - (starting with a letter or digit).",
            ),
            metadata={"pattern": DEVICE_ID_DOC_PATTERN, "description": DEVICE_ID_DESCRIPTION,
                      "example": "device_001"},
        )
        log_level = Level(required=True, metadata={
            "enum": list(LEVELS), "example": "INFO",
            "description": f"One of {', '.join(LEVELS)}; any case is accepted (info is INFO) and stored upper-case."})
        message = Text(orjson_parsed, required=True, validate=validate.Length(min=1, max=max_message_chars),
                       metadata={"pattern": "^[^\\u0000]*$", "description": "Unicode text without NUL (U+0000).",
                                 "example": "Temperature above threshold"})
        log_data = LogData(max_log_data_bytes, orjson_parsed, load_default=None, allow_none=True, metadata={
            "description": LOG_DATA_DESCRIPTION.format(max_bytes=max_log_data_bytes, depth=logdata.MAX_DEPTH),
            "example": {"temperature_c": 81.5, "threshold_c": 80, "sensor": "cpu"},
            "x-max-depth": logdata.MAX_DEPTH,
            "x-integer-minimum": logdata.MIN_INT, "x-integer-maximum": logdata.MAX_INT})
        timestamp = UtcDateTime(load_default=None, allow_none=True, metadata={
            "description": TIMESTAMP_DESCRIPTION, "example": "2024-05-01T12:00:00.123456Z"})
        # seq and boot_id go together (check_sequence_pairs): their examples are a pair, so a
        # body assembled from the fields' examples has both or neither.
        seq = fields.Integer(
            strict=True, allow_none=True, validate=validate.Range(min=0, max=MAX_SEQ),
            metadata={"description": "The device's number for this log, unique within boot_id; a copy with "
                                     "the same (device_id, boot_id, seq) is stored only once. Send it with "
                                     "boot_id or not at all (one without the other is a 422).",
                      "example": 42})
        boot_id = Text(
            orjson_parsed, allow_none=True, validate=validate.Length(min=1, max=MAX_BOOT_ID_CHARS),
            metadata={"description": "Names one run of the device's seq counter (e.g. a boot); required with seq, "
                                     "and seq with it. Unicode text without NUL.", "pattern": "^[^\\u0000]*$",
                      "example": "boot-2024-05-01T11:58:03Z"})

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


def batch_schema(max_batch_logs: int, max_message_chars: int, max_log_data_bytes: int,
                 orjson_parsed: bool = False) -> Schema:
    """A batch: every entry is validated, and one bad entry rejects the batch."""
    return _batch_schema(max_batch_logs, max_message_chars, max_log_data_bytes, orjson_parsed)


@lru_cache(maxsize=16)
def _batch_schema(max_batch_logs: int, max_message_chars: int, max_log_data_bytes: int,
                  orjson_parsed: bool) -> Schema:
    item = log_schema(max_message_chars, max_log_data_bytes, orjson_parsed)

    class BatchIn(Schema):
        class Meta:
            unknown = RAISE

        logs = fields.List(
            fields.Nested(item),
            required=True,
            validate=validate.Length(min=1, max=max_batch_logs),
            metadata={"description": f"1 to {max_batch_logs} logs, each as POST /api/log takes one."},
        )

    return BatchIn()


class LogOut(Schema):
    """A stored log as the query API returns it (the seed's fields)."""

    id = fields.Integer()
    device_id = fields.String()
    log_level = fields.String()
    message = fields.String()
    log_data = fields.Raw(allow_none=True, metadata={
        "type": "object", "description": "The log_data sent, with the same meaning (see LogIn)."})
    created_at = fields.DateTime(metadata={
        "description": "The log's timestamp (or its receive time), in UTC (+00:00), to the microsecond."})


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
    status = fields.String(metadata={"enum": ["queued"], "example": "queued"})
    message_id = fields.String(metadata={
        "description": "Stream entry id \"<ms>-<n>\": with the device id, the stored row's identity (its "
                       "received_at is <ms>, its entry_seq <n>; SQL: stream_entry_id(received_at, entry_seq)). "
                       "Unique per device's stream shard (STREAM_SHARDS).",
        "example": "1714564800123-0"})
    received_at = fields.DateTime(metadata={"example": "2024-05-01T12:00:00.123000+00:00"})


class QueuedBatchOut(Schema):
    status = fields.String(metadata={"enum": ["queued"], "example": "queued"})
    count = fields.Integer(metadata={"example": 2})
    message_ids = fields.List(fields.String(), metadata={"example": ["1714564800123-0", "1714564800123-1"]})
    received_at = fields.DateTime(metadata={"example": "2024-05-01T12:00:00.123000+00:00"})


class LogsPageOut(Schema):
    total = fields.Integer(metadata={"description": "How many logs this page holds."})
    source = fields.String(metadata={"enum": ["cache", "database"]})
    data = fields.List(fields.Nested(LogOut))
    next_cursor = fields.String(allow_none=True, metadata={
        "description": "Pass it as ?cursor= with the same filters for the next page; null on the last page."})


class ShardOut(Schema):
    stream = fields.String(metadata={"example": "logs:stream:{s2}"})
    stream_length = fields.Integer()
    pending = fields.Integer()
    lag = fields.Integer(allow_none=True)
    oldest_unstored_age_seconds = fields.Float(allow_none=True)


class PipelineOut(Schema):
    stream_length = fields.Integer()
    pending = fields.Integer()
    lag = fields.Integer(allow_none=True)
    persisted = fields.Integer()
    dead_lettered = fields.Integer()
    logs_expired = fields.Integer(metadata={
        "description": "Stored logs removed by retention (RETENTION_DAYS): no longer in persisted."})
    dead_letters_expired = fields.Integer(metadata={
        "description": "Dead letters deleted by DEAD_LETTER_RETENTION_DAYS: no longer in dead_lettered."})
    accepted = fields.Integer()
    rejected = fields.Integer()
    rejected_by_reason = fields.Dict(keys=fields.String(), values=fields.Integer())
    duplicates_skipped = fields.Integer()
    oldest_unstored_age_seconds = fields.Float(allow_none=True, metadata={
        "description": "Age of the oldest accepted log not yet stored; null when none waits."})
    shards = fields.List(fields.Nested(ShardOut), metadata={
        "description": "With STREAM_SHARDS above 1 only: each stream shard's figures (the ones above are their "
                       "totals, the age their largest)."})


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
    error = fields.String(metadata={
        "description": "Machine-readable code, e.g. validation_failed.", "example": "validation_failed"})
    message = fields.String(metadata={
        "description": "What went wrong, for people.", "example": "The request body or query is invalid; see fields."})
    fields = fields.Dict(metadata={
        "description": "Only on validation errors (422): the messages by field (and by index in a batch).",
        "example": {"log_level": ["Must be one of: DEBUG, INFO, WARNING, ERROR, CRITICAL."]}})
