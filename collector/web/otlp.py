"""POST /v1/logs: OTLP/HTTP logs, as the OpenTelemetry protocol specifies them.

The body is an ExportLogsServiceRequest, binary protobuf (application/x-protobuf) or
OTLP/JSON (application/json); the answer is an ExportLogsServiceResponse in the same
encoding, with `partial_success` when some records were rejected (the rest are
queued). Records become our logs in collector.web.otlp_mapping and are queued by the
same code as /api/logs/batch (collector.web.ingest.enqueue): keys and their scopes,
rate limits, backpressure and Idempotency-Key apply alike.

Failures are answered as the spec asks, with a google.rpc.Status in the request's
encoding (JSON for a content type we do not take), whatever raised them: our own
checks here, the app's key checks, Flask's 413. The app's central handlers still make
those answers (status, Retry-After, rejection counts); `errors_as_status` only
re-encodes the body. docs/otlp.md has the details.
"""

from __future__ import annotations

import hashlib

import orjson
from flask import Response, request
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.web import ingest, otlp_mapping
from collector.web.errors import ApiError
from collector.web.extensions import settings

ENDPOINT = "api.otlp_logs"
PROTOBUF, JSON = "application/x-protobuf", "application/json"

# HTTP status -> google.rpc.Code. The spec says clients must not act on Status.code (they
# go by the HTTP status); it is there for whoever reads the exporter's logs.
_RPC_CODES = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED,
              404: code_pb2.NOT_FOUND, 413: code_pb2.INVALID_ARGUMENT, 415: code_pb2.INVALID_ARGUMENT,
              422: code_pb2.INVALID_ARGUMENT, 429: code_pb2.RESOURCE_EXHAUSTED, 500: code_pb2.INTERNAL,
              503: code_pb2.UNAVAILABLE}
_ERROR_DOMAIN = "device-log-collector"


def otlp_logs():
    encoding = _encoding()
    s = settings()
    key = ingest.idempotency_key()
    export = _decode(request.get_data(cache=False), encoding)  # get_data: 413 past MAX_BODY_BYTES
    records = otlp_mapping.count_records(export)
    if records > s.max_batch_logs:
        raise ApiError(400, "too_many_records",
                       f"{records} log records in one request; at most {s.max_batch_logs} "
                       "(set the exporter's batch size, e.g. max_export_batch_size, to that or less).")
    mapped = otlp_mapping.map_request(export, s)
    if mapped.rejected and not mapped.logs:
        # Nothing acceptable: a permanent failure, which the spec answers with 400 (not a
        # partial success of nothing), so the exporter logs it as an error.
        raise ApiError(400, "invalid_log_records", mapped.summary())
    headers: dict[str, str] = {}
    if mapped.logs:
        # The fingerprint (a second serialization) only when a key asks for one.
        fingerprint = {"otlp": _fingerprint(export)} if key is not None else None
        _, _, headers = ingest.enqueue(mapped.logs, fingerprint, key)
    answer = ExportLogsServiceResponse()
    if mapped.rejected:
        answer.partial_success.rejected_log_records = len(mapped.rejected)
        answer.partial_success.error_message = mapped.summary()
    return Response(_encode(answer, encoding), 200, headers, content_type=encoding)


def _encoding() -> str:
    if request.mimetype in (PROTOBUF, JSON):
        return request.mimetype
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type must be {PROTOBUF} or {JSON} (OTLP/HTTP), not {request.mimetype or 'missing'!r}.")


