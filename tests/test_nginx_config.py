"""nginx/collector.conf.template, rendered the two ways it is used: by the nginx
image's envsubst from docker-compose.yml's environment, and by nginx/run_local.py
for `make run` and the tests; the result must pass `nginx -t` (tests/test_nginx.py
runs it in front of real APIs)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from collector.devtools.processes import nginx_binary
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
    rendered = run_local.render(run_local.TEMPLATE.read_text(), env)
    assert "${" not in rendered
    (tmp_path / "collector.conf").write_text(rendered)
    (tmp_path / "nginx.conf").write_text(run_local.MAIN.format(state=tmp_path, access_log="off"))
    result = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
