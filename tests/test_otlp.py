"""OTLP/HTTP logs (POST /v1/logs) against the real Redis and PostgreSQL: the in-process app
for the protocol and the mapping (docs/otlp.md), then the real OpenTelemetry Python SDK
and its OTLP exporter through nginx, Gunicorn, Celery and PostgreSQL."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import json
import math
import uuid

import psycopg
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from openapi_spec_validator import validate
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector import keys as keys_cli
from collector.devtools.processes import nginx_binary, wait_until
from collector.pipeline.drain import drain_batch
from collector.web.app import create_app
from collector.web.otlp_mapping import level_of
from tests.stack import Stack

PROTOBUF = "application/x-protobuf"

# The specification's example (opentelemetry-proto, examples/logs.json), as it is.
SPEC_EXAMPLE = json.loads("""
{"resourceLogs": [{
  "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
  "scopeLogs": [{
    "scope": {"name": "my.library", "version": "1.0.0",
              "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
    "logRecords": [{
      "timeUnixNano": 1544712660300000000,
      "observedTimeUnixNano": 1544712660300000000,
      "severityText": "Information",
      "traceId": "5B8EFFF798038103D269B633813FC60C",
      "spanId": "EEE19B7EC3C1B174",
      "body": {"stringValue": "Example log record"},
      "attributes": [
        {"key": "string.attribute", "value": {"stringValue": "some string"}},
        {"key": "boolean.attribute", "value": {"boolValue": true}},
        {"key": "int.attribute", "value": {"intValue": 10}},
        {"key": "double.attribute", "value": {"doubleValue": 637.704}},
        {"key": "array.attribute", "value": {"arrayValue": {"values": [
          {"stringValue": "many"}, {"stringValue": "values"}]}}},
        {"key": "map.attribute", "value": {"kvlistValue": {"values": [
          {"key": "some.map.key", "value": {"stringValue": "some value"}}]}}}
      ]}]}]}]}
""")


def with_device(example: dict, device: str = "dev-otlp") -> dict:
    body = copy.deepcopy(example)
    body["resourceLogs"][0]["resource"]["attributes"].append({"key": "device.id", "value": {"stringValue": device}})
    return body


def stored(redis_client, db, settings) -> list[tuple]:
    """Drain everything queued, then every row, oldest entry first."""
    while drain_batch(redis_client, db, settings, "c1").read:
        pass
    return db.execute("SELECT device_id, log_level, message, log_data::text, created_at FROM logs"
                      " ORDER BY received_at, entry_seq").fetchall()


def kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def s(text: str) -> AnyValue:
    return AnyValue(string_value=text)


def request_of(*records: LogRecord, resource: list[KeyValue] | None = None) -> ExportLogsServiceRequest:
    export = ExportLogsServiceRequest()
    resource_logs = export.resource_logs.add()
    resource_logs.resource.attributes.extend(resource if resource is not None else [kv("device.id", s("dev-pb"))])
    resource_logs.scope_logs.add().log_records.extend(records)
    return export


def post_pb(client, export: ExportLogsServiceRequest, **kwargs):
    return client.post("/v1/logs", data=export.SerializeToString(), content_type=PROTOBUF, **kwargs)


def status_of(response) -> tuple[status_pb2.Status, str]:
    """The google.rpc.Status body of an error answer (in the request's encoding), and its reason."""
    if response.mimetype == PROTOBUF:
        status = status_pb2.Status.FromString(response.data)
    else:
        assert response.mimetype == "application/json"
        status = json_format.Parse(response.data, status_pb2.Status())
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return status, info.reason


# --- the protocol, in-process -------------------------------------------------------------

def test_the_spec_example_as_json_is_mapped_field_by_field(client, redis_client, settings, db):
    response = client.post("/v1/logs", json=with_device(SPEC_EXAMPLE))
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == {}  # full success: no partial_success
    [(device, level, message, log_data, created_at)] = stored(redis_client, db, settings)
    assert (device, level, message) == ("dev-otlp", "INFO", "Example log record")  # "Information": INFO
    assert created_at == dt.datetime(2018, 12, 13, 14, 51, 0, 300000, tzinfo=dt.UTC)
    assert json.loads(log_data) == {
        "resource": {"service.name": "my.service", "device.id": "dev-otlp"},
        "scope": {"name": "my.library", "version": "1.0.0",
                  "attributes": {"my.scope.attribute": "some scope attribute"}},
        "attributes": {"string.attribute": "some string", "boolean.attribute": True, "int.attribute": 10,
                       "double.attribute": 637.704, "array.attribute": ["many", "values"],
                       "map.attribute": {"some.map.key": "some value"}},
        "severity_text": "Information",
        # hex in OTLP/JSON (not proto3's base64), stored in lower case
        "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b174"}


def test_the_spec_example_without_a_device_id_is_a_400_status(client, redis_client, settings):
    response = client.post("/v1/logs", json=SPEC_EXAMPLE)
    assert response.status_code == 400
    status, reason = status_of(response)
    assert reason == "INVALID_LOG_RECORDS" and "device.id, service.instance.id, host.name" in status.message
    assert redis_client.xlen(settings.stream) == 0


def test_json_takes_snake_case_names_string_integers_and_ignores_unknown_fields(client, redis_client, settings, db):
    body = {"resource_logs": [{"resource": {"attributes": [{"key": "host.name", "value": {"stringValue": "h-1"}}]},
                               "scope_logs": [{"log_records": [{
                                   "time_unix_nano": "1700000000123456789", "severity_number": 17,
                                   "trace_id": "00112233445566778899aabbccddeeff", "span_id": "0011223344556677",
                                   "body": {"intValue": "42"}, "someFutureField": {"x": 1}}]}]}],
            "anotherUnknownField": True}
    assert client.post("/v1/logs", json=body).status_code == 200
    [(device, level, message, log_data, created_at)] = stored(redis_client, db, settings)
    assert (device, level, message) == ("h-1", "ERROR", "42")
    assert created_at == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.UTC)  # truncated to the µs
    data = json.loads(log_data)
    assert data["trace_id"] == "00112233445566778899aabbccddeeff" and data["span_id"] == "0011223344556677"


@pytest.mark.parametrize("number, level", [
    *[(n, "DEBUG") for n in range(1, 9)], *[(n, "INFO") for n in range(9, 13)],
    *[(n, "WARNING") for n in range(13, 17)], *[(n, "ERROR") for n in range(17, 21)],
    *[(n, "CRITICAL") for n in range(21, 25)]])
def test_severity_number_ranges(number, level):
    assert level_of(number, "ignored when the number is set") == level


@pytest.mark.parametrize("text, level", [
    ("trace", "DEBUG"), ("DEBUG", "DEBUG"), ("Info", "INFO"), ("warn", "WARNING"), ("WARNING", "WARNING"),
    ("error", "ERROR"), ("fatal", "CRITICAL"), ("critical", "CRITICAL"), ("WARN3", "WARNING"),
    ("Information", "INFO"), ("", "INFO"), ("loud", "INFO"), ("2", "INFO")])
def test_unspecified_severity_uses_the_text_else_info(text, level):
    assert level_of(0, text) == level
    assert level_of(25, text) == level  # outside the 24 defined numbers: unspecified too


def test_protobuf_maps_every_field(client, redis_client, settings, db):
    nested = AnyValue(kvlist_value=KeyValueList(values=[
        kv("list", AnyValue(array_value=ArrayValue(values=[AnyValue(int_value=-(2**63)), AnyValue(bool_value=False),
                                                           AnyValue()]))),
        kv("raw", AnyValue(bytes_value=b"\x00\xffhi"))]))
    records = [
        LogRecord(time_unix_nano=1_700_000_000_000_000_999, observed_time_unix_nano=1, severity_number=21,
                  severity_text="FATAL", body=s("string body"), trace_id=bytes(range(16)), span_id=bytes(range(8)),
                  flags=1, event_name="device.boot",
                  attributes=[kv("nested", nested), kv("inf", AnyValue(double_value=math.inf)),
                              kv("nan", AnyValue(double_value=math.nan)), kv("big", AnyValue(int_value=2**63 - 1)),
                              kv("huge", AnyValue(double_value=1e20))]),  # a double, not a lost integer
        LogRecord(observed_time_unix_nano=1_600_000_000_000_001_000, severity_number=13, body=nested),
        LogRecord(severity_text="debug", body=AnyValue(double_value=1.5)),  # no time at all: received now
        LogRecord(severity_number=9, body=AnyValue(bytes_value=b"\x01\x02")),
        LogRecord(severity_number=5, body=AnyValue(bool_value=True)),
        LogRecord(severity_number=1, body=AnyValue(array_value=ArrayValue(values=[s("a"), AnyValue(int_value=1)]))),
    ]
    scope_attrs = [kv("lib.attr", AnyValue(int_value=7))]
    export = request_of(*records, resource=[kv("service.name", s("svc")), kv("device.id", s("dev-pb"))])
    export.resource_logs[0].scope_logs[0].scope.name = "my.scope"
    export.resource_logs[0].scope_logs[0].scope.version = "2.0"
    export.resource_logs[0].scope_logs[0].scope.attributes.extend(scope_attrs)
    before = dt.datetime.now(dt.UTC)
    response = post_pb(client, export)
    assert response.status_code == 200 and response.mimetype == PROTOBUF
    assert not ExportLogsServiceResponse.FromString(response.data).HasField("partial_success")
    rows = stored(redis_client, db, settings)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("dev-pb", "CRITICAL", "string body"),
        ("dev-pb", "WARNING", '{"list":[-9223372036854775808,false,null],"raw":"AP9oaQ=="}'),
        ("dev-pb", "DEBUG", "1.5"),
        ("dev-pb", "INFO", '"AQI="'),
        ("dev-pb", "DEBUG", "true"),
        ("dev-pb", "DEBUG", '["a",1]')]
    first = json.loads(rows[0][3])
    assert first == {
        "resource": {"service.name": "svc", "device.id": "dev-pb"},
        "scope": {"name": "my.scope", "version": "2.0", "attributes": {"lib.attr": 7}},
        "attributes": {"nested": {"list": [-(2**63), False, None], "raw": base64.b64encode(b"\x00\xffhi").decode()},
                       "inf": "Infinity", "nan": "NaN", "big": 2**63 - 1, "huge": 1e20},
        "severity_number": 21, "severity_text": "FATAL", "event_name": "device.boot",
        "trace_id": bytes(range(16)).hex(), "span_id": bytes(range(8)).hex(), "flags": 1}
    # time_unix_nano first (truncated to the µs), else observed_time_unix_nano, else the receive time
    assert rows[0][4] == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert rows[1][4] == dt.datetime(2020, 9, 13, 12, 26, 40, 1, tzinfo=dt.UTC)
    assert before <= rows[2][4] <= dt.datetime.now(dt.UTC)
    assert "attributes" not in json.loads(rows[2][3]) and "trace_id" not in json.loads(rows[2][3])


