"""The Dockerfile and .dockerignore, checked without a Docker engine: what the image
relies on (base image, command, a non-root user, dependencies from setup.cfg's
install_requires installed before the code is copied) and a build context that
keeps what the image needs and leaves local state out."""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deployment import DOCKERFILE, DOCKERIGNORE, ROOT

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
