"""/openapi.json is valid OpenAPI, generated from the schemas, and lists every endpoint."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

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
