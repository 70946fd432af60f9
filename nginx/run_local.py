"""Run nginx in the foreground for `make run`, with the same template docker-compose uses.

Renders nginx/collector.conf.template the way the nginx image's envsubst does
(${VAR} only), wraps it in a minimal main config that keeps every file under
var/nginx/ (so no root and no system nginx config are needed), and execs nginx.

The template's variables default to the `make run` stack (APIs on :8001 and :8002,
nginx on 127.0.0.1:18723, the seed's 10000r/s with a burst of 2000); any of them
set in the environment wins (the tests start nginx with their own ports and rate).
The access log is off unless NGINX_ACCESS_LOG names a file (or /dev/stdout): then
it gets the template's JSON lines (collector_json). With TLS_CERT and TLS_KEY (paths
to a PEM certificate and its key) the port serves HTTPS only, and plain HTTP to it
is refused with a JSON 400.
"""

import os
import re
import sys
from pathlib import Path

from collector.devtools.processes import nginx_binary

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "nginx" / "collector.conf.template"

MAIN = """\
daemon off;
worker_processes auto;
pid {state}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    # Only requests outside the collector's server would use this; the server's own
    # access_log (the template's ${{ACCESS_LOG_PARAMS}}) is the one that counts.
    access_log off;
    client_body_temp_path {state}/client_body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;
    include {state}/collector.conf;
}}
"""


# The template's variables for `make run`; docker-compose.yml sets its own.
DEFAULTS = {
    "API1_ADDR": "127.0.0.1:8001",
    "API2_ADDR": "127.0.0.1:8002",
    "LISTEN": "127.0.0.1:18723",
    "RATE_LIMIT": "10000r/s",
    "RATE_BURST": "2000",
    # Fixed loopback addresses: nothing to re-resolve (and Debian's nginx 1.22 has no `resolve`).
    "UPSTREAM_RESOLVE": "",
    "UPSTREAM_RESOLVER": "",
}


def access_log_params(path: str) -> str:
    """The template's ${ACCESS_LOG_PARAMS}: `off`, or the file with the JSON-lines format."""
    if not path.strip() or path.strip() == "off":
        return "off"
    if not path.startswith("/"):
        path = str(Path(path).resolve())  # relative to where we were started, not to nginx's prefix
    return f"{path} collector_json"


def tls_settings(env: dict, state: Path) -> dict[str, str]:
    """The template's ${LISTEN_TLS} and ${TLS_SNIPPET} for TLS_CERT / TLS_KEY (or plain HTTP)."""
    cert, key = env.get("TLS_CERT", "").strip(), env.get("TLS_KEY", "").strip()
    if bool(cert) != bool(key):
        sys.exit("TLS needs both TLS_CERT and TLS_KEY (paths to a PEM certificate and its key)")
    if not cert:
        return {"LISTEN_TLS": "", "TLS_SNIPPET": str(ROOT / "nginx" / "tls-off.conf")}
    snippet = state / "tls.conf"
    snippet.write_text(f"ssl_certificate {Path(cert).resolve()};\nssl_certificate_key {Path(key).resolve()};\n"
                       "ssl_protocols TLSv1.2 TLSv1.3;\nssl_session_cache shared:collector_tls:10m;\n")
    return {"LISTEN_TLS": "ssl", "TLS_SNIPPET": str(snippet)}


def render(template: str, env: dict) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in env:
            sys.exit(f"nginx template needs ${{{name}}} in the environment")
        return env[name]

    return re.sub(r"\$\{([A-Z0-9_]+)\}", value, template)


def main() -> None:
    nginx = nginx_binary()
    if nginx is None:
        sys.exit("nginx is not installed: sudo apt-get install -y nginx (Debian/Ubuntu) or brew install nginx")
    env = {**DEFAULTS, "ACCESS_LOG_PARAMS": access_log_params(os.environ.get("NGINX_ACCESS_LOG", "")),
           **os.environ}
    state = Path(env.get("NGINX_STATE_DIR", ROOT / "var" / "nginx")).resolve()
    state.mkdir(parents=True, exist_ok=True)
    env.update(tls_settings(env, state))
    (state / "collector.conf").write_text(render(TEMPLATE.read_text(), env))
    main_conf = MAIN.format(state=state)
    if os.geteuid() == 0:
        # Started as root (a container, CI), nginx would run its workers as nobody or
        # www-data, which cannot write the temp files (a chunked or large request body,
        # a large response) under a private state dir such as pytest's: that request
        # fails with a 500. Locally, workers run as whoever started nginx.
        main_conf = "user root;\n" + main_conf
    (state / "nginx.conf").write_text(main_conf)
    os.execv(nginx, [nginx, "-p", str(state), "-c", str(state / "nginx.conf"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