def test_device_id_attributes_are_configurable_and_tried_in_order(settings, db, make_app, redis_client):
    client = make_app(dataclasses.replace(settings, otlp_device_id_attributes="serial,host.name")).test_client()
    both = [kv("host.name", s("host-a")), kv("serial", AnyValue(int_value=1234)), kv("device.id", s("ignored"))]
    assert post_pb(client, request_of(LogRecord(body=s("m")), resource=both)).status_code == 200
    assert post_pb(client, request_of(LogRecord(body=s("m")), resource=both[:1])).status_code == 200
    assert [row[0] for row in stored(redis_client, db, settings)] == ["1234", "host-a"]


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_a_batch_with_bad_records_is_a_partial_success_and_the_rest_is_stored(client, redis_client, settings, db,
                                                                             encoding):
    export = request_of(LogRecord(body=s("good 1")), LogRecord(severity_number=9),  # no body
                        LogRecord(body=s("")), LogRecord(body=s("x" * 10_001)),
                        LogRecord(body=s("bad \x00")), LogRecord(body=s("good 2")))
    bad_ids = export.resource_logs.add()  # a resource whose device id breaks the rule
    bad_ids.resource.attributes.append(kv("device.id", s("bad id with spaces")))
    bad_ids.scope_logs.add().log_records.append(LogRecord(body=s("lost")))
    if encoding == "protobuf":
        response = post_pb(client, export)
        answer = ExportLogsServiceResponse.FromString(response.data)
    else:
        body = json.loads(json_format.MessageToJson(export))
        response = client.post("/v1/logs", json=body)
        answer = json_format.Parse(response.data, ExportLogsServiceResponse())
    assert response.status_code == 200
    assert answer.partial_success.rejected_log_records == 5
    message = answer.partial_success.error_message
    assert message.startswith("5 of 7 log records rejected: resource_logs[0].scope_logs[0].log_records[1]: ")
    assert "no body" in message and "log_records[2]: body: Length must be between 1 and 10000" in message
    assert "(and 2 more)" in message
    assert [row[2] for row in stored(redis_client, db, settings)] == ["good 1", "good 2"]


