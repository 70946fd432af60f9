"""The OpenAPI document (/openapi.json), generated from the marshmallow schemas, and
a Swagger UI (/docs) served from the swagger-ui-bundle package, so it works offline.

Swagger UI's "Try it out" sends what the document shows: a request body's schema-level
example (else one assembled from its fields' examples), each parameter's example (else its
default), and the key entered with Authorize as `Authorization: Bearer <key>`. So every
example here is a request that succeeds as it is; tests/test_openapi.py sends each JSON
operation exactly so, from the served document.
"""

from __future__ import annotations

import datetime as dt
import json
from functools import lru_cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from collector.core.settings import Settings
from collector.store.search import LogFilter, encode_cursor
from collector.web import schemas, search_schemas

docs = Blueprint("docs", __name__)

SWAGGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Device log collector API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


DEVICE_EXAMPLE = "device_001"

# The bodies "Try it out" sends. Without seq/boot_id: a second try of a log with the same
# (device_id, boot_id, seq) would be queued but never stored (a duplicate), which surprises
# whoever tries; their fields carry an example pair of their own.
LOG_EXAMPLE = {"device_id": DEVICE_EXAMPLE, "log_level": "WARNING", "message": "Temperature above threshold",
               "log_data": {"temperature_c": 81.5, "threshold_c": 80, "sensor": "cpu"},
               "timestamp": "2024-05-01T12:00:00.123456Z"}
BATCH_EXAMPLE = {"logs": [LOG_EXAMPLE, {"device_id": DEVICE_EXAMPLE, "log_level": "INFO",
                                        "message": "Fan speed back to normal", "log_data": {"fan_rpm": 2400}}]}
# One OTLP/JSON record, for device_001 (resource attribute device.id).
OTLP_JSON_EXAMPLE = {"resourceLogs": [{
    "resource": {"attributes": [{"key": "device.id", "value": {"stringValue": DEVICE_EXAMPLE}}]},
    "scopeLogs": [{"scope": {"name": "firmware", "version": "1.4.2"}, "logRecords": [{
        "timeUnixNano": "1714564800123456000", "severityNumber": 13, "severityText": "WARN",
        "body": {"stringValue": "Temperature above threshold"},
        "attributes": [{"key": "temperature_c", "value": {"doubleValue": 81.5}}]}]}]}]}