def _decode(raw: bytes, encoding: str) -> ExportLogsServiceRequest:
    """The request message; a 400 for a body that is not one."""
    export = ExportLogsServiceRequest()
    if encoding == PROTOBUF:
        try:
            export.ParseFromString(raw)  # an empty body is a valid, empty request
        except DecodeError as exc:
            raise ApiError(400, "malformed_protobuf",
                           f"The body is not an OTLP ExportLogsServiceRequest in protobuf: {exc}.") from None
        return export
    try:
        body = orjson.loads(raw)
        ids = _take_hex_ids(body)
        # Unknown fields are ignored, as the spec requires of OTLP/JSON receivers.
        json_format.ParseDict(body, export, ignore_unknown_fields=True)
    except (orjson.JSONDecodeError, json_format.ParseError, ValueError, TypeError) as exc:
        raise ApiError(400, "malformed_json",
                       f"The body is not an OTLP/JSON ExportLogsServiceRequest: {exc}"[:500]) from None
    for (r, s, n), (trace_id, span_id) in ids.items():
        record = export.resource_logs[r].scope_logs[s].log_records[n]
        record.trace_id, record.span_id = trace_id, span_id
    return export


def _take_hex_ids(body: object) -> dict[tuple[int, int, int], tuple[bytes, bytes]]:
    """Removes traceId/spanId from each record of an OTLP/JSON body and returns them decoded.

    OTLP/JSON writes them in hex, where proto3's JSON mapping (json_format) expects base64:
    it would read a 32-digit hex trace id as 24 bytes of base64 without complaint. So they
    are taken out before json_format sees the body and set on the parsed message after.
    Anything not shaped like a request is left alone for json_format to refuse."""
    ids = {}
    for r, resource_logs in enumerate(_list(body, "resourceLogs", "resource_logs")):
        for s, scope_logs in enumerate(_list(resource_logs, "scopeLogs", "scope_logs")):
            for n, record in enumerate(_list(scope_logs, "logRecords", "log_records")):
                if isinstance(record, dict):
                    trace_id = _hex(record, "traceId", "trace_id")
                    span_id = _hex(record, "spanId", "span_id")
                    if trace_id or span_id:
                        ids[r, s, n] = (trace_id, span_id)
    return ids


def _list(parent: object, *names: str) -> list:
    if isinstance(parent, dict):
        for name in names:
            if isinstance(parent.get(name), list):
                return parent[name]
    return []


def _hex(record: dict, *names: str) -> bytes:
    """The id under either spelling of its name (both taken out), decoded from hex."""
    found = [(name, value) for name in names if (value := record.pop(name, None)) is not None]
    if not found:
        return b""
    name, value = found[0]
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a hex string, not {type(value).__name__}")
    try:
        return bytes.fromhex(value)  # either case, as the spec allows
    except ValueError:
        raise ValueError(f"{name} {value[:64]!r} is not hex") from None


def _fingerprint(export: ExportLogsServiceRequest) -> str:
    """For Idempotency-Key: the same records give the same fingerprint whether they came
    as protobuf or JSON, and however the JSON was spelled."""
    return hashlib.blake2b(export.SerializeToString(deterministic=True), digest_size=16).hexdigest()


def _encode(message, encoding: str) -> bytes:
    if encoding == PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None).encode()


def errors_as_status(response: Response) -> Response:
    """After each request of the API blueprint: an error answer of /v1/logs, made by the
    central handlers in our JSON shape ({error, message, fields}), gets a google.rpc.Status
    body instead, in the request's encoding; status, headers (Retry-After, WWW-Authenticate,
    RateLimit) and the rejection counts stay as they were."""
    if request.endpoint != ENDPOINT or response.status_code < 400 or response.mimetype != JSON:
        return response
    body = response.get_json(silent=True)
    if not isinstance(body, dict) or "error" not in body:
        return response
    message = body.get("message", "")
    if body.get("fields"):
        message += " " + orjson.dumps(body["fields"]).decode()
    status = status_pb2.Status(code=_RPC_CODES.get(response.status_code, code_pb2.UNKNOWN), message=message)
    # The machine-readable error code, as Google's APIs carry theirs.
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=body["error"].upper(), domain=_ERROR_DOMAIN))
    encoding = PROTOBUF if request.mimetype == PROTOBUF else JSON
    response.set_data(_encode(status, encoding))
    response.content_type = encoding
    return response
