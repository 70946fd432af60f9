"""/openapi.json is valid OpenAPI, generated from the schemas, and lists every endpoint."""

from __future__ import annotations

import re

from openapi_spec_validator import validate


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


def test_docs_page_and_its_assets_are_served_locally(client):
    page = client.get("/docs")
    assert page.status_code == 200 and b"/openapi.json" in page.data
    asset = client.get("/docs/static/swagger-ui-bundle.js")
    assert asset.status_code == 200 and len(asset.data) > 100_000
    asset.close()
