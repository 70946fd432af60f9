"""The Docker deployment, checked without a Docker engine.

docker-compose.yml is validated against the official compose-spec JSON schema
(vendored by check-jsonschema, so offline) and then against the invariants the
collector depends on: no eviction in Redis, loopback-only databases, one beat,
scalable workers, migrations before the apps, healthchecks behind every
`depends_on`, and the same nginx template as `make run`. The Dockerfile and
.dockerignore are checked for what the image relies on, and the nginx template
is run through `nginx -t` when nginx is installed.
"""

from __future__ import annotations

import configparser
import fnmatch
import importlib.util
import itertools
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RUN_LOCAL = ROOT / "nginx" / "run_local.py"

# Services whose command is the given Celery sub-command / the migrations.
APPS_AFTER_MIGRATIONS = ("api1", "api2", "worker", "beat")
API_SERVICES = ("api1", "api2")


# --- helpers -----------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value):
    """What compose makes of the file with none of its variables set: ${X:-d} -> d, $$ -> $."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            return m.group(2) or ""
        return _INTERPOLATION.sub(sub, value)
    return value


def tokens(command) -> list[str]:
    if command is None:
        return []
    return list(command) if isinstance(command, list) else shlex.split(command)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


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


def load_run_local():
    spec = importlib.util.spec_from_file_location("nginx_run_local", RUN_LOCAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose_raw: dict) -> dict[str, dict]:
    return interpolate(compose_raw["services"])


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


@pytest.mark.parametrize("name, published, target", [("redis", "16891", "6379"), ("postgres", "15467", "5432")])
def test_databases_are_published_on_loopback_only(services: dict, name: str, published: str, target: str):
    assert published_ports(services[name]) == [("127.0.0.1", published, target)]


def test_api_instances_are_reached_only_through_nginx(services: dict):
    nginx_env = environment(services["nginx"])
    for number, name in enumerate(API_SERVICES, start=1):
        api = services[name]
        assert published_ports(api) == [], f"{name} would bypass nginx's limits"
        env = environment(api)
        assert env["BIND"] == "0.0.0.0:8000"
        assert env["INSTANCE_NAME"] == name
        assert nginx_env[f"API{number}_ADDR"] == f"{name}:8000"
        assert "http://127.0.0.1:8000/health" in " ".join(tokens(api["healthcheck"]["test"]))
        assert depends_on(services["nginx"])[name]["condition"] == "service_healthy"


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

def test_nginx_renders_the_template_run_local_uses(services: dict):
    nginx = services["nginx"]
    template = load_run_local().TEMPLATE
    mounts = {}
    for volume in nginx.get("volumes") or []:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.split(":")[:2]
        mounts[(COMPOSE_FILE.parent / source).resolve()] = target
    assert mounts.get(template.resolve()) == f"/etc/nginx/templates/{template.name}"
    # every ${VAR} of the template must be set, or the image leaves it unrendered
    needed = set(re.findall(r"\$\{([A-Z0-9_]+)\}", template.read_text()))
    assert needed and needed <= set(environment(nginx))


def test_nginx_default_server_is_disabled(services: dict):
    # the image's default.conf would answer requests for Host: localhost
    nginx = services["nginx"]
    tmpfs = nginx.get("tmpfs") or []
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in nginx.get("volumes") or []]
    assert "/etc/nginx/conf.d" in [t.split(":")[0] for t in tmpfs] or "/etc/nginx/conf.d/default.conf" in targets


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx)")
def test_nginx_accepts_the_rendered_template(services: dict, tmp_path: Path):
    run_local = load_run_local()
    env = environment(services["nginx"])
    # `nginx -t` resolves upstream hosts, and api1/api2 exist only in the compose network
    for key in ("API1_ADDR", "API2_ADDR"):
        env[key] = "127.0.0.1:" + env[key].rsplit(":", 1)[1]
    rendered = run_local.render(run_local.TEMPLATE.read_text(), env)
    assert "${" not in rendered
    (tmp_path / "collector.conf").write_text(rendered)
    (tmp_path / "nginx.conf").write_text(run_local.MAIN.format(state=tmp_path, access_log="off"))
    result = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- Dockerfile -----------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped
        if current.endswith("\\"):
            current = current[:-1]
            continue
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return instructions


def index_of(instructions, keyword: str, predicate) -> int:
    return next(i for i, (k, args) in enumerate(instructions) if k == keyword and predicate(args))


def test_dockerfile_base_image_and_command():
    instructions = dockerfile_instructions()
    assert [args for k, args in instructions if k == "FROM"] == ["python:3.11-slim"]
    cmd = [args for k, args in instructions if k == "CMD"]
    assert [json.loads(c) for c in cmd] == [["gunicorn", "-c", "gunicorn.conf.py"]]
    env = {}
    for k, args in instructions:
        if k == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


def test_dockerfile_runs_as_a_non_root_user():
    instructions = dockerfile_instructions()
    users = [(i, args) for i, (k, args) in enumerate(instructions) if k == "USER"]
    assert users, "no USER: the app would run as root"
    position, user = users[-1]
    assert user.split(":")[0] not in ("root", "0")
    assert position > max(i for i, (k, _) in enumerate(instructions) if k == "RUN")
    assert any(k == "RUN" and "useradd" in args and user.split(":")[0] in args for k, args in instructions)


def test_dockerfile_installs_dependencies_before_copying_the_code():
    instructions = dockerfile_instructions()
    copy_metadata = index_of(instructions, "COPY", lambda a: "setup.cfg" in a.split() and "." not in a.split()[:-1])
    install_deps = index_of(instructions, "RUN", lambda a: "pip install" in a and "--no-deps" not in a)
    copy_code = index_of(instructions, "COPY", lambda a: a.split()[0] == ".")
    install_project = index_of(instructions, "RUN", lambda a: "pip install --no-deps" in a)
    assert copy_metadata < install_deps < copy_code < install_project
    # the image carries no test or dev tools
    for k, args in instructions:
        if k == "RUN":
            assert "[test" not in args and "[dev" not in args and "extras_require" not in args


def test_dockerfile_dependency_list_is_install_requires(tmp_path: Path):
    # Re-run the Dockerfile's own extraction on setup.cfg: a restructured setup.cfg
    # must not silently yield an empty or wrong requirements file.
    run = next(args for k, args in dockerfile_instructions() if k == "RUN" and "install_requires" in args)
    program = re.search(r'python -c "([^"]+)"', run).group(1)
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    output = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True,
                            check=True, timeout=60).stdout
    names = {Requirement(line).name.lower() for line in output.split("\n") if line.strip()}
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "setup.cfg")
    expected = {Requirement(line).name.lower()
                for line in parser["options"]["install_requires"].split("\n") if line.strip()}
    assert names == expected and {"gunicorn", "gevent", "celery", "flower", "yoyo-migrations"} <= names
    assert "pytest" not in names


# --- .dockerignore ------------------------------------------------------------------------------

def dockerignored(path: str) -> bool:
    """Approximates Docker's rules: later patterns win, `!` re-includes, a directory covers its files."""
    ignored = False
    candidates = [path] + [str(parent) for parent in Path(path).parents if str(parent) != "."]
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        patterns = {pattern, pattern[3:]} if pattern.startswith("**/") else {pattern}
        if any(fnmatch.fnmatchcase(c, p) for c in candidates for p in patterns):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("path", [".venv/bin/python", ".git/HEAD", "var/nginx/nginx.conf",
                                  "collector/__pycache__/app.cpython-311.pyc", "tests/test_api.py", ".env"])
def test_dockerignore_excludes_local_state(path: str):
    assert dockerignored(path)


def test_dockerignore_keeps_what_the_image_needs():
    needed = ["setup.cfg", "pyproject.toml", "gunicorn.conf.py", "collector/web/app.py", "collector/migrate.py",
              "tasks/celery_app.py", "migrations/0001.create-logs.sql", "README.md"]
    for k, args in dockerfile_instructions():
        if k == "COPY":
            sources = [s for s in args.split()[:-1] if not s.startswith("--") and s != "."]
            needed += sources
            assert all((ROOT / s).exists() for s in sources), sources
    assert [path for path in needed if dockerignored(path)] == []
