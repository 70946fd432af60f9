"""Reading the deployment files as their tools do, for the tests of docker-compose.yml,
the Dockerfile and the nginx template: compose's variable interpolation, its short and
long syntaxes, and nginx/run_local.py loaded as a module."""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import cache

import yaml

from collector.devtools.processes import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
RUN_LOCAL = ROOT / "nginx" / "run_local.py"


_INTERPOLATION = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")

# What `make up` writes to .env: the variables compose refuses to start without.
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "FLOWER_BASIC_AUTH": "admin:flower-secret",
           "METRICS_TOKEN": "metrics-secret"}


class MissingVariable(ValueError):
    """compose would refuse the file: a ${X:?message} variable is not set."""


def interpolate(value, env: dict[str, str] | None = None):
    """What compose makes of the file with only `env` set: ${X:-d} -> d, $$ -> $, and
    ${X:?message} -> MissingVariable when X is unset or empty."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            name, operator, argument = m.group(1) or m.group(4), m.group(2) or "", m.group(3) or ""
            if env.get(name):
                return env[name]
            if operator.endswith("?"):
                raise MissingVariable(f"{name}: {argument}")
            return argument
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


@cache
def compose_file() -> dict:
    """docker-compose.yml as written (variables not interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_services(env: dict[str, str] | None = None) -> dict[str, dict]:
    """The services as compose sees them with only the required secrets set (or `env`)."""
    return interpolate(compose_file()["services"], SECRETS if env is None else env)


def load_run_local():
    spec = importlib.util.spec_from_file_location("nginx_run_local", RUN_LOCAL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
