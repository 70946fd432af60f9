"""The console at /console: a page to list devices, read and filter their logs and tail them live.

No build step and nothing from elsewhere: the page, its script and its stylesheet are files
of this package (console_assets/, shipped by setup.cfg's package_data), served as they are.
The page talks to the API with the key typed into it (docs/console.md).

Every answer here carries a strict Content-Security-Policy: scripts, styles, images and
connections from this origin only, no inline script or style, no frames, no forms posting
anywhere, and Trusted Types, so that the browser itself refuses an HTML string given to
innerHTML and its kin (the script builds every element with textContent). Caching: the page
links each asset as `?v=<hash of its content>`, answered with a year's `immutable` cache, so
a new version of a file is a new URL; the page itself is revalidated on every load (ETag).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path, PurePosixPath

from flask import Response, request, send_from_directory
from werkzeug.security import safe_join

from collector.web.errors import ApiError

ASSETS = Path(__file__).with_name("console_assets")
PAGE = "console.html"
# What the asset route serves, by suffix; any other file (the page itself included) is a 404.
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",  # fetch and the live tail's EventSource
    "base-uri 'none'",
    "form-action 'none'",  # the forms are handled by the script, never submitted
    "frame-ancestors 'none'",
    "require-trusted-types-for 'script'",  # innerHTML = "<string>" throws
    "trusted-types 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
IMMUTABLE_SECONDS = 365 * 24 * 3600
# The page's links to its assets, as written in console.html: href="console/assets/NAME".
ASSET_LINK = re.compile(r'(?<=")console/assets/([A-Za-z0-9_.-]+)(?=")')


@lru_cache(maxsize=64)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """The content's hash, computed once per version of the file (its mtime and size)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def version_of(name: str) -> str | None:
    """The version (content hash) of the file `name` of console_assets/; None when there is no
    such file, or `name` leads outside the directory."""
    joined = safe_join(str(ASSETS), name)
    if joined is None:
        return None
    path = Path(joined)
    try:
        stat = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
    if not path.is_file():
        return None
    return _digest(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _render(page_version: str, asset_versions: tuple[tuple[str, str], ...]) -> tuple[bytes, str]:
    """The page with each asset link made `?v=<version>`, and its ETag."""
    versions = dict(asset_versions)
    html = (ASSETS / PAGE).read_text(encoding="utf-8")
    html = ASSET_LINK.sub(lambda m: f"{m[0]}?v={versions[m[1]]}" if versions.get(m[1]) else m[0], html)
    body = html.encode()
    return body, hashlib.sha256(body).hexdigest()[:16]


def _page() -> tuple[bytes, str]:
    page_version = version_of(PAGE)
    if page_version is None:
        raise ApiError(500, "console_missing", f"The console's page is missing from {ASSETS}: reinstall the package.")
    source = (ASSETS / PAGE).read_text(encoding="utf-8")
    names = sorted(set(ASSET_LINK.findall(source)))
    return _render(page_version, tuple((name, version_of(name) or "") for name in names))


def console() -> Response:
    """GET /console: the page (endpoint api.console, public: its API calls carry the key)."""
    body, etag = _page()
    response = Response(body, mimetype="text/html", headers=SECURITY_HEADERS)
    response.set_etag(etag)
    response.cache_control.no_cache = True  # revalidate: a new page names new asset versions
    return response.make_conditional(request)


def console_asset(name: str) -> Response:
    """GET /console/assets/<name>: the script, the stylesheet, the icon (endpoint api.console_asset)."""
    kind = TYPES.get(PurePosixPath(name).suffix)
    version = version_of(name) if kind is not None else None
    if version is None:
        raise ApiError(404, "not_found", "The console has no such file.", headers=SECURITY_HEADERS)
    pinned = request.args.get("v") == version  # a URL the page gave: this content forever
    response = send_from_directory(ASSETS, name, mimetype=kind, etag=version, conditional=True,
                                   max_age=IMMUTABLE_SECONDS if pinned else 0)
    if pinned:
        response.cache_control.immutable = True
    response.headers.update(SECURITY_HEADERS)
    return response
