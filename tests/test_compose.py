"""docker-compose.yml, checked without a Docker engine.

The file is validated against the official compose-spec JSON schema (vendored by
check-jsonschema, so offline) and then against the invariants the collector
depends on: no eviction in Redis, loopback-only databases, one beat, scalable
workers, migrations before the apps, healthchecks behind every `depends_on`, and
monitoring that reaches every replica (Prometheus, Grafana: on loopback, fed from
monitoring/). The nginx service's template is checked in tests/test_nginx_config.py,
the image in tests/test_dockerfile.py, the files under monitoring/ in
tests/test_monitoring.py.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from collector.devtools.processes import ROOT
from tests.deployment import (
    COMPOSE_FILE,
    DOCKERFILE,
    SECRETS,
    MissingVariable,
    compose_file,
    compose_services,
    environment,
    tokens,
)

# Services whose command is the given Celery sub-command / the migrations.
APPS_AFTER_MIGRATIONS = ("api1", "api2", "worker", "beat")
API_SERVICES = ("api1", "api2")


# --- helpers -----------------------------------------------------------------

def depends_on(service: dict) -> dict[str, dict]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short syntax means service_started
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def published_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) of every published port, '' when not given."""
    result = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                result.append((str(port.get("host_ip", "")), str(port["published"]), str(port["target"])))
            continue
        parts = str(port).split("/", 1)[0].rsplit(":", 2)
        if len(parts) == 3:
            result.append(tuple(parts))
        elif len(parts) == 2:
            result.append(("", parts[0], parts[1]))
        # a bare container port is not published on a fixed host port
    return result


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck") or {}
    test = tokens(check.get("test"))
    return bool(test) and test[0] != "NONE" and not check.get("disable", False)


@pytest.fixture(scope="module")
def compose_raw() -> dict:
    return compose_file()


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    return compose_services()


@pytest.fixture(scope="module")
def app_services(services: dict) -> dict[str, dict]:
    """The services built from this repository."""
    return {name: s for name, s in services.items() if "build" in s}


def check_jsonschema(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *args],
        check=False, capture_output=True, text=True, timeout=120,
    )


# --- compose: schema -----------------------------------------------------------

def test_compose_file_matches_the_compose_spec():
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_rejects_an_invalid_file(tmp_path: Path):
    # The check above must be able to fail: an unknown key and a wrong type.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  api:\n    image: x\n    restart_policy: always\n    ports: 80\n")
    result = check_jsonschema("--builtin-schema", "vendor.compose-spec", str(bad))
    assert result.returncode != 0, result.stdout


def test_compose_file_has_no_obsolete_version_key(compose_raw: dict):
    assert "version" not in compose_raw


# --- compose: dependencies -------------------------------------------------------

def test_every_dependency_is_a_service(services: dict):
    for name, service in services.items():
        for target in depends_on(service):
            assert target in services, f"{name} depends on unknown service {target}"


def test_long_running_dependencies_are_waited_for_through_healthchecks(services: dict):
    for name, service in services.items():
        for target, dep in depends_on(service).items():
            condition = dep.get("condition")
            if condition == "service_completed_successfully":
                # a one-shot job: a restart policy would keep re-running it
                assert services[target].get("restart", "no") in ("no", "on-failure"), target
                continue
            assert condition == "service_healthy", f"{name} -> {target}: {condition}"
            assert has_healthcheck(services[target]), f"{target} has no healthcheck but {name} waits for it"


def test_apps_start_after_the_migrations(services: dict):
    migrate = services["migrate"]
    assert tokens(migrate["command"]) == ["python", "-m", "collector.migrate"]
    assert migrate.get("restart", "no") == "no"
    for name in APPS_AFTER_MIGRATIONS:
        assert depends_on(services[name]).get("migrate") == {"condition": "service_completed_successfully"}, name
    assert depends_on(migrate)["postgres"]["condition"] == "service_healthy"