# status -> (when, an example answer): every error is an Error ({error, message, fields?}).
_ERRORS = {
    400: ("Malformed JSON, an empty body, or a corrupt gzip/zstd body",
          {"error": "malformed_json", "message": "The request body is not valid JSON: Expecting value: "
                                                 "line 1 column 1 (char 0)."}),
    401: ("No key, or an unknown or revoked one (WWW-Authenticate: Bearer)",
          {"error": "unauthorized", "message": "This endpoint needs a key: send Authorization: Bearer <key>."}),
    403: ("The key's role or scope does not cover this",
          {"error": "forbidden", "message": "Device 'other_7' is outside this key's scope (device_*)."}),
    413: ("Body over MAX_BODY_BYTES, as sent or once inflated",
          {"error": "request_entity_too_large",
           "message": "The request body exceeds 1048576 bytes once decompressed."}),
    415: ("Not application/json, or a Content-Encoding other than gzip or zstd",
          {"error": "unsupported_media_type", "message": "Content-Type must be application/json, not 'text/plain'."}),
    422: ("Validation failed; `fields` names each bad field (and, in a batch, each bad entry's index)",
          {"error": "validation_failed", "message": "The request body or query is invalid; see fields.",
           "fields": {"log_level": ["Must be one of: DEBUG, INFO, WARNING, ERROR, CRITICAL."]}}),
    429: ("A device over its rate limit (logs, not requests); honour Retry-After",
          {"error": "rate_limited",
           "message": "logs[0]: device 'device_001' is over its rate limit; retry later."}),
    500: ("An unexpected error; it has been logged",
          {"error": "internal_error", "message": "An unexpected error occurred; it has been logged."}),
    503: ("Redis or PostgreSQL unavailable, or overloaded; honour Retry-After",
          {"error": "redis_unavailable", "message": "Redis is unavailable (ConnectionError); retry later"}),
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


# A query endpoint's 422 is about its path or query string.
_QUERY_422 = {"error": "validation_failed", "message": "The device id in the path is invalid; see fields.",
              "fields": {"device_id": ["Must be 1-100 characters: letters, digits and . _ : @ -."]}}


def _error(status: int, example: dict | None = None) -> dict:
    text, default = _ERRORS[status]
    return {"description": text, "content": {"application/json": {"schema": _ERROR_REF,
                                                                  "example": example or default}}}


def _errors(*statuses: int, **examples: dict) -> dict:
    """Error answers for these statuses; e422={...} replaces that status's example answer."""
    return {str(s): _error(s, examples.get(f"e{s}")) for s in statuses}


def _ok(schema: str | dict, description: str = "OK") -> dict:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


@lru_cache(maxsize=4)
def build_spec(settings: Settings) -> dict:
    spec = APISpec(title="Device log collector", version="1.0.0", openapi_version="3.0.3",
                   plugins=[MarshmallowPlugin()],
                   info={"description": "Devices POST logs; they are queued in a Redis Stream at once and stored "
                                        "in PostgreSQL in batches. Errors are JSON: {error, message, fields?}."})
    # The instances, not their names, in the operations below: each set of limits (and
    # ingest's orjson variant) makes a class of its own named LogIn, so a name would be ambiguous.
    log_in = schemas.log_schema(settings.max_message_chars, settings.max_log_data_bytes)
    batch_in = schemas.batch_schema(settings.max_batch_logs, settings.max_message_chars, settings.max_log_data_bytes)
    # Schema-level examples where Swagger UI builds a body (or shows an answer) from them.
    component = {
        "LogIn": {"example": LOG_EXAMPLE, "description": "One log. The example leaves out seq and boot_id, "
                                                          "which go together (see each)."},
        "BatchIn": {"example": BATCH_EXAMPLE},
        "Error": {"required": ["error", "message"], "example": _ERRORS[422][1],
                  "description": "Every error's shape (nginx's and Gunicorn's own included; /v1/logs answers "
                                 "a google.rpc.Status instead)."},
    }
    for name, schema in {
        "LogIn": log_in, "BatchIn": batch_in, "Queued": schemas.QueuedOut, "QueuedBatch": schemas.QueuedBatchOut,
        "LogsPage": schemas.LogsPageOut, "Stats": schemas.StatsOut, "Health": schemas.HealthOut,
        "DeadLettersPage": schemas.DeadLettersPageOut, "Error": schemas.ErrorOut,
        "SequenceAudit": schemas.SequenceAuditOut, "DevicesPage": search_schemas.DevicesPageOut,
    }.items():
        spec.components.schema(name, component.get(name), schema=schema)

    def body(schema) -> dict:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    device_id = {"name": "device_id", "in": "path", "required": True, "example": DEVICE_EXAMPLE,
                 "description": schemas.DEVICE_ID_DESCRIPTION,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 100,
                            "pattern": schemas.DEVICE_ID_DOC_PATTERN}}
    default_limit = min(100, settings.max_query_limit)  # as query_args_schema and dead_letter_args_schema

    def limit(what: str) -> dict:
        return {"name": "limit", "in": "query", "required": False, "example": min(10, settings.max_query_limit),
                "description": f"How many {what} at most (default {default_limit}).",
                "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_query_limit,
                           "default": default_limit}}

    idempotency_key = {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
        "description": f"Makes the request idempotent: its answer is remembered for {settings.idempotency_ttl} s; "
                       "a repeat with the same logs gets it again (Idempotent-Replayed: true) and queues nothing; "
                       "the same key with other logs is a 422 idempotency_key_reused."}

    def queued(schema: str) -> dict:
        ok = _ok(schema)
        ok["200"]["headers"] = {"Idempotent-Replayed": {
            "description": "true when this is the remembered answer to an earlier request with the same key",
            "schema": {"type": "string", "enum": ["true"]}}}
        return ok

    spec.path("/api/log", operations={"post": {
        "summary": "Queue one log", "requestBody": body(log_in), "parameters": [idempotency_key],
        "responses": {**queued("Queued"), **_errors(400, 413, 415, 422, 503)}}})
    spec.path("/api/logs/batch", operations={"post": {
        "summary": f"Queue 1 to {settings.max_batch_logs} logs; one invalid entry rejects the batch",
        "requestBody": body(batch_in), "parameters": [idempotency_key],
        "responses": {**queued("QueuedBatch"), **_errors(400, 413, 415, 422, 503)}}})
    _otlp_logs(spec, settings, idempotency_key)
    spec.path("/api/devices/{device_id}/sequence", operations={"get": {
        "summary": "Gap audit: per boot_id, the seq numbers received and the ranges missing",
        "parameters": [device_id],
        "responses": {**_ok("SequenceAudit"), **_errors(422, 503, e422=_QUERY_422)}}})
    filters = _filter_parameters(settings)
    spec.path("/api/logs/{device_id}", operations={"get": {
        "summary": "A device's logs, newest first, filtered and paged by cursor",
        "description": "Without filters or cursor the first page is cached until the device's next log is stored.",
        "parameters": [device_id, limit("logs"), *filters(fleet=False)],
        "responses": {**_ok("LogsPage"), **_errors(422, 503, e422=_QUERY_422)}}})
    spec.path("/api/logs", operations={"get": {
        "summary": "Logs of the fleet (or of the devices named), filtered and paged by cursor",
        "parameters": [limit("logs"), *filters(fleet=True)],
        "responses": {**_ok("LogsPage"), **_errors(422, 503, e422=_QUERY_422)}}})
    spec.path("/api/devices", operations={"get": {
        "summary": "Devices with stored logs: last seen and logs per level, most recently seen first",
        "parameters": [{**limit("devices"), "schema": {"type": "integer", "minimum": 1,
                                                       "maximum": settings.max_query_limit,
                                                       "default": settings.max_query_limit}},
                       filters(fleet=True)[-1]],
        "responses": {**_ok("DevicesPage"), **_errors(422, 503, e422=_QUERY_422)}}})
    stream = {"200": {"description": "Server-Sent Events: `id:` a position to resume from (Last-Event-ID), "
                                     "`data:` one log as JSON (a LogsPage entry); comments as heartbeats",
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
    resume = [{"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
               "description": "The id of the last event received: the tail resumes right after it, missing "
                              "nothing stored meanwhile."},
              {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"},
               "example": "0-0", "description": "The same as a parameter (for curl)."}]
    spec.path("/api/logs/{device_id}/tail", operations={"get": {
        "summary": "A live tail of a device's logs as they are stored (Server-Sent Events)",
        "parameters": [device_id, *resume, *filters(fleet=False, tail=True)],
        "responses": {**stream, **_errors(422, 429, 503, e422=_QUERY_422)}}})
    spec.path("/api/logs/tail", operations={"get": {
        "summary": "A live tail of the fleet's logs (or the devices named) as they are stored (Server-Sent Events)",
        "parameters": [*resume, *filters(fleet=True, tail=True)],
        "responses": {**stream, **_errors(422, 429, 503, e422=_QUERY_422)}}})
    html = {"200": {"description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}
    spec.path("/console", operations={"get": {"summary": "The console: devices, logs, filters and live tail",
                                              "responses": html}})
    spec.path("/console/assets/{name}", operations={"get": {
        "summary": "The console's scripts and styles", "responses": {"200": {"description": "The file"}},
        "parameters": [{"name": "name", "in": "path", "required": True, "example": "console.js",
                        "schema": {"type": "string"}}]}})
    spec.path("/api/stats", operations={"get": {
        "summary": "Totals, levels, recent devices and the pipeline's figures",
        "responses": {**_ok("Stats"), **_errors(503)}}})
    spec.path("/api/dead-letters", operations={"get": {
        "summary": "Entries that could not be stored, with the reason",
        "parameters": [limit("dead letters"),
                       {"name": "after_id", "in": "query", "required": False, "example": 0,
                        "description": "Only dead letters with a greater id: the last id of the previous page "
                                       "(default 0, the first page).",
                        "schema": {"type": "integer", "minimum": 0, "default": 0}}],
        "responses": {**_ok("DeadLettersPage"), **_errors(422, 503, e422={
            "error": "validation_failed", "message": "The request body or query is invalid; see fields.",
            "fields": {"limit": ["Must be greater than or equal to 1 and less than or equal to "
                                 f"{settings.max_query_limit}."]}})}}})
    spec.path("/health", operations={"get": {
        "summary": "Redis and PostgreSQL checks; 503 names the failed one",
        "responses": {**_ok("Health"), "503": {
            "description": "Unhealthy: a Health body (not an Error), whose checks name the failed server",
            "content": {"application/json": {"schema": "Health", "example": {
                "status": "unhealthy", "oldest_unstored_age_seconds": None, "instance": "api1",
                "checks": {"redis": True, "postgres": False}, "timestamp": "2024-05-01T12:00:00.123456+00:00",
                "seconds": 1.0012}}}}}}})
    spec.path("/metrics", operations={"get": {
        "summary": "Prometheus metrics (text, not JSON)", "responses": {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}})
    spec.path("/openapi.json", operations={"get": {"summary": "This document", "responses": {"200": {
        "description": "OpenAPI 3.0.3", "content": {"application/json": {"schema": {"type": "object"}}}}}}})
    spec.path("/docs", operations={"get": {"summary": "Swagger UI for this document", "responses": {"200": {
        "description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}})
    live = {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["up", "down"]},
        "checks": {"type": "object", "additionalProperties": {"type": "boolean"}}}}
    spec.path("/livez", operations={"get": {
        "summary": "Can this instance take logs? (Redis only; PostgreSQL may be down)",
        "responses": {**_ok({**live, "example": {"status": "up", "checks": {"redis": True}}}, "Up"),
                      "503": {"description": "Redis unreachable: a body like 200's (not an Error)",
                              "content": {"application/json": {"schema": live, "example": {
                                  "status": "down", "checks": {"redis": False}}}}}}}})
    landing = _ok({"type": "object", "properties": {
        "pipeline": {"type": "object", "nullable": True, "description": "Only for reader and admin keys: "
                     "accepted, persisted, backlog and dead_lettered, as /api/stats counts them."}},
        "additionalProperties": {"type": "string"}, "example": {
            "service": "device-log-collector", "docs": "/docs", "openapi": "/openapi.json", "health": "/health",
            "auth": "Authorization: Bearer <key> (python -m collector.keys create ...)"}},
        "Links (JSON for Accept: application/json, */* or none; an HTML page for browsers)")
    landing["200"]["content"]["text/html"] = {"schema": {"type": "string"}}
    spec.path("/", operations={"get": {"summary": "Where to go from here", "responses": landing}})
    _secure(spec, settings)
    _may_fail(spec)
    return spec.to_dict()


FILTER_EXAMPLES = {"level": "WARNING,ERROR", "min_level": "DEBUG", "since": "2000-01-01T00:00:00Z",
                   "until": "2100-01-01T00:00:00Z", "q": "temperature", "data": '{"sensor":"temp-1"}',
                   "order": "desc"}


def _filter_parameters(settings: Settings):
    """The filters' query parameters, from query_args_schema, each with an example that Swagger
    UI's Try it out can send as it is (the cursor continues the query the examples make)."""
    def parameters(fleet: bool, tail: bool = False) -> list[dict]:
        schema = search_schemas.query_args_schema(settings.max_query_limit, fleet=fleet)
        examples = {**FILTER_EXAMPLES, "device_id": [DEVICE_EXAMPLE], "device_prefix": DEVICE_EXAMPLE[:7]}
        filt = LogFilter(device_ids=tuple(examples["device_id"]) if fleet else (DEVICE_EXAMPLE,),
                         device_prefix=examples["device_prefix"] if fleet else None,
                         levels=tuple(examples["level"].split(",")), min_level=examples["min_level"],
                         since=dt.datetime.fromisoformat(examples["since"]),
                         until=dt.datetime.fromisoformat(examples["until"]), q=examples["q"],
                         data=json.loads(examples["data"]))
        examples["cursor"] = encode_cursor((dt.datetime(9999, 1, 1, tzinfo=dt.UTC), 2**62),
                                                 filt.fingerprint(examples["order"]))
        found = []
        for name, field in schema.fields.items():
            if name == "limit" or (tail and name in ("order", "cursor")):
                continue
            array = name == "device_id"
            found.append({"name": name, "in": "query", "required": False, "example": examples[name],
                          "description": field.metadata["description"],
                          "schema": {"type": "array", "items": {"type": "string"}} if array else
                          {"type": "string", **({"enum": ["desc", "asc"], "default": "desc"}
                                                if name == "order" else {})}})
        return found

    return parameters


def _otlp_logs(spec: APISpec, settings: Settings, idempotency_key: dict) -> None:
    """POST /v1/logs: binary protobuf, which Swagger UI cannot build, so that encoding is
    described here and sent by OpenTelemetry exporters (docs/otlp.md), not tried from /docs;
    OTLP/JSON, listed first so that it is what "Try it out" offers, has an example that works."""
    status = {"type": "object", "description": "google.rpc.Status (in OTLP/JSON; protobuf alike)", "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object",
                                               "description": "google.rpc.ErrorInfo; reason: our error code"}}}}
    both = {"application/json": {"schema": status},
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}
    failures = {400: "Undecodable body, too many records, or no record acceptable",
                413: "Body over MAX_BODY_BYTES", 415: "Neither application/x-protobuf nor application/json",
                422: "Invalid Idempotency-Key, or one reused with other records",
                500: "An unexpected error; it has been logged",
                503: "Redis unavailable or overloaded; honour Retry-After"}
    spec.path("/v1/logs", operations={"post": {
        "summary": "OTLP/HTTP logs export (OpenTelemetry); 'Try it out' only as OTLP/JSON, not protobuf",
        "description": (
            "Binary protobuf (what OpenTelemetry exporters send) cannot be built on this page: choose "
            "application/json to try it (the example is one record for device_001). "
            "An opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest, as binary protobuf "
            "(application/x-protobuf) or OTLP/JSON (application/json: lowerCamelCase names, traceId/spanId "
            "in hex, enums as integers). Point an exporter's logs endpoint here. Each record becomes a log "
            "(docs/otlp.md: the device id comes from the resource attributes "
            f"{settings.otlp_device_id_attributes}) validated as POST /api/logs/batch validates, "
            f"at most {settings.max_batch_logs} records per request. The answer is an "
            "ExportLogsServiceResponse in the request's encoding; records that were rejected are counted "
            "in partial_success and the rest queued. Errors are a google.rpc.Status in the request's encoding."),
        "parameters": [idempotency_key],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"type": "object", "description": "OTLP/JSON ExportLogsServiceRequest",
                                            "properties": {"resourceLogs": {"type": "array",
                                                                            "items": {"type": "object"}}},
                                            "example": OTLP_JSON_EXAMPLE}},
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary",
                                                  "description": "Not tryable here: send it with an exporter"}}}},
        "responses": {
            "200": {"description": "ExportLogsServiceResponse; partialSuccess {rejectedLogRecords, errorMessage} "
                                   "when some records were rejected",
                    "content": {"application/json": {"schema": {"type": "object", "properties": {
                                    "partialSuccess": {"type": "object", "properties": {
                                        "rejectedLogRecords": {"type": "string"},
                                        "errorMessage": {"type": "string"}}}}, "example": {}}},
                                "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}}}},
            **{str(code): {"description": text, "content": both} for code, text in failures.items()}}}})


# Which roles each operation admits (collector.web.auth.ACCESS is the one enforced).
_ROLES = {
    ("/api/log", "post"): "device (in scope) or admin",
    ("/api/logs/batch", "post"): "device (every log in scope) or admin",
    ("/v1/logs", "post"): "device (every record's device in scope) or admin",
    ("/api/logs/{device_id}", "get"): "device (in scope), reader or admin",
    ("/api/logs", "get"): "device (the devices named, in scope), reader or admin",
    ("/api/devices", "get"): "device (lists its own), reader or admin",
    ("/api/logs/{device_id}/tail", "get"): "device (in scope), reader or admin; also as ?access_token=",
    ("/api/logs/tail", "get"): "device (the devices named, in scope), reader or admin; also as ?access_token=",
    ("/api/devices/{device_id}/sequence", "get"): "device (in scope), reader or admin",
    ("/api/stats", "get"): "reader or admin",
    ("/api/dead-letters", "get"): "admin",
    ("/metrics", "get"): "admin, or the METRICS_TOKEN",
}


def _secure(spec: APISpec, settings: Settings) -> None:
    """Swagger UI's Authorize takes a key for "bearer" and sends it as `Authorization: Bearer <key>`
    (or for "apiKey" as X-API-Key) with every operation that lists the scheme."""
    spec.components.security_scheme("bearer", {
        "type": "http", "scheme": "bearer", "bearerFormat": "dlc.<key id>.<secret>",
        "description": "A key from `python -m collector.keys create` (under `make run`, the demo keys in "
                       "var/demo-keys.env): enter it with Authorize, without 'Bearer '; it is sent as "
                       "`Authorization: Bearer <key>`. An admin key may try every operation."})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                               "description": "The same key in X-API-Key instead."})
    if not settings.auth_enabled:
        return
    for (path, method), roles in _ROLES.items():
        operation = spec._paths[path][method]
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
        operation["description"] = f"Keys: {roles}." + (f" {operation['description']}"
                                                        if operation.get("description") else "")
        operation["responses"].update(_errors(401, 403))
    for path in ("/api/log", "/api/logs/batch", "/v1/logs"):
        spec._paths[path]["post"]["responses"]["429"] = _error(429)
    otlp = spec._paths["/v1/logs"]["post"]["responses"]
    for code in ("401", "403", "429"):  # a google.rpc.Status there too, like its other errors
        otlp[code] = {**otlp[code], "content": otlp["400"]["content"]}


def _may_fail(spec: APISpec) -> None:
    """Anything unexpected is a JSON 500 (collector.web.errors), on every operation."""
    for operations in spec._paths.values():
        for operation in operations.values():
            operation["responses"].setdefault("500", _error(500))


@docs.get("/openapi.json")
def openapi_json():
    return build_spec(current_app.config["SETTINGS"])


@docs.get("/docs")
def swagger_ui():
    return SWAGGER_PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@docs.get("/docs/static/<path:filename>")
def swagger_static(filename: str):
    return send_from_directory(swagger_ui_path, filename)
