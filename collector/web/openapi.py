"""The OpenAPI document (/openapi.json), generated from the marshmallow schemas, and
a Swagger UI (/docs) served from the swagger-ui-bundle package, so it works offline."""

from __future__ import annotations

from functools import lru_cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from collector.core.settings import Settings
from collector.web import schemas

docs = Blueprint("docs", __name__)

SWAGGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Device log collector API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""


def _errors(*statuses: int) -> dict:
    text = {400: "Malformed JSON or empty body", 413: "Body over MAX_BODY_BYTES", 415: "Not application/json",
            422: "Validation failed; `fields` names each bad field (and batch index)",
            503: "Redis or PostgreSQL unavailable, or overloaded; honour Retry-After"}
    return {str(s): {"description": text[s], "content": {"application/json": {"schema": "Error"}}} for s in statuses}


def _ok(schema: str, description: str = "OK") -> dict:
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
    for name, schema in {
        "LogIn": log_in, "BatchIn": batch_in, "Queued": schemas.QueuedOut, "QueuedBatch": schemas.QueuedBatchOut,
        "LogsPage": schemas.LogsPageOut, "Stats": schemas.StatsOut, "Health": schemas.HealthOut,
        "DeadLettersPage": schemas.DeadLettersPageOut, "Error": schemas.ErrorOut,
        "SequenceAudit": schemas.SequenceAuditOut,
    }.items():
        spec.components.schema(name, schema=schema)

    def body(schema) -> dict:
        return {"required": True, "content": {"application/json": {"schema": schema}}}

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
        "parameters": [{"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {**_ok("SequenceAudit"), **_errors(422, 503)}}})
    spec.path("/api/logs/{device_id}", operations={"get": {
        "summary": "A device's logs, newest first",
        "parameters": [
            {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                          "maximum": settings.max_query_limit, "default": 100}}],
        "responses": {**_ok("LogsPage"), **_errors(422, 503)}}})
    spec.path("/api/stats", operations={"get": {
        "summary": "Totals, levels, recent devices and the pipeline's figures",
        "responses": {**_ok("Stats"), **_errors(503)}}})
    spec.path("/api/dead-letters", operations={"get": {
        "summary": "Entries that could not be stored, with the reason",
        "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                       {"name": "after_id", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
        "responses": {**_ok("DeadLettersPage"), **_errors(422, 503)}}})
    spec.path("/health", operations={"get": {
        "summary": "Redis and PostgreSQL checks; 503 names the failed one",
        "responses": {**_ok("Health"), "503": {"description": "Unhealthy",
                                                "content": {"application/json": {"schema": "Health"}}}}}})
    spec.path("/metrics", operations={"get": {
        "summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text format",
                                                               "content": {"text/plain": {}}}}}})
    spec.path("/openapi.json", operations={"get": {"summary": "This document",
                                                   "responses": {"200": {"description": "OpenAPI 3"}}}})
    spec.path("/docs", operations={"get": {"summary": "Swagger UI for this document",
                                           "responses": {"200": {"description": "HTML page"}}}})
    spec.path("/livez", operations={"get": {
        "summary": "Can this instance take logs? (Redis only; PostgreSQL may be down)",
        "responses": {"200": {"description": "Up"}, "503": {"description": "Redis unreachable"}}}})
    spec.path("/", operations={"get": {"summary": "Where to go from here",
                                       "responses": {"200": {"description": "Links"}}}})
    _secure(spec, settings)
    return spec.to_dict()


def _otlp_logs(spec: APISpec, settings: Settings, idempotency_key: dict) -> None:
    """POST /v1/logs: binary protobuf, which Swagger UI cannot build, so it is described here
    and sent by OpenTelemetry exporters (docs/otlp.md), not tried from /docs."""
    status = {"type": "object", "description": "google.rpc.Status (in OTLP/JSON; protobuf alike)", "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object",
                                               "description": "google.rpc.ErrorInfo; reason: our error code"}}}}
    both = {"application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": status}}
    failures = {400: "Undecodable body, too many records, or no record acceptable",
                413: "Body over MAX_BODY_BYTES", 415: "Neither application/x-protobuf nor application/json",
                422: "Invalid Idempotency-Key, or one reused with other records",
                503: "Redis unavailable or overloaded; honour Retry-After"}
    spec.path("/v1/logs", operations={"post": {
        "summary": "OTLP/HTTP logs export (OpenTelemetry); not for this page's 'Try it out'",
        "description": (
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
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "object", "description": "OTLP/JSON ExportLogsServiceRequest",
                                            "properties": {"resourceLogs": {"type": "array",
                                                                            "items": {"type": "object"}}}}}}},
        "responses": {
            "200": {"description": "ExportLogsServiceResponse; partialSuccess {rejectedLogRecords, errorMessage} "
                                   "when some records were rejected",
                    "content": {"application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
                                "application/json": {"schema": {"type": "object", "properties": {
                                    "partialSuccess": {"type": "object", "properties": {
                                        "rejectedLogRecords": {"type": "string"},
                                        "errorMessage": {"type": "string"}}}}}}}},
            **{str(code): {"description": text, "content": both} for code, text in failures.items()}}}})


# Which roles each operation admits (collector.web.auth.ACCESS is the one enforced).
_ROLES = {
    ("/api/log", "post"): "device (in scope) or admin",
    ("/api/logs/batch", "post"): "device (every log in scope) or admin",
    ("/v1/logs", "post"): "device (every record's device in scope) or admin",
    ("/api/logs/{device_id}", "get"): "device (in scope), reader or admin",
    ("/api/devices/{device_id}/sequence", "get"): "device (in scope), reader or admin",
    ("/api/stats", "get"): "reader or admin",
    ("/api/dead-letters", "get"): "admin",
    ("/metrics", "get"): "admin, or the METRICS_TOKEN",
}


def _secure(spec: APISpec, settings: Settings) -> None:
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer",
                                               "description": "A key from `python -m collector.keys create`."})
    spec.components.security_scheme("apiKey", {"type": "apiKey", "in": "header", "name": "X-API-Key"})
    if not settings.auth_enabled:
        return
    for (path, method), roles in _ROLES.items():
        operation = spec._paths[path][method]
        operation["security"] = [{"bearer": []}, {"apiKey": []}]
        operation["description"] = f"Keys: {roles}."
        operation["responses"].update({
            "401": {"description": "No key, or an unknown or revoked one (WWW-Authenticate: Bearer)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "403": {"description": "The key's role or scope does not cover this",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        })
    for path in ("/api/log", "/api/logs/batch", "/v1/logs"):
        spec._paths[path]["post"]["responses"]["429"] = {
            "description": "A device over its rate limit (logs, not requests); honour Retry-After",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    otlp = spec._paths["/v1/logs"]["post"]["responses"]
    for code in ("401", "403", "429"):  # a google.rpc.Status there too, like its other errors
        otlp[code] = {**otlp[code], "content": otlp["400"]["content"]}


@docs.get("/openapi.json")
def openapi_json():
    return build_spec(current_app.config["SETTINGS"])


@docs.get("/docs")
def swagger_ui():
    return SWAGGER_PAGE, 200, {"Content-Type": "text/html; charset=utf-8"}


@docs.get("/docs/static/<path:filename>")
def swagger_static(filename: str):
    return send_from_directory(swagger_ui_path, filename)
