"""/openapi.json is valid OpenAPI, generated from the schemas, and lists every endpoint."""

from __future__ import annotations

import dataclasses
import re

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from collector import keys as keys_cli
from collector.core.model import LEVELS
from collector.web.auth import ACCESS, PUBLIC
from collector.web.logdata import MAX_DEPTH, MAX_INT, MIN_INT


def test_openapi_is_valid_and_lists_every_route(client, app):
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    documented = set(spec["paths"])
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()
              if rule.endpoint not in ("static", "docs.swagger_static")}
    assert routes == documented


def test_request_schemas_come_from_marshmallow(client):
    schemas = client.get("/openapi.json").get_json()["components"]["schemas"]
    assert set(schemas["LogIn"]["required"]) == {"device_id", "log_level", "message"}
    assert schemas["LogIn"]["properties"]["message"]["maxLength"] == 10_000
    assert schemas["BatchIn"]["properties"]["logs"]["maxItems"] == 1000


def test_the_accepted_values_are_stated(client):
    """What ingest accepts (collector.web.schemas) is what the document says."""
    log_in = client.get("/openapi.json").get_json()["components"]["schemas"]["LogIn"]["properties"]
    data = log_in["log_data"]
    assert (data["x-integer-minimum"], data["x-integer-maximum"], data["x-max-depth"]) == (
        MIN_INT, MAX_INT, MAX_DEPTH)
    assert "16384 bytes" in data["description"] and "NUL" in data["description"]
    assert "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z" in log_in["timestamp"]["description"]
    assert "microsecond" in log_in["timestamp"]["description"]
    assert log_in["message"]["pattern"] == log_in["boot_id"]["pattern"] == "^[^\\u0000]*$"


