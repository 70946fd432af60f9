"""What an OTLP log record becomes: one of our logs, or the reason it is refused.

Each record is turned into the dict a device would have sent to /api/logs/batch and
loaded with the very schema that endpoint uses (collector.web.schemas.log_schema), so
every rule of our own endpoints holds for OTLP too: the device-id rule, message length,
log_data's size, depth and integer range, NUL characters, the timestamp range. A record
that breaks one is rejected alone (the exporter hears of it in partial_success); the
others are queued. docs/otlp.md has the mapping as a table.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from dataclasses import dataclass, field

import orjson
from marshmallow import ValidationError
from marshmallow.fields import Field
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector.core.settings import Settings
from collector.web.logdata import AmbiguousNumber
from collector.web.schemas import log_schema

# severity_number 1-24 in ranges of four (TRACE, DEBUG, INFO, WARN, ERROR, FATAL), in order.
_LEVEL_OF_RANGE = ("DEBUG", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# severity_text, when severity_number is unspecified: our level names and OTel's short names.
_LEVEL_OF_NAME = {"TRACE": "DEBUG", "DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARNING", "WARNING": "WARNING",
                  "ERROR": "ERROR", "FATAL": "CRITICAL", "CRITICAL": "CRITICAL"}
_OTEL_SHORT_NAMES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")  # these also come as TRACE2..FATAL4
# How an exporter names the parts of a rejected record, instead of our schema's field names.
_FIELD_NAMES = {"message": "body", "log_data": "attributes/resource/scope (log_data)",
                "timestamp": "time_unix_nano", "log_level": "severity"}
REASONS_SHOWN = 3  # reasons quoted in partial_success.error_message; the count covers all


@dataclass
class Mapped:
    """The logs to queue (validated, log_schema's output) and the refused records' reasons."""

    logs: list[dict] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """partial_success.error_message: the count, then the first reasons."""
        total = len(self.logs) + len(self.rejected)
        shown = "; ".join(self.rejected[:REASONS_SHOWN])
        more = f" (and {len(self.rejected) - REASONS_SHOWN} more)" if len(self.rejected) > REASONS_SHOWN else ""
        return f"{len(self.rejected)} of {total} log records rejected: {shown}{more}"


def count_records(export: ExportLogsServiceRequest) -> int:
    return sum(len(scope.log_records) for res in export.resource_logs for scope in res.scope_logs)


def map_request(export: ExportLogsServiceRequest, settings: Settings) -> Mapped:
    """Every record of the request, in order, mapped and validated by log_schema's own fields.

    The device id is checked once per resource (its records all have the same one); level
    and time are valid by construction (our level names; nanoseconds of an unsigned 64-bit
    count are instants of 1970-2554), so each record's load checks its message and
    log_data only. What this mapping makes holds only what orjson can read: valid Unicode
    (protobuf strings are UTF-8, and OTLP/JSON was read by orjson), 64-bit integers, finite
    floats (the others become strings). So the fields for orjson's output apply, whose walk
    of log_data runs only when a scan of its encoded bytes asks for it; a double of 2**64
    or more, which they cannot tell from a lost integer, takes the exact ones.
    """
    limits = settings.max_message_chars, settings.max_log_data_bytes
    # The fields themselves, without a Schema's per-load bookkeeping (it would cost more
    # than the protocol's own work): their deserialize runs their validators.
    checks = log_schema(*limits, True).fields
    exact_log_data = log_schema(*limits, False).fields["log_data"]
    id_attributes = settings.otlp_device_id_attributes.split(",")
    mapped = Mapped()
    for r, resource_logs in enumerate(export.resource_logs):
        # What a resource and a scope give is the same for each of their records: worked out once.
        device, device_source = device_of(resource_logs.resource.attributes, id_attributes)
        if device is not None:
            try:
                _load(checks["device_id"], "device_id", device)
            except ValidationError as exc:
                device, device_source = None, _explain(exc.messages, device_source)
        resource = attributes(resource_logs.resource.attributes)
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            scope = _scope(scope_logs.scope)
            for n, record in enumerate(scope_logs.log_records):
                if device is None:
                    mapped.rejected.append(f"{_where(r, s, n)}: {device_source}")
                    continue
                try:
                    candidate = to_candidate(record, device, resource, scope)
                    message = _load(checks["message"], "message", candidate["message"])
                    log_data = candidate.get("log_data")
                    try:
                        log_data = _load(checks["log_data"], "log_data", log_data)
                    except AmbiguousNumber:
                        log_data = _load(exact_log_data, "log_data", log_data)
                except _Refused as refused:
                    mapped.rejected.append(f"{_where(r, s, n)}: {refused}")
                except ValidationError as exc:
                    mapped.rejected.append(f"{_where(r, s, n)}: {_explain(exc.messages, device_source)}")
                else:
                    mapped.logs.append({"device_id": device, "log_level": candidate["log_level"],
                                        "message": message, "log_data": log_data,
                                        "timestamp": candidate.get("timestamp")})
    return mapped


def _load(field: Field, name: str, value):
    """One field of log_schema, deserialized and validated; its errors under its name."""
    try:
        return field.deserialize(value)
    except ValidationError as exc:
        raise ValidationError({name: exc.messages}) from None


def _where(r: int, s: int, n: int) -> str:
    return f"resource_logs[{r}].scope_logs[{s}].log_records[{n}]"


class _Refused(ValueError):
    """A record that cannot become a log before the schema even sees it (no body)."""


def device_of(resource_attributes, names: list[str]) -> tuple[str | None, str]:
    """(device id, where it came from), or (None, why there is none). The first of `names`
    present decides: an id that breaks the device-id rule is refused by the schema, it does
    not fall through to the next attribute (that would file the log under another device)."""
    values = {kv.key: kv.value for kv in resource_attributes}
    for name in names:
        value = values.get(name)
        if value is None:
            continue
        kind = value.WhichOneof("value")
        if kind == "string_value":
            return value.string_value, f"resource attribute {name!r}"
        if kind == "int_value":
            return str(value.int_value), f"resource attribute {name!r}"
        return None, f"resource attribute {name!r} is a {kind or 'empty value'}, not a string: no device id"
    return None, f"the resource has none of the attributes naming a device ({', '.join(names)})"


def to_candidate(record: LogRecord, device: str, resource: dict, scope: dict) -> dict:
    """The dict a device would POST to /api/logs/batch for this record (not yet validated)."""
    number = record.severity_number
    candidate = {"device_id": device, "log_level": level_of(number, record.severity_text),
                 "message": message_of(record.body)}
    log_data = {}
    if resource:
        log_data["resource"] = resource
    if scope:
        log_data["scope"] = scope
    # Each field read once: every read of a protobuf field makes a Python object.
    if pairs := record.attributes:
        log_data["attributes"] = attributes(pairs)
    # The original severity, since our five levels cannot hold all of OTel's 24.
    if number:
        log_data["severity_number"] = number
    if text := record.severity_text:
        log_data["severity_text"] = text
    if event := record.event_name:
        log_data["event_name"] = event
    if trace_id := record.trace_id:
        log_data["trace_id"] = trace_id.hex()
    if span_id := record.span_id:
        log_data["span_id"] = span_id.hex()
    if flags := record.flags:
        log_data["flags"] = flags
    if log_data:
        candidate["log_data"] = log_data
    nanos = record.time_unix_nano or record.observed_time_unix_nano
    if nanos:  # neither: the receive time, as for a device that sends no timestamp
        candidate["timestamp"] = timestamp_of(nanos)
    return candidate


def level_of(number: int, text: str) -> str:
    """OTel's severity_number in ranges of four to our levels; when it is unspecified (0, or
    outside 1-24), severity_text if it names a level (ours or OTel's short names), else INFO."""
    if 1 <= number <= 24:
        return _LEVEL_OF_RANGE[(number - 1) // 4]
    name = text.strip().upper()
    if len(name) > 1 and name[-1] in "234" and name[:-1] in _OTEL_SHORT_NAMES:  # e.g. WARN2
        name = name[:-1]
    return _LEVEL_OF_NAME.get(name, "INFO")


def message_of(body: AnyValue) -> str:
    """A string body as it is; any other value as its JSON text. No body: no message."""
    kind = body.WhichOneof("value")
    if kind is None:
        raise _Refused("the record has no body (our logs need a message of at least one character)")
    if kind == "string_value":
        return body.string_value
    return orjson.dumps(plain(body)).decode()


def timestamp_of(nanos: int) -> dt.datetime:
    """Nanoseconds since the epoch as an instant in UTC, truncated to the microsecond (what
    is stored); the schema takes it as it is, with no ISO text to write and parse again."""
    seconds, rest = divmod(nanos, 1_000_000_000)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(microsecond=rest // 1000)


def attributes(key_values: list[KeyValue]) -> dict:
    """OTel attributes (a list of key/value pairs) as a JSON object; a repeated key: the last wins."""
    return {kv.key: plain(kv.value) for kv in key_values}


def plain(value: AnyValue):
    """An AnyValue as plain JSON: kvlist -> object, array -> list, bytes -> base64 text,
    int -> int, double -> float (a non-finite one as proto3 JSON writes it: "NaN",
    "Infinity", "-Infinity", since JSON has no such numbers), an empty value -> null."""
    kind = value.WhichOneof("value")
    convert = _PLAIN.get(kind)
    return None if convert is None else convert(value)


def _double(value: AnyValue):
    number = value.double_value
    if math.isfinite(number):
        return number
    return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")


# One lookup per value rather than a chain of comparisons (attributes are the bulk of a record).
_PLAIN = {
    "string_value": lambda value: value.string_value,
    "int_value": lambda value: value.int_value,
    "bool_value": lambda value: value.bool_value,
    "double_value": _double,
    "kvlist_value": lambda value: attributes(value.kvlist_value.values),
    "array_value": lambda value: [plain(item) for item in value.array_value.values],
    "bytes_value": lambda value: base64.b64encode(value.bytes_value).decode(),
}


def _scope(scope) -> dict:
    out = {}
    if scope.name:
        out["name"] = scope.name
    if scope.version:
        out["version"] = scope.version
    if scope.attributes:
        out["attributes"] = attributes(scope.attributes)
    return out


def _explain(messages: dict, device_source: str) -> str:
    """The schema's complaints in OTLP's words: `body: Length must be between 1 and 10000.`"""
    parts = []
    for name, problems in messages.items():
        label = f"device id ({device_source})" if name == "device_id" else _FIELD_NAMES.get(name, name)
        text = " ".join(problems) if isinstance(problems, list) else str(problems)
        parts.append(f"{label}: {text}")
    return "; ".join(parts)