def test_apps_use_the_compose_redis_and_postgres(services: dict, app_services: dict):
    postgres_env = environment(services["postgres"])
    for name, service in app_services.items():
        env = environment(service)
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        db = urlsplit(env["DATABASE_URL"])
        assert (db.scheme, db.hostname, db.port, db.path) == ("postgresql", "postgres", 5432, "/logs"), name
        assert (db.username, db.password) == (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_PASSWORD"]), name
    assert postgres_env["POSTGRES_DB"] == "logs"


def test_app_services_share_one_image(app_services: dict):
    assert set(APPS_AFTER_MIGRATIONS) | {"migrate", "flower"} <= set(app_services)
    builds = {(json.dumps(s["build"], sort_keys=True), s.get("image")) for s in app_services.values()}
    assert len(builds) == 1, builds


# --- compose: network exposure ----------------------------------------------------

def test_nginx_is_published_on_18723(services: dict):
    nginx = services["nginx"]
    listen = environment(nginx)["LISTEN"]
    assert ("18723", listen) in [(published, target) for _, published, target in published_ports(nginx)]


@pytest.mark.parametrize("name", ["redis", "postgres"])
def test_databases_are_not_published_on_the_host(services: dict, name: str):
    # Only the collector's services need them; `docker compose exec` reaches them for a look.
    assert published_ports(services[name]) == []


def test_only_nginx_and_loopback_tools_are_published(services: dict):
    published = {name: published_ports(service) for name, service in services.items() if published_ports(service)}
    assert set(published) == {"nginx", "flower", "prometheus", "grafana"}
    for name in ("flower", "prometheus", "grafana"):
        assert [host for host, _, _ in published[name]] == ["127.0.0.1"], name
    assert [(p, t) for _, p, t in published["prometheus"]] == [("9090", "9090")]
    assert [(p, t) for _, p, t in published["grafana"]] == [("3000", "3000")]


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(secret: str):
    with pytest.raises(MissingVariable, match=secret):
        compose_services({k: v for k, v in SECRETS.items() if k != secret})


def test_the_secrets_reach_the_services(services: dict):
    assert "pg-secret" in environment(services["api1"])["DATABASE_URL"]
    assert environment(services["postgres"])["POSTGRES_PASSWORD"] == "pg-secret"
    assert environment(services["flower"])["FLOWER_BASIC_AUTH"] == "admin:flower-secret"
    assert environment(services["api1"])["METRICS_TOKEN"] == "metrics-secret"
    assert environment(services["api1"])["AUTH_ENABLED"] == "true"


def test_api_instances_are_reached_only_through_nginx(services: dict):
    nginx_env = environment(services["nginx"])
    for number, name in enumerate(API_SERVICES, start=1):
        api = services[name]
        assert published_ports(api) == [], f"{name} would bypass nginx's limits"
        env = environment(api)
        assert env["BIND"] == "0.0.0.0:8000"
        assert env["INSTANCE_NAME"] == name
        assert nginx_env[f"API{number}_ADDR"] == f"{name}:8000"
        assert "http://127.0.0.1:8000/livez" in " ".join(tokens(api["healthcheck"]["test"]))
        assert depends_on(services["nginx"])[name]["condition"] == "service_healthy"


def test_recreating_one_api_container_does_not_restart_nginx(services: dict):
    """Hardening item 8: a `restart: true` dependency would restart nginx (dropping the
    other instance's requests) whenever compose recreates an API container; instead
    nginx re-resolves the API names at run time (`resolve`, nginx >= 1.27.3)."""
    nginx = services["nginx"]
    for name in API_SERVICES:
        assert "restart" not in depends_on(nginx)[name], f"recreating {name} would restart nginx"
    env = environment(nginx)
    assert env["UPSTREAM_RESOLVE"] == "resolve"
    assert env["UPSTREAM_RESOLVER"].startswith("resolver 127.0.0.11 ")  # Docker's embedded DNS
    version = re.match(r"nginx:(\d+)\.(\d+)", nginx["image"])
    assert version and (int(version[1]), int(version[2])) >= (1, 28), nginx["image"]
    template = (ROOT / "nginx" / "collector.conf.template").read_text()
    upstream = template[template.index("upstream collector_api"):template.index("server {")]
    assert upstream.count("${UPSTREAM_RESOLVE};") == 2 and "${UPSTREAM_RESOLVER}" in upstream


# --- compose: data safety ------------------------------------------------------------

def test_redis_never_evicts_and_persists(services: dict):
    command = " ".join(tokens(services["redis"]["command"]))
    assert "--maxmemory-policy noeviction" in command
    assert "--appendonly yes" in command
    assert "--maxmemory " in command
    assert "allkeys-" not in command and "volatile-" not in command


def test_postgres_keeps_durability(services: dict):
    command = tokens(services["postgres"]["command"])
    assert command[0] == "postgres"
    settings = dict(arg.split("=", 1) for prev, arg in itertools.pairwise(command) if prev == "-c")
    assert settings.get("synchronous_commit", "on") == "on"
    assert settings.get("fsync", "on") == "on"
    assert settings.get("full_page_writes", "on") == "on"
    assert int(settings["max_connections"]) >= 100


@pytest.mark.parametrize("name, path", [("redis", "/data"), ("postgres", "/var/lib/postgresql/data")])
def test_database_data_is_on_named_volumes(compose_raw: dict, services: dict, name: str, path: str):
    mounts = {}
    for volume in services[name].get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source")
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    assert path in mounts, f"{name} keeps {path} in the container"
    assert mounts[path] in (compose_raw.get("volumes") or {}), f"{mounts[path]} is not a named volume"


# --- compose: Celery -------------------------------------------------------------------

def celery_subcommand(service: dict) -> str | None:
    args = tokens(service.get("command"))
    if args[:1] != ["celery"]:
        return None
    return next((a for a in args[1:] if a in ("worker", "beat", "flower", "inspect", "events")), None)


def test_exactly_one_beat(services: dict):
    beats = [name for name, s in services.items() if celery_subcommand(s) == "beat"]
    embedded = [name for name, s in services.items()
                if celery_subcommand(s) == "worker" and {"-B", "--beat"} & set(tokens(s["command"]))]
    assert beats == ["beat"] and embedded == []
    beat = services["beat"]
    assert beat.get("scale", 1) == 1 and (beat.get("deploy") or {}).get("replicas", 1) == 1
    assert environment(beat)["BEAT_SCHEDULE_FILE"].startswith("/var/lib/collector/")
    assert "/var/lib/collector" in DOCKERFILE.read_text(), "the Dockerfile must create beat's writable directory"


def test_worker_can_be_scaled(services: dict):
    worker = services["worker"]
    args = tokens(worker["command"])
    assert celery_subcommand(worker) == "worker"
    assert "tasks.celery_app" in args
    # every replica needs its own container, hostname, node name and stream consumer
    assert "container_name" not in worker and "hostname" not in worker
    assert "INSTANCE_NAME" not in environment(worker)
    assert published_ports(worker) == []
    node = args[args.index("-n") + 1] if "-n" in args else ""
    assert "%h" in node


def test_flower_requires_basic_auth(services: dict):
    flower = services["flower"]
    args = tokens(flower["command"])
    assert celery_subcommand(flower) == "flower" and "--port=5555" in args
    auth = environment(flower).get("FLOWER_BASIC_AUTH") or next(
        (a.split("=", 1)[1] for a in args if a.startswith("--basic-auth=")), "")
    assert re.fullmatch(r"[^:,]+:[^,]+(,[^:,]+:[^,]+)*", auth), auth
    assert [(published, target) for _, published, target in published_ports(flower)] == [("5555", "5555")]


# --- compose: nginx ----------------------------------------------------------------------

def test_nginx_default_server_is_disabled(services: dict):
    # the image's default.conf would answer requests for Host: localhost
    nginx = services["nginx"]
    tmpfs = nginx.get("tmpfs") or []
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in nginx.get("volumes") or []]
    assert "/etc/nginx/conf.d" in [t.split(":")[0] for t in tmpfs] or "/etc/nginx/conf.d/default.conf" in targets


