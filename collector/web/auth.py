"""Who is asking, and may they: keys in `Authorization: Bearer` (or `X-API-Key`), roles, scopes.

Every endpoint names the roles it admits here, in one table; views then check
the scope of device keys against the devices a request touches. With
AUTH_ENABLED=false every request is treated as an admin's (for deployments that
put their own gateway in front).
"""

from __future__ import annotations

import hmac

from flask import Flask, g, request

from collector.pipeline.keyring import OPEN, Principal
from collector.web.errors import ApiError
from collector.web.extensions import backends, settings

PUBLIC = None  # anyone, no key needed

# endpoint -> roles admitted; device keys are further limited to their scope by the views.
ACCESS: dict[str, tuple[str, ...] | None] = {
    "api.index": PUBLIC,
    "api.health": PUBLIC,
    "api.live": PUBLIC,
    "docs.openapi_json": PUBLIC,
    "docs.swagger_ui": PUBLIC,
    "docs.swagger_static": PUBLIC,
    "api.ingest_log": ("device", "admin"),
    "api.ingest_batch": ("device", "admin"),
    "api.otlp_logs": ("device", "admin"),
    "api.console": PUBLIC,  # the page and its assets; its API calls carry the key typed into it
    "api.console_asset": PUBLIC,
    "api.device_logs": ("device", "reader", "admin"),
    "api.fleet_logs": ("device", "reader", "admin"),
    "api.device_tail": ("device", "reader", "admin"),
    "api.fleet_tail": ("device", "reader", "admin"),
    "api.devices": ("device", "reader", "admin"),
    "api.device_sequence": ("device", "reader", "admin"),
    "api.stats": ("reader", "admin"),
    "api.dead_letters": ("admin",),
    "api.prometheus_metrics": ("admin",),  # or METRICS_TOKEN
}
INGEST = ("api.ingest_log", "api.ingest_batch", "api.otlp_logs")
CHALLENGE = 'Bearer realm="collector"'


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": CHALLENGE})


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def principal() -> Principal | None:
    """The caller of the current request: None when anonymous."""
    return g.get("principal")


# Endpoints that also take the key as ?access_token=: a browser's EventSource cannot send
# headers. nginx's access log leaves the query string out for them (collector.conf.template).
TOKEN_IN_QUERY = ("api.device_tail", "api.fleet_tail")


def presented_secret() -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    key = request.headers.get("X-API-Key")
    if key is None and request.endpoint in TOKEN_IN_QUERY:
        key = request.args.get("access_token")
    return key


def register(app: Flask) -> None:
    @app.before_request
    def check_access() -> None:
        s = settings()
        if not s.auth_enabled:
            g.principal = OPEN
            return
        endpoint = request.endpoint
        if endpoint is None:  # no such route: the 404 says so, to anyone
            return
        roles = ACCESS.get(endpoint, ("admin",))  # a route nobody listed is for admins
        secret = presented_secret()
        if secret is None:
            if roles is PUBLIC:
                return
            raise Unauthorized("This endpoint needs a key: send Authorization: Bearer <key>.")
        if endpoint == "api.prometheus_metrics" and s.metrics_token and hmac.compare_digest(
                secret.encode(), s.metrics_token.encode()):
            g.principal = Principal(key_id=None, role="scraper")
            return
        who = backends().keyring.authenticate(secret, revalidate=endpoint not in INGEST)
        if who is None:
            raise Unauthorized("The key is unknown or revoked.")
        g.principal = who
        if roles is not PUBLIC and who.role not in roles:
            raise forbidden(f"A {who.role} key may not use this endpoint.")