def test_docs_page_and_its_assets_are_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200 and b"/openapi.json" in page.data
    asset = client.get("/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
    asset.close()


def test_the_document_is_whole_after_ingest_built_its_own_schema_variants(make_app, settings):
    """Ingest builds LogIn classes of its own (orjson's variant, other limits): the document
    must still name its own, not whichever LogIn the registry finds first (pytest turns
    apispec's warning about an ambiguous name into an error, as it should)."""
    from collector.web import openapi, schemas
    from collector.web.schemas import batch_schema, log_schema

    # As in a fresh API process whose first request was a log: ingest's variant comes first.
    for cached in (schemas._log_schema, schemas._batch_schema, openapi.build_spec):
        cached.cache_clear()
    log_schema(settings.max_message_chars, settings.max_log_data_bytes, True)
    batch_schema(settings.max_batch_logs, settings.max_message_chars, settings.max_log_data_bytes, True)
    log_schema(7, 99)
    spec = make_app(settings).test_client().get("/openapi.json").get_json()
    validate(spec)
    body = spec["paths"]["/api/log"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/LogIn"} and "LogIn1" not in spec["components"]["schemas"]


# --- "Try it out", as Swagger UI builds it from the served document --------------------------------
# Swagger UI (the bundle /docs serves, 4.15) fills a parameter with its `examples`' value, else
# its content's or its own `example`, else its schema's `example`, else its schema's `default`;
# a JSON body with the media type's `example`/`examples`, else a sample of the schema: the
# schema's `example` where there is one, else an object of every property's sample, an array of
# one item's, a primitive's example, default or first enum value. These helpers do the same, so
# what they send is what a person pressing "Execute" sends.

JSON = "application/json"
# 4xx/5xx answers that are not an Error, with the reason: these bodies are another shape by design.
NOT_AN_ERROR_BODY = {
    ("/v1/logs", "post"): "OTLP answers a google.rpc.Status, as its specification says",
    ("/health", "get"): "a 503 is a Health body whose checks name the failed server",
    ("/livez", "get"): "a 503 is the 200's {status, checks} body with status down",
}


def deref(spec: dict, node):
    """node with every $ref replaced by what it names (our schemas are not recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return deref(spec, target)
        return {key: deref(spec, value) for key, value in node.items()}
    if isinstance(node, list):
        return [deref(spec, item) for item in node]
    return node


def sample(schema: dict, object_examples: bool = True):
    """Swagger UI's sample of a (dereferenced) schema; object_examples=False ignores the
    examples of objects, to build a body from its fields' examples alone."""
    kind = schema.get("type")
    if "example" in schema and (object_examples or kind not in ("object", "array")):
        return schema["example"]
    if kind == "object" or "properties" in schema:
        if "properties" not in schema and "example" in schema:
            return schema["example"]
        return {name: sample(prop, object_examples) for name, prop in schema.get("properties", {}).items()
                if not prop.get("readOnly")}
    if kind == "array":
        return [sample(schema["items"], object_examples)]
    if schema.get("default") is not None:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    return {"string": "string", "integer": 0, "number": 0, "boolean": True}[kind]


def parameter_value(param: dict):
    if param.get("examples"):
        return next(iter(param["examples"].values()))["value"]
    for media in param.get("content", {}).values():
        if "example" in media:
            return media["example"]
    schema = param.get("schema", {})
    for candidate in (param.get("example"), schema.get("example"), schema.get("default"), param.get("default")):
        if candidate is not None:
            return candidate
    return None


def body_value(media: dict):
    if "example" in media:
        return media["example"]
    if media.get("examples"):
        return next(iter(media["examples"].values()))["value"]
    return sample(media["schema"])


def json_operations(spec: dict):
    """(path, method, operation) of every operation that takes or answers JSON."""
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            takes = JSON in operation.get("requestBody", {}).get("content", {})
            answers = JSON in operation["responses"].get("200", {}).get("content", {})
            if takes or answers:
                yield path, method, operation


def authorized_headers(spec: dict, operation: dict, key: str | None) -> dict:
    """What Swagger UI sends once `key` was entered with Authorize for the bearer scheme."""
    if not operation.get("security"):
        return {}
    schemes = spec["components"]["securitySchemes"]
    bearer = [name for name, scheme in schemes.items() if scheme["type"] == "http" and scheme["scheme"] == "bearer"]
    assert bearer and any(set(req) == {bearer[0]} for req in operation["security"]), operation["security"]
    assert key is not None, "the operation needs a key; the document says so"
    return {"Authorization": f"Bearer {key}"}


def swagger_request(spec: dict, path: str, operation: dict, body=None) -> dict:
    """The request Swagger UI builds for this operation (body: instead of the generated one)."""
    url, query, headers = path, {}, {}
    for param in operation.get("parameters", []):
        value = parameter_value(param)
        if param["in"] == "path":
            assert value is not None, f"{path}: path parameter {param['name']} has no example"
            url = url.replace("{" + param["name"] + "}", str(value))
        elif param["in"] == "query" and value is not None:
            query[param["name"]] = value
        elif param["in"] == "header" and value is not None:
            headers[param["name"]] = str(value)
    request = {"path": url, "query_string": query, "headers": headers}
    content = operation.get("requestBody", {}).get("content", {})
    if JSON in content:
        request["json"] = body if body is not None else body_value(deref(spec, content[JSON]))
    return request


@pytest.fixture(params=[False, True], ids=["keys-off", "keys-on"])
def tried(request, settings, db, make_app, monkeypatch, capsys):
    """(test client, the key entered with Authorize or None) for an app with keys off or on;
    the key is an admin's (the one role every operation admits), made with the keys command."""
    settings = dataclasses.replace(settings, auth_enabled=request.param)
    key = None
    if request.param:
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
        monkeypatch.setenv("REDIS_URL", settings.redis_url)
        monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)
        assert keys_cli.main(["create", "--role", "admin", "--name", "swagger"]) == 0
        key = capsys.readouterr().out.splitlines()[-1]
    return make_app(settings).test_client(), key, settings


def test_try_it_out_as_generated_succeeds_on_every_json_operation(tried, redis_client):
    client, key, settings = tried
    spec = client.get("/openapi.json").get_json()
    validate(spec)
    tried_paths = set()
    for path, method, operation in json_operations(spec):
        request = swagger_request(spec, path, operation)
        request["headers"].update(authorized_headers(spec, operation, key))
        queued = redis_client.xlen(settings.stream)
        response = client.open(method=method.upper(), **request)
        assert 200 <= response.status_code < 300, (path, request, response.get_json())
        if method == "post":  # ingest: answered at once, and the logs are on the stream
            answer = response.get_json()
            assert answer.get("status", "queued") == "queued" and "partialSuccess" not in answer, answer
            assert redis_client.xlen(settings.stream) > queued, path
        defaults = {p["name"]: p["schema"]["default"] for p in operation.get("parameters", [])
                    if p["in"] == "query" and "default" in p.get("schema", {})}
        if defaults:  # what a person gets who clears the example: the defaults, also valid
            again = client.open(method=method.upper(), **{**request, "query_string": defaults})
            assert again.status_code == 200, (path, defaults, again.get_json())
        tried_paths.add(path)
    assert {"/api/log", "/api/logs/batch", "/v1/logs", "/api/logs/{device_id}", "/api/stats",
            "/api/dead-letters", "/api/devices/{device_id}/sequence", "/health"} <= tried_paths


def test_bodies_assembled_from_the_fields_examples_are_valid_too(client):
    """Where Swagger UI would not use a schema-level example (a tool that ignores it, or an
    endpoint added without one), the fields' own examples make a valid body: seq and boot_id
    come as a pair."""
    spec = client.get("/openapi.json").get_json()
    for path, _, operation in json_operations(spec):
        media = operation.get("requestBody", {}).get("content", {}).get(JSON)
        if media is None or "$ref" not in media["schema"]:  # OTLP/JSON: an inline schema, its example only
            continue
        body = sample(deref(spec, media["schema"]), object_examples=False)
        response = client.post(**swagger_request(spec, path, operation, body=body))
        assert response.status_code == 200 and response.get_json()["status"] == "queued", (body, response.get_json())
    log = sample(deref(spec, spec["components"]["schemas"]["LogIn"]), object_examples=False)
    assert {"seq", "boot_id"} <= set(log)


def test_every_request_schema_and_field_has_an_example_that_fits_it(client):
    spec = client.get("/openapi.json").get_json()
    for path, _, operation in json_operations(spec):
        media = operation.get("requestBody", {}).get("content", {}).get(JSON)
        if media is not None:
            schema = deref(spec, media["schema"])
            assert "example" in schema, path
            OAS30Validator(schema, format_checker=OAS30Validator.FORMAT_CHECKER).validate(schema["example"])
            for name, field in schema.get("properties", {}).items():
                if "$ref" not in field:
                    assert "example" in field or field.get("type") == "array", (path, name)
        for param in operation.get("parameters", []):
            value = parameter_value(param)
            if param.get("required") or param["in"] == "query":
                assert value is not None, (path, param["name"])
            for candidate in (value, param["schema"].get("default")):
                if candidate is not None:
                    OAS30Validator(param["schema"]).validate(candidate)
    log_in = deref(spec, spec["components"]["schemas"]["LogIn"])
    for name, field in log_in["properties"].items():
        assert "example" in field and "description" in field, name
        OAS30Validator(field, format_checker=OAS30Validator.FORMAT_CHECKER).validate(field["example"])


def test_log_level_is_an_enum_of_the_five_levels(client):
    spec = client.get("/openapi.json").get_json()
    level = spec["components"]["schemas"]["LogIn"]["properties"]["log_level"]
    assert level["enum"] == list(LEVELS) and level["example"] in LEVELS


@pytest.mark.parametrize("auth", [False, True], ids=["keys-off", "keys-on"])
def test_every_error_answer_is_an_error_with_an_example(make_app, settings, auth):
    spec = make_app(dataclasses.replace(settings, auth_enabled=auth)).test_client().get("/openapi.json").get_json()
    validate(spec)
    error = spec["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message"} and "example" in error
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            failures = {code: answer for code, answer in operation["responses"].items() if code[0] in "45"}
            assert "500" in failures, (path, method)
            if (path, method) in NOT_AN_ERROR_BODY:
                continue
            for code, answer in failures.items():
                media = answer["content"][JSON]
                assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (path, method, code)
                OAS30Validator(deref(spec, media["schema"])).validate(media["example"])
    if auth:
        assert {"401", "403"} <= set(spec["paths"]["/api/stats"]["get"]["responses"])
        assert "429" in spec["paths"]["/api/log"]["post"]["responses"]


def test_authorize_sends_the_key_as_a_bearer_token(make_app, settings):
    """Every operation that needs a key lists the bearer scheme, so the key entered with
    Authorize is sent as `Authorization: Bearer <key>`; the public ones list none."""
    app = make_app(dataclasses.replace(settings, auth_enabled=True))
    spec = app.test_client().get("/openapi.json").get_json()
    bearer = spec["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    endpoints = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule): rule.endpoint for rule in app.url_map.iter_rules()}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            public = ACCESS.get(endpoints[path], ("admin",)) is PUBLIC
            assert public or {"bearer": []} in operation.get("security", []), (path, method)
            assert not public or not operation.get("security"), (path, method)
