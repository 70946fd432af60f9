"""`/`, the landing page: HTML for browsers, JSON for curl and programs, the pipeline's
figures for readers and admins only; through the real app, and once through real nginx."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from html.parser import HTMLParser

import pytest
import requests

from collector import keys as keys_cli
from collector.devtools.processes import nginx_binary
from collector.web import landing, query
from tests.stack import Stack

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
OLD_KEYS = {"service", "docs", "openapi", "health", "auth"}
FIGURES = {"accepted", "persisted", "backlog", "dead_lettered"}
METRICS_TOKEN = "scrape-me"


class Page(HTMLParser):
    """The hrefs of a page, and every tag that could fetch something from elsewhere."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.fetching: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a":
            self.hrefs.append(values["href"])
        if tag in ("script", "link", "img", "iframe") or "src" in values:
            self.fetching.append(tag)


@pytest.fixture
def secured_settings(settings):
    return dataclasses.replace(settings, auth_enabled=True, metrics_token=METRICS_TOKEN)


@pytest.fixture
def secured(secured_settings, db, make_app):
    return make_app(secured_settings).test_client()


@pytest.fixture
def key(settings, db, monkeypatch, capsys):
    """make_key(*argv): a new key's secret, made with `python -m collector.keys create`."""
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)

    def make(*argv: str) -> str:
        assert keys_cli.main(["create", *argv]) == 0
        return capsys.readouterr().out.splitlines()[-1]

    return make


def bearer(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def html(client, **headers):
    response = client.get("/", headers={"Accept": BROWSER, **headers})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "Accept" in response.headers["Vary"]
    return response.get_data(as_text=True)


def test_browsers_get_a_self_contained_page_whose_links_all_answer(secured, secured_settings):
    text = html(secured)
    page = Page(text)
    assert page.fetching == []  # no scripts, stylesheets or images: nothing from a CDN
    assert importlib.metadata.version("device-log-collector") in text
    assert secured_settings.flower_url in page.hrefs
    local = [href for href in page.hrefs if href != secured_settings.flower_url]
    assert {"/docs", "/openapi.json", "/metrics", "/health", "/livez"} <= set(local)
    assert all(href.startswith("/") for href in local), local
    for href in local:  # anonymously: public ones answer, the others ask for a key; none is missing
        assert secured.get(href).status_code != 404, href
    for href in ("/docs", "/openapi.json", "/health", "/livez"):
        assert secured.get(href).status_code == 200, href
    assert secured.get("/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200
    assert "Pipeline" not in text and "accepted" not in text  # no figures for anonymous callers


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.9",
                                    "image/png"], ids=["none", "curl", "json", "json-first", "other"])
def test_curl_and_programs_get_json_with_the_old_keys_and_the_new(secured, secured_settings, accept):
    response = secured.get("/", headers={"Accept": accept} if accept else {})
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert OLD_KEYS <= set(body)
    assert body == {"service": "device-log-collector", "console": "/console", "docs": "/docs",
                    "openapi": "/openapi.json",
                    "health": "/health", "livez": "/livez", "metrics": "/metrics", "stats": "/api/stats",
                    "flower": secured_settings.flower_url, "auth": landing.AUTH_HINT,
                    "version": importlib.metadata.version("device-log-collector")}


def test_flower_url_is_a_setting(secured_settings, make_app):
    client = make_app(dataclasses.replace(secured_settings, flower_url="https://flower.example:8443/")).test_client()
    assert client.get("/").get_json()["flower"] == "https://flower.example:8443/"
    assert 'href="https://flower.example:8443/"' in html(client)


def test_readers_and_admins_see_the_live_figures_others_do_not(secured, key):
    device = key("--device", "device_001")
    reader, admin = key("--role", "reader"), key("--role", "admin")
    log = {"device_id": "device_001", "log_level": "INFO", "message": "m"}
    assert secured.post("/api/log", json=log, headers=bearer(device)).status_code == 200

    for anonymous_or_device in ({}, bearer(device)):
        assert "pipeline" not in secured.get("/", headers=anonymous_or_device).get_json()
        assert "Pipeline" not in html(secured, **anonymous_or_device)

    stats = secured.get("/api/stats", headers=bearer(reader)).get_json()["pipeline"]
    expected = {"accepted": stats["accepted"], "persisted": stats["persisted"],
                "backlog": stats["lag"] + stats["pending"], "dead_lettered": stats["dead_lettered"]}
    assert expected["accepted"] == 1 and expected["backlog"] == 1  # queued, no worker here to store it
    for secret in (reader, admin):
        response = secured.get("/", headers=bearer(secret))
        assert response.get_json()["pipeline"] == expected
        assert "no-store" in response.headers["Cache-Control"]
        assert "Authorization" in response.headers["Vary"]
        text = html(secured, **bearer(secret))
        assert "Pipeline" in text
        for name, value in expected.items():
            assert f'<td class="n">{value}</td>' in text, name


def test_with_keys_off_everyone_is_an_admin_and_sees_the_figures(client):
    assert set(client.get("/").get_json()["pipeline"]) == FIGURES


def test_the_page_still_answers_when_the_figures_cannot_be_read(client, monkeypatch):
    def down():
        raise ConnectionError("redis is down")

    monkeypatch.setattr(query, "stats", down)
    assert client.get("/").get_json()["pipeline"] is None
    assert "unavailable" in html(client)


def test_values_are_escaped_in_the_page(secured_settings, make_app, monkeypatch):
    monkeypatch.setattr(landing, "version", lambda: "<script>alert(1)</script>")
    evil = 'https://flower.example/"><script>alert(2)</script>'
    client = make_app(dataclasses.replace(secured_settings, flower_url=evil)).test_client()
    text = html(client)
    assert "<script" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'href="https://flower.example/&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"' in text
    assert Page(text).fetching == [] and evil in Page(text).hrefs  # one attribute, intact once unescaped
    assert client.get("/").get_json()["version"] == "<script>alert(1)</script>"  # JSON is JSON


@pytest.mark.e2e
@pytest.mark.slow
def test_through_nginx_browsers_get_the_page_and_curl_gets_json(base_settings, tmp_path):
    if nginx_binary() is None:
        pytest.fail("nginx is required for this test: apt-get install -y nginx")
    settings = dataclasses.replace(base_settings, key_prefix=base_settings.key_prefix + "landing:")
    stack = Stack({"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
                   "KEY_PREFIX": settings.key_prefix, "FLOWER_URL": "http://flower.test:5555"}, tmp_path)
    try:
        stack.start_api(0)
        stack.start_api(1)
        front = stack.start_nginx()
        page = requests.get(f"{front}/", headers={"Accept": BROWSER}, timeout=10)
        assert page.status_code == 200, page.text
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<title>Device log collector" in page.text
        assert {"/docs", "/openapi.json", "/metrics", "/health", "/livez",
                "http://flower.test:5555"} <= set(Page(page.text).hrefs)
        assert requests.get(f"{front}/docs", timeout=10).status_code == 200
        curl = requests.get(f"{front}/", headers={"Accept": "*/*", "User-Agent": "curl/8.5.0"}, timeout=10)
        assert curl.status_code == 200 and curl.headers["Content-Type"] == "application/json"
        assert curl.json()["flower"] == "http://flower.test:5555" and OLD_KEYS <= set(curl.json())
    finally:
        stack.stop()