def test_the_device_id_rule_is_named_in_the_reason(client, redis_client, settings):
    export = request_of(LogRecord(body=s("m")), resource=[kv("device.id", s("no spaces allowed"))])
    response = post_pb(client, export)
    status, reason = status_of(response)
    assert response.status_code == 400 and reason == "INVALID_LOG_RECORDS"
    assert "device id (resource attribute 'device.id'): Must be 1-100 characters" in status.message
    export = request_of(LogRecord(body=s("m")), resource=[kv("device.id", AnyValue(double_value=1.0))])
    assert "is a double_value, not a string" in status_of(post_pb(client, export))[0].message
    assert redis_client.xlen(settings.stream) == 0


@pytest.mark.parametrize("content_type, data, reason, word", [
    (PROTOBUF, b"\xff\xff\xff", "MALFORMED_PROTOBUF", "protobuf"),
    ("application/json", b"{not json", "MALFORMED_JSON", "OTLP/JSON"),
    ("application/json", b"", "MALFORMED_JSON", "OTLP/JSON"),
    ("application/json", b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]}',
     "MALFORMED_JSON", "not hex"),
    ("application/json", b'{"resourceLogs": 5}', "MALFORMED_JSON", "resourceLogs"),
    ("text/plain", b"hello", "UNSUPPORTED_MEDIA_TYPE", "application/x-protobuf"),
    ("application/x-www-form-urlencoded", b"a=b", "UNSUPPORTED_MEDIA_TYPE", "application/json"),
])
def test_undecodable_bodies_and_other_types_are_a_status_and_change_nothing(client, redis_client, settings,
                                                                            content_type, data, reason, word):
    response = client.post("/v1/logs", data=data, content_type=content_type)
    assert response.status_code == (415 if reason == "UNSUPPORTED_MEDIA_TYPE" else 400)
    # In the request's encoding; JSON for a type we do not take.
    assert response.mimetype == (PROTOBUF if content_type == PROTOBUF else "application/json")
    status, got = status_of(response)
    assert got == reason and word in status.message and status.code == 3  # INVALID_ARGUMENT
    assert redis_client.xlen(settings.stream) == 0
    rejected = client.get("/api/stats").get_json()["pipeline"]["rejected_by_reason"]
    assert rejected == {reason.lower(): 1}  # counted like any refused ingest request


