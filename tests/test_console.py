"""The console's page and files as the API serves them (/console, /console/assets/<name>):
headers (Content-Security-Policy, nosniff, caching), what the page may contain, what the
script may do, and that the package ships every file. tests/test_console_browser.py drives
it in a real browser."""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from collector.devtools.processes import ROOT
from collector.web import console

ASSETS = console.ASSETS
SCRIPT = (ASSETS / "console.js").read_text()
STYLE = (ASSETS / "console.css").read_text()


class Page(HTMLParser):
    """The page's elements with their attributes, and the text inside <script>/<style>."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:80]}")

    def ids(self) -> set[str]:
        return {attrs["id"] for _, attrs in self.elements if attrs.get("id")}


def get(client, url: str, **kwargs):
    """The response, read and closed (a file's response holds it open until closed)."""
    response = client.get(url, **kwargs)
    response.get_data()
    response.close()
    return response


def directives(csp: str) -> dict[str, list[str]]:
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in csp.split(";")) if d}


def assert_locked_down(response) -> None:
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert policy[name] == ["'self'"], name
    for name in ("base-uri", "form-action", "frame-ancestors"):
        assert policy[name] == ["'none'"], name
    assert policy["require-trusted-types-for"] == ["'script'"] and policy["trusted-types"] == ["'none'"]
    assert "unsafe" not in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


@pytest.fixture
def keyed_client(make_app, settings, db):
    """Keys on, as in production: the page and its files need none."""
    return make_app(dataclasses.replace(settings, auth_enabled=True)).test_client()


def test_the_page_is_public_locked_down_and_revalidated(keyed_client):
    page = keyed_client.get("/console")
    assert page.status_code == 200, page.data
    assert page.mimetype == "text/html" and page.mimetype_params["charset"] == "utf-8"
    assert_locked_down(page)
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-cache" and page.headers["ETag"]
    again = keyed_client.get("/console", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert keyed_client.head("/console").status_code == 200
    # The API the page calls is not public: its own key goes with each call.
    unkeyed = keyed_client.get("/api/devices")
    assert unkeyed.status_code == 401 and unkeyed.get_json()["error"] == "unauthorized"


def test_the_page_has_no_inline_script_or_style_and_nothing_from_elsewhere(client):
    html = client.get("/console").data.decode()
    page = Page(html)
    assert page.inline == []
    tags = [tag for tag, _ in page.elements]
    assert "style" not in tags and "iframe" not in tags and "object" not in tags
    for tag, attrs in page.elements:
        assert "style" not in attrs, (tag, attrs)
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)  # no inline handlers
        for name in ("src", "href", "action", "formaction"):
            url = attrs.get(name)
            if url is not None:
                # Relative to /console, on this origin: no CDN, no scheme, no javascript: URL.
                assert not re.match(r"^([a-z][a-z0-9+.-]*:|//)", url, re.I), (tag, name, url)
    scripts = [attrs for tag, attrs in page.elements if tag == "script"]
    assert scripts and all(s.get("src", "").startswith("console/assets/") for s in scripts)
    forms = [attrs for tag, attrs in page.elements if tag == "form"]
    assert forms and all("action" not in f and "method" not in f for f in forms)  # the script handles them


def test_every_field_has_a_label_and_the_script_finds_its_elements(client):
    page = Page(client.get("/console").data.decode())
    labelled = {attrs["for"] for tag, attrs in page.elements if tag == "label" and attrs.get("for")}
    for tag, attrs in page.elements:
        if tag in ("input", "select") and attrs.get("type") not in ("checkbox", "hidden"):
            assert attrs.get("id") in labelled, (tag, attrs)  # checkboxes sit inside their <label>
    # Every id the script looks up exists; every form field it reads is in the filter form.
    assert set(re.findall(r'\$\("([\w-]+)"\)', SCRIPT)) <= page.ids()
    names = {attrs.get("name") for tag, attrs in page.elements if tag in ("input", "select")}
    assert set(re.findall(r'field\("(\w+)"\)', SCRIPT)) <= names