# --- compose: monitoring ---------------------------------------------------------------------------

MONITORING = ROOT / "monitoring"


def bind_mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (host path or volume name, read-only) of every short-syntax mount."""
    mounts = {}
    for volume in service.get("volumes") or []:
        source, target, *mode = volume.split(":")
        mounts[target] = (source, mode == ["ro"])
    return mounts


def scrape_config() -> dict:
    return yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())


def test_prometheus_runs_the_shipped_config_and_rules(compose_raw: dict, services: dict):
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", prometheus["image"]), prometheus["image"]
    args = tokens(prometheus["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in args
    assert "--storage.tsdb.path=/prometheus" in args
    mounts = bind_mounts(prometheus)
    assert mounts["/etc/prometheus"] == ("./monitoring/prometheus", True)
    assert (MONITORING / "prometheus" / "prometheus.yml").exists()
    assert scrape_config()["rule_files"] == ["alerts.yml"]  # beside it, so in /etc/prometheus too
    assert mounts["/prometheus"][0] in (compose_raw.get("volumes") or {})
    assert has_healthcheck(prometheus)


def test_prometheus_scrapes_every_api_and_worker_replica(services: dict):
    jobs = {job["job_name"]: job for job in scrape_config()["scrape_configs"]}
    api_names = [n for c in jobs["collector-api"]["dns_sd_configs"] for n in c["names"]]
    assert sorted(api_names) == sorted(API_SERVICES)
    for name in API_SERVICES:  # the port they bind inside the network
        assert environment(services[name])["BIND"] == f"0.0.0.0:{jobs['collector-api']['dns_sd_configs'][0]['port']}"
    worker_sd = jobs["collector-worker"]["dns_sd_configs"]
    assert [(c["names"], c["type"]) for c in worker_sd] == [(["worker"], "A")]  # A: every replica's address
    worker = services["worker"]
    port = str(worker_sd[0]["port"])
    assert environment(worker)["WORKER_METRICS_PORT"] == port
    assert port in [str(p) for p in worker.get("expose") or []]


def test_the_worker_metrics_server_listens_on_the_container_network(services: dict):
    # Its default is the container's loopback, which the prometheus container cannot reach.
    assert environment(services["worker"])["WORKER_METRICS_ADDR"] == "0.0.0.0"


def test_the_worker_reads_its_metrics_address():
    from collector.core.settings import load_settings
    assert load_settings({"WORKER_METRICS_ADDR": "0.0.0.0"}).worker_metrics_addr == "0.0.0.0"
    assert "worker_metrics_addr" in (ROOT / "tasks" / "celery_app.py").read_text()


def test_prometheus_scrapes_the_apis_with_the_metrics_token(compose_raw: dict, services: dict):
    # The secret comes from the same variable the APIs check (compose refuses to start without it).
    assert compose_raw["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert "metrics_token" in services["prometheus"]["secrets"]
    api = {job["job_name"]: job for job in scrape_config()["scrape_configs"]}["collector-api"]
    assert api["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    assert environment(services["api1"])["METRICS_TOKEN"] == "metrics-secret"


def test_grafana_is_provisioned_from_the_repository(compose_raw: dict, services: dict):
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == ("./monitoring/grafana/provisioning", True)
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/collector.yml").read_text())
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards] == ("./monitoring/grafana/dashboards", True)
    assert (MONITORING / "grafana/dashboards/collector.json").exists()
    datasource = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    url = urlsplit(datasource["datasources"][0]["url"])
    assert url.hostname in services and url.hostname == "prometheus"
    assert str(url.port) in [t for _, _, t in published_ports(services["prometheus"])]
    assert mounts["/var/lib/grafana"][0] in (compose_raw.get("volumes") or {})
    assert environment(grafana)["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert depends_on(grafana) == {"prometheus": {"condition": "service_healthy"}}