def test_a_body_over_max_body_bytes_is_a_413_status(client, redis_client, settings):
    response = client.post("/v1/logs", data=b"\x0a" * 1_100_000, content_type=PROTOBUF)
    assert response.status_code == 413 and response.mimetype == PROTOBUF
    assert status_of(response)[1] == "REQUEST_ENTITY_TOO_LARGE"
    assert redis_client.xlen(settings.stream) == 0


def test_an_empty_protobuf_request_is_a_success_that_queues_nothing(client, redis_client, settings):
    response = client.post("/v1/logs", data=b"", content_type=PROTOBUF)
    assert response.status_code == 200 and response.data == b""
    assert redis_client.xlen(settings.stream) == 0


def test_more_records_than_max_batch_logs_is_a_400(settings, db, make_app, redis_client):
    client = make_app(dataclasses.replace(settings, max_batch_logs=3)).test_client()
    response = post_pb(client, request_of(*[LogRecord(body=s("m"))] * 4))
    status, reason = status_of(response)
    assert response.status_code == 400 and reason == "TOO_MANY_RECORDS" and "at most 3" in status.message
    assert redis_client.xlen(settings.stream) == 0


def test_idempotency_key_replays_across_encodings_and_refuses_other_records(client, redis_client, settings):
    export = request_of(LogRecord(body=s("once")), LogRecord(severity_number=9))  # one rejected
    headers = {"Idempotency-Key": "otlp-1"}
    first = post_pb(client, export, headers=headers)
    assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
    again = post_pb(client, export, headers=headers)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data  # the partial_success too
    as_json = client.post("/v1/logs", json=json.loads(json_format.MessageToJson(export)), headers=headers)
    assert as_json.status_code == 200 and as_json.headers["Idempotent-Replayed"] == "true"
    assert json_format.Parse(as_json.data, ExportLogsServiceResponse()).partial_success.rejected_log_records == 1
    other = post_pb(client, request_of(LogRecord(body=s("other"))), headers=headers)
    assert other.status_code == 422 and status_of(other)[1] == "IDEMPOTENCY_KEY_REUSED"
    bad_key = post_pb(client, export, headers={"Idempotency-Key": "has space"})
    assert bad_key.status_code == 422 and "Idempotency-Key" in status_of(bad_key)[0].message
    assert redis_client.xlen(settings.stream) == 1


