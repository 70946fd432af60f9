"""nginx/collector.conf.template, rendered the two ways it is used: by the nginx
image's envsubst from docker-compose.yml's environment, and by nginx/run_local.py
for `make run` and the tests; the result must pass `nginx -t` (tests/test_nginx.py
runs it in front of real APIs)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest

from collector.devtools.processes import ROOT, nginx_binary
from tests.deployment import COMPOSE_FILE, compose_services, environment, load_run_local


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return compose_services()


def bind_mounts(service: dict) -> dict[str, Path]:
    """Container path -> host path of each of the service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes") or []:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        mounts[target] = (COMPOSE_FILE.parent / source).resolve()
    return mounts


def test_nginx_renders_the_template_run_local_uses(services: dict):
    nginx = services["nginx"]
    template = load_run_local().TEMPLATE
    mounts = {source: target for target, source in bind_mounts(nginx).items()}
    assert mounts.get(template.resolve()) == f"/etc/nginx/templates/{template.name}"
    # every ${VAR} of the template must be set, or the image leaves it unrendered
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", template.read_text()))
    assert needed and needed <= set(environment(nginx))


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx)")
def test_nginx_accepts_the_rendered_template(services: dict, tmp_path: Path):
    run_local = load_run_local()
    env = environment(services["nginx"])
    # `nginx -t` resolves upstream hosts, and api1/api2 exist only in the compose network
    for key in ("API1_ADDR", "API2_ADDR"):
        env[key] = "127.0.0.1:" + env[key].rsplit(":", 1)[1]
    # files the template includes are mounted into the container: use the mounted files
    mounts = bind_mounts(services["nginx"])
    env["TLS_SNIPPET"] = str(mounts[env["TLS_SNIPPET"]])
    # The image's nginx (1.28) re-resolves the API names; Debian's 1.22 here has no upstream
    # `resolve` (test_compose checks those two lines), so this checks everything else.
    env.update(UPSTREAM_RESOLVE="", UPSTREAM_RESOLVER="")
    rendered = run_local.render(run_local.TEMPLATE.read_text(), env)
    assert "${" not in rendered
    (tmp_path / "collector.conf").write_text(rendered)
    (tmp_path / "nginx.conf").write_text(run_local.MAIN.format(state=tmp_path, access_log="off"))
    result = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- every answer nginx makes itself is JSON (tests/test_front_door.py sends the requests) -------

TEMPLATE_TEXT = load_run_local().TEMPLATE.read_text()
# The statuses nginx itself answers with this template. Found before a location is
# chosen: a malformed request (400; 405 for TRACE; 505 for the version), the request
# line (414), the headers (494), plain HTTP to the HTTPS port (497), the transfer
# coding (501), its own failure (500), and 404 only for the error pages' own URIs.
# Found in `location /`: the body (400, 411, 413), the rate limit (429), the
# upstream (502-504), HTTP/0.9 (505).
BEFORE_A_LOCATION = {400, 404, 405, 411, 413, 414, 494, 497, 500, 501, 505}
IN_LOCATION = {400, 405, 411, 413, 429, 500, 501, 502, 503, 504, 505}


def nginx_map(name: str) -> dict[str, str]:
    """The entries of `map $status $<name> { ... }`, with nginx's quoting undone."""
    block = re.search(r"map \$status \$" + name + r" \{(.*?)\n\}", TEMPLATE_TEXT, re.S).group(1)
    entries = {}
    for key, quoted, bare in re.findall(r"^\s*(\w+)\s+(?:'([^']*)'|(\S*?));", block, re.M):
        entries[key] = quoted.replace("\\n", "\n") if quoted else bare.strip('"')
    return entries


def error_pages(text: str) -> dict[int, str]:
    """Status -> the target of its error_page (with `=code ` when nginx answers another status)."""
    pages = {}
    for codes, answered, uri in re.findall(r"^\s*error_page ((?:\d+ )+)(=\d+ )?(\S+);", text, re.M):
        pages.update({int(code): answered + uri for code in codes.split()})
    return pages


def test_every_status_nginx_answers_has_a_json_error_page():
    location = re.search(r"\n    location / \{\n(.*?)\n    \}\n", TEMPLATE_TEXT, re.S).group(1)
    in_location, server = error_pages(location), error_pages(TEMPLATE_TEXT.replace(location, ""))
    assert BEFORE_A_LOCATION <= set(server), BEFORE_A_LOCATION - set(server)
    assert IN_LOCATION <= set(in_location), IN_LOCATION - set(in_location)
    # Before a location, URIs: a redirect to a named location fails for a malformed
    # request line. In it, the named location: a URI would log a refused POST as a GET.
    assert all(target.split()[-1].startswith("/_errors/") for target in server.values()), server
    assert set(in_location.values()) == {"@json_error"}
    bodies = nginx_map("collector_error_body")
    for status, target in [*server.items(), *in_location.items()]:
        if not target.endswith("/_errors/https_required"):
            answered = int(target.split()[0][1:]) if target.startswith("=") else status
            assert str(answered) in bodies, f"no body for {status} (answered as {answered})"
    # both locations answer the same way
    named, uri = location_directives("@json_error"), location_directives("= /_errors/json")
    assert uri - named == {"internal;"} and named <= uri


def location_directives(name: str) -> set[str]:
    block = re.search(r"\n    location " + re.escape(name) + r" \{(.*?)\n    \}", TEMPLATE_TEXT, re.S).group(1)
    return {line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")}


def test_every_error_body_is_our_json_shape():
    bodies = nginx_map("collector_error_body")
    assert "default" in bodies
    for status, text in bodies.items():
        body = json.loads(text)
        assert set(body) == {"error", "message"} and re.fullmatch(r"[a-z_]+", body["error"]), (status, body)
    https = re.search(r"location = /_errors/https_required \{.*?return 400 '([^']*)';", TEMPLATE_TEXT, re.S)
    assert json.loads(https.group(1).replace("\\n", "\n"))["error"] == "https_required"
    assert nginx_map("collector_retry_after") == {"default": "", "429": "1", "502": "5", "503": "5", "504": "5"}


def gunicorn_settings() -> dict[str, object]:
    """gunicorn.conf.py's literal assignments (executing it would create its metrics dir)."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    return {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)}


def test_gunicorn_limits_are_looser_than_anything_nginx_forwards():
    count, size = map(int, re.search(r"^\s*large_client_header_buffers (\d+) (\d+);", TEMPLATE_TEXT, re.M).groups())
    gunicorn = gunicorn_settings()
    # A line nginx accepts is at most size - 1 bytes before its line end (a bare LF);
    # nginx forwards the request line as it came (or shorter), a header line with at
    # most one byte more (the space it puts after the colon), and Gunicorn counts a
    # header line with its CRLF. 8190 is the longest request line Gunicorn accepts.
    assert size - 1 <= gunicorn["limit_request_line"] <= 8190
    assert gunicorn["limit_request_field_size"] >= size + 2
    # nginx counts bytes (at most count x size of headers), at least 3 per header line.
    assert gunicorn["limit_request_fields"] >= count * size // 3
    assert gunicorn["worker_class"] == "collector.web.gunicorn_worker.JsonErrorWorker"
