"""Run nginx in the foreground for `make run`, with the same template docker-compose uses.

Renders nginx/collector.conf.template the way the nginx image's envsubst does
(${VAR} only), wraps it in a minimal main config that keeps every file under
var/nginx/ (so no root and no system nginx config are needed), and execs nginx.
"""

import os
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "collector.conf.template"

MAIN = """\
daemon off;
worker_processes auto;
pid {state}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log {access_log};
    client_body_temp_path {state}/client_body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    include {state}/collector.conf;
}}
"""


def render(template: str, env: dict) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in env:
            sys.exit(f"nginx template needs ${{{name}}} in the environment")
        return env[name]

    return re.sub(r"\$\{([A-Z0-9_]+)\}", value, template)


def main() -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        sys.exit("nginx is not installed: sudo apt-get install -y nginx (Debian/Ubuntu) or brew install nginx")
    env = {"API1_ADDR": "127.0.0.1:8001", "API2_ADDR": "127.0.0.1:8002", "LISTEN": "127.0.0.1:18723", **os.environ}
    state = Path(env.get("NGINX_STATE_DIR", ROOT / "var" / "nginx")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    (state / "collector.conf").write_text(render(TEMPLATE.read_text(), env))
    access_log = env.get("NGINX_ACCESS_LOG", "off")
    (state / "nginx.conf").write_text(MAIN.format(state=state, access_log=access_log))
    os.execv(nginx, [nginx, "-p", str(state), "-c", str(state / "nginx.conf"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