def test_overload_is_a_503_with_retry_after(settings, db, make_app, redis_client):
    client = make_app(dataclasses.replace(settings, backlog_high_water=1, backlog_low_water=0,
                                          backpressure_check_interval=0.01)).test_client()
    assert post_pb(client, request_of(LogRecord(body=s("fills it")))).status_code == 200
    # The gate re-reads the backlog every 10 ms, so a request may still get through first.
    wait_until(lambda: post_pb(client, request_of(LogRecord(body=s("m")))).status_code == 503, 5, "a 503")
    queued = redis_client.xlen(settings.stream)
    response = post_pb(client, request_of(LogRecord(body=s("m"))))
    assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    status, reason = status_of(response)
    assert reason == "OVERLOADED" and status.code == 14  # UNAVAILABLE
    assert redis_client.xlen(settings.stream) == queued


def test_rate_limits_count_records_and_answer_429_with_retry_after(settings, db, make_app, redis_client):
    client = make_app(dataclasses.replace(settings, rate_limit_per_device=1.0, rate_limit_burst=3)).test_client()
    assert post_pb(client, request_of(*[LogRecord(body=s("m"))] * 3)).status_code == 200
    response = post_pb(client, request_of(LogRecord(body=s("one more"))))
    assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
    assert status_of(response)[1] == "RATE_LIMITED" and "RateLimit" in response.headers
    assert redis_client.xlen(settings.stream) == 3


# --- keys ---------------------------------------------------------------------------------

@pytest.fixture
def secured(settings, db):
    app = create_app(dataclasses.replace(settings, auth_enabled=True))
    yield app.test_client()
    app.extensions["collector"].db.close()