def test_assets_are_served_with_their_type_and_cached_by_version(client):
    html = client.get("/console").data.decode()
    linked = dict(re.findall(r'"console/assets/([\w.-]+)\?v=([0-9a-f]{16})"', html))
    assert set(linked) == {"console.js", "console.css", "icon.svg"}
    types = {"console.js": "text/javascript", "console.css": "text/css", "icon.svg": "image/svg+xml"}
    for name, version in linked.items():
        pinned = get(client, f"/console/assets/{name}?v={version}")
        assert pinned.status_code == 200 and pinned.mimetype == types[name]
        assert pinned.data == (ASSETS / name).read_bytes()
        assert_locked_down(pinned)
        cache = pinned.headers["Cache-Control"]
        assert "immutable" in cache and "max-age=31536000" in cache and "public" in cache
        assert pinned.headers["ETag"] == f'"{version}"'
        # Without the version (or an old one) the browser must revalidate.
        for url in (f"/console/assets/{name}", f"/console/assets/{name}?v=0123456789abcdef"):
            loose = get(client, url)
            assert loose.status_code == 200 and "no-cache" in loose.headers["Cache-Control"], url
        revalidated = get(client, f"/console/assets/{name}", headers={"If-None-Match": f'"{version}"'})
        assert revalidated.status_code == 304


@pytest.mark.parametrize("path", [
    "/console/assets/nope.js",
    "/console/assets/console.html",  # the page is served at /console only
    "/console/assets/../console.py",
    "/console/assets/%2e%2e/console.py",
    "/console/assets/..%2fconsole.py",
    "/console/assets/..%2f..%2fconsole%2fconsole.py",
    "/console/assets/%2fetc%2fpasswd.js",
    "/console/assets/..%5cconsole.js",
    "/console/assets/.%2e/.%2e/.%2e/setup.cfg",
    "/console/assets/console.js%00.css",
])
def test_unknown_files_and_paths_out_of_the_directory_are_404(client, path):
    response = get(client, path, follow_redirects=True)  # %2f%2f is merged into one slash, by a redirect
    assert response.status_code == 404, (path, response.data[:200])
    assert response.get_json()["error"] == "not_found"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_a_changed_file_gets_a_new_version_in_the_page(client, tmp_path, monkeypatch):
    copy = tmp_path / "console_assets"
    shutil.copytree(ASSETS, copy)
    monkeypatch.setattr(console, "ASSETS", copy)
    before = client.get("/console")
    (copy / "console.js").write_text(SCRIPT + "\n// changed\n")
    after = client.get("/console")
    version = re.compile(r'console\.js\?v=(\w+)')
    assert version.search(before.data.decode())[1] != version.search(after.data.decode())[1]
    assert before.headers["ETag"] != after.headers["ETag"]
    assert get(client, "/console/assets/console.js").data.endswith(b"// changed\n")


def code_only(source: str) -> str:
    """The script without its comments (which may name what it must not do)."""
    source = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    return re.sub(r"(?m)^\s*//.*$|(?<=[;,{}()\s])//[^\n\"'`]*$", "", source)


def test_the_script_builds_the_page_from_text_only():
    code = code_only(SCRIPT)
    forbidden = [r"\.innerHTML\b", r"\.outerHTML\b", r"insertAdjacentHTML", r"document\.write", r"\beval\s*\(",
                 r"new\s+Function\b", r"createContextualFragment", r"DOMParser", r"\.srcdoc\b",
                 r"setAttribute\(\s*[\"'`]on", r"setTimeout\(\s*[\"'`]", r"setInterval\(\s*[\"'`]",
                 r"javascript:", r"\.style\.cssText", r"setAttribute\(\s*[\"'`]style"]
    found = [pattern for pattern in forbidden if re.search(pattern, code)]
    assert found == []
    # Text goes in as text: textContent and append(string); the check above found no HTML sink.
    assert "textContent" in code and ".append(" in code
    # Nothing from elsewhere: every URL the script fetches is relative to the page.
    assert not re.search(r"https?://", code)
    assert "sessionStorage" in code and "localStorage" not in code  # the key dies with the tab


def test_the_stylesheet_loads_nothing_from_elsewhere():
    assert "@import" not in STYLE
    assert not re.search(r"url\(", STYLE)


def test_the_script_calls_endpoints_that_exist(app):
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/api/logs", "/api/logs/<device_id>", "/api/logs/tail", "/api/logs/<device_id>/tail",
            "/api/devices"} <= rules
    for path in ('"api/logs"', '"api/logs/tail"', '"api/devices"', "`api/logs/${"):
        assert path in SCRIPT, path


def test_the_package_ships_every_console_file():
    """setup.cfg's package_data names every file of console_assets/ (an installed, not
    editable, package would otherwise serve a page without its script)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = config["options.package_data"]["collector.web"].split()
    package = Path(console.__file__).parent
    files = [p.relative_to(package).as_posix() for p in ASSETS.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, pattern) for pattern in patterns) for f in files), (files, patterns)