@pytest.fixture
def new_key(settings, db, monkeypatch, capsys):
    """`python -m collector.keys create ...`, in-process, in the test's database and namespace; the secret."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)

    def create(*argv: str) -> dict:
        assert keys_cli.main(["create", *argv]) == 0
        return {"Authorization": f"Bearer {capsys.readouterr().out.splitlines()[-1]}"}

    return create


def test_keys_roles_and_scopes_apply_and_refusals_are_a_status(secured, new_key, redis_client, settings):
    export = request_of(LogRecord(body=s("m")), resource=[kv("device.id", s("device_001"))])
    anonymous = post_pb(secured, export)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == 'Bearer realm="collector"'
    assert status_of(anonymous)[1] == "UNAUTHORIZED" and anonymous.mimetype == PROTOBUF
    fleet = new_key("--prefix", "device_")
    assert post_pb(secured, export, headers=fleet).status_code == 200
    outside = request_of(LogRecord(body=s("m")), resource=[kv("device.id", s("other_1"))])
    refused = post_pb(secured, outside, headers=fleet)
    assert refused.status_code == 403 and "other_1" in status_of(refused)[0].message
    reader = post_pb(secured, export, headers=new_key("--role", "reader"))
    assert reader.status_code == 403 and status_of(reader)[1] == "FORBIDDEN"
    assert post_pb(secured, outside, headers=new_key("--role", "admin")).status_code == 200
    assert redis_client.xlen(settings.stream) == 2


def test_the_openapi_document_describes_v1_logs(secured, client):
    got = client.get("/openapi.json")
    validate(got.get_json())  # keys off: no 401/403/429 documented
    spec = secured.get("/openapi.json").get_json()
    validate(spec)
    operation = spec["paths"]["/v1/logs"]["post"]
    assert set(operation["requestBody"]["content"]) == {PROTOBUF, "application/json"}
    assert {"200", "400", "401", "403", "415", "429", "503"} <= set(operation["responses"])


# --- end to end, with the OpenTelemetry SDK -------------------------------------------------

@pytest.fixture(scope="module")
def stack(base_settings, empty_tables, tmp_path_factory):
    if nginx_binary() is None:
        pytest.fail("nginx is required for the end-to-end tests: apt-get install -y nginx")
    empty_tables()
    stack = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                   "KEY_PREFIX": base_settings.key_prefix + "otlp-e2e:", "DRAIN_INTERVAL": "0.5"},
                  tmp_path_factory.mktemp("otlp-stack"))
    try:
        yield {"url": stack.start_all(), "db": base_settings.database_url}
    finally:
        stack.stop()


E2E_LOGS = 600


def send_with_the_sdk(url: str, device: str, compression) -> list:
    """E2E_LOGS records through the SDK's LoggerProvider, BatchLogRecordProcessor and OTLP/HTTP
    exporter (protobuf); returns what each export returned."""
    from opentelemetry import trace
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    results = []

    class Recording(OTLPLogExporter):
        def export(self, batch):
            results.append(super().export(batch))
            return results[-1]

    provider = LoggerProvider(resource=Resource.create({"device.id": device, "service.name": "e2e"}),
                              shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(
        Recording(endpoint=f"{url}/v1/logs", compression=compression, timeout=30),
        schedule_delay_millis=200, max_export_batch_size=100))
    logger = provider.get_logger("e2e.scope", "3.1")
    span = trace.NonRecordingSpan(trace.SpanContext(trace_id=0x0123456789ABCDEF0123456789ABCDEF,
                                                    span_id=0x0123456789ABCDEF, is_remote=False,
                                                    trace_flags=trace.TraceFlags(1)))
    context = trace.set_span_in_context(span)
    severities = [SeverityNumber.DEBUG, SeverityNumber.INFO, SeverityNumber.WARN, SeverityNumber.ERROR,
                  SeverityNumber.FATAL, SeverityNumber.TRACE]
    for i in range(E2E_LOGS):
        severity = severities[i % len(severities)]
        logger.emit(timestamp=1_700_000_000_000_000_000 + i * 1000, severity_number=severity,
                    severity_text=severity.name, body=f"sdk log {i}", attributes={"i": i, "ok": True},
                    context=context)
    assert provider.force_flush(60_000)
    provider.shutdown()
    return results


def check_stored_exactly_once(database: str, device: str) -> None:
    def rows():
        with psycopg.connect(database) as conn:
            return conn.execute("SELECT log_level, message, log_data::text, created_at FROM logs"
                                " WHERE device_id = %s", (device,)).fetchall()

    wait_until(lambda: len(rows()) >= E2E_LOGS, 120, f"{E2E_LOGS} rows of {device}", interval=0.5)
    found = rows()
    assert sorted(r[1] for r in found) == sorted(f"sdk log {i}" for i in range(E2E_LOGS))  # each once
    levels = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "DEBUG"]
    for level, message, log_data, created_at in found:
        i = int(message.rsplit(" ", 1)[1])
        data = json.loads(log_data)
        assert level == levels[i % 6]
        assert created_at == dt.datetime(2023, 11, 14, 22, 13, 20, i, tzinfo=dt.UTC)
        assert data["attributes"] == {"i": i, "ok": True}
        assert data["resource"]["device.id"] == device and data["resource"]["service.name"] == "e2e"
        assert data["scope"] == {"name": "e2e.scope", "version": "3.1"}
        assert data["trace_id"] == "0123456789abcdef0123456789abcdef" and data["span_id"] == "0123456789abcdef"
        assert data["flags"] == 1


@pytest.mark.e2e
@pytest.mark.slow
def test_the_opentelemetry_sdk_exports_through_nginx_and_every_record_is_stored_once(stack):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.sdk._logs.export import LogRecordExportResult

    device = f"otel-{uuid.uuid4().hex[:8]}"
    results = send_with_the_sdk(stack["url"], device, Compression.NoCompression)
    assert results and set(results) == {LogRecordExportResult.SUCCESS}
    check_stored_exactly_once(stack["db"], device)


@pytest.mark.e2e
@pytest.mark.slow
def test_the_sdk_with_gzip_compression(stack):
    """Needs the request-body decompression middleware (collector/web/compression.py)."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.sdk._logs.export import LogRecordExportResult

    device = f"otel-gz-{uuid.uuid4().hex[:8]}"
    results = send_with_the_sdk(stack["url"], device, Compression.Gzip)
    assert results and set(results) == {LogRecordExportResult.SUCCESS}
    check_stored_exactly_once(stack["db"], device)


def test_a_nul_in_an_attribute_rejects_its_record_only(client, redis_client, settings, db):
    export = request_of(LogRecord(body=s("ok")), LogRecord(body=s("bad"), attributes=[kv("k", s("a\x00b"))]))
    answer = ExportLogsServiceResponse.FromString(post_pb(client, export).data)
    assert answer.partial_success.rejected_log_records == 1
    assert "log_records[1]" in answer.partial_success.error_message and "NUL" in answer.partial_success.error_message
    assert [r[2] for r in stored(redis_client, db, settings)] == ["ok"]
