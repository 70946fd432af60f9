"""`make install`'s check for the system programs the project needs.

Two kinds: what the stack runs (redis-server, PostgreSQL's initdb and pg_ctl, nginx),
without which `make run` cannot start, and what the tests use besides (Prometheus's
promtool and prometheus, Alertmanager's amtool: tests/test_monitoring.py checks the
files under monitoring/ with them and scrapes a real stack; Chromium and its driver,
chromedriver: tests/test_browser.py opens the landing page, Swagger UI, Flower and
Locust's web UI in a real, headless browser).

Where one is missing it prints the one command that installs them on this platform
(Debian/Ubuntu apt, Fedora dnf, macOS brew): a program the stack runs fails the check,
instead of a traceback later in `make run`; a test tool only warns, since `make run`
does not need it (`make test` fails without it, naming the package). Run as root on
Debian/Ubuntu (CI, a fresh VM) it installs them itself.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from collector.devtools.processes import nginx_binary, redis_server_binary
from collector.devtools.servers import postgres_bin

# What the stack runs, and what only the tests use.
STACK = ("redis-server", "initdb/pg_ctl", "nginx")
TEST_TOOLS = ("promtool/prometheus", "amtool", "chromium", "chromedriver", "wrk")

# program -> package, per package manager
PACKAGES = {
    "apt": {"redis-server": "redis-server", "initdb/pg_ctl": "postgresql", "nginx": "nginx",
            "promtool/prometheus": "prometheus", "amtool": "prometheus-alertmanager", "chromium": "chromium",
            "chromedriver": "chromium-driver", "wrk": "wrk"},
    "dnf": {"redis-server": "redis", "initdb/pg_ctl": "postgresql-server", "nginx": "nginx",
            "promtool/prometheus": "golang-github-prometheus", "amtool": "golang-github-prometheus-alertmanager",
            "chromium": "chromium", "chromedriver": "chromedriver", "wrk": "wrk"},
    "brew": {"redis-server": "redis", "initdb/pg_ctl": "postgresql@15", "nginx": "nginx",
             "promtool/prometheus": "prometheus", "amtool": "alertmanager", "chromium": "chromium",
             "chromedriver": "chromedriver", "wrk": "wrk"},
}
COMMANDS = {"apt": "sudo apt-get install -y", "dnf": "sudo dnf install -y", "brew": "brew install"}
WHY = {STACK: "The stack runs them",
       TEST_TOOLS: "The tests use them (tests/test_monitoring.py, tests/test_browser.py, tests/test_bench_wrk.py)"}


def found() -> dict[str, bool]:
    return {
        "redis-server": Path(redis_server_binary()).exists(),
        "initdb/pg_ctl": postgres_bin() is not None,
        "nginx": nginx_binary() is not None,
        "promtool/prometheus": shutil.which("promtool") is not None and shutil.which("prometheus") is not None,
        "amtool": shutil.which("amtool") is not None,
        "chromium": shutil.which("chromium") is not None or shutil.which("chromium-browser") is not None,
        "chromedriver": shutil.which("chromedriver") is not None,
        "wrk": shutil.which("wrk") is not None,
    }


def package_manager(system: str | None = None, os_release: str | None = None) -> str | None:
    system = system or platform.system()
    if system == "Darwin":
        return "brew"
    if os_release is None:
        path = Path("/etc/os-release")
        os_release = path.read_text() if path.exists() else ""
    ids = " ".join(line.split("=", 1)[1].strip('"').lower() for line in os_release.splitlines()
                   if line.startswith(("ID=", "ID_LIKE=")))
    if any(name in ids.split() for name in ("debian", "ubuntu")):
        return "apt"
    if any(name in ids.split() for name in ("fedora", "rhel", "centos")):
        return "dnf"
    return None


def install_command(manager: str | None, missing: list[str]) -> str:
    if manager is None:
        return f"install {', '.join(missing)} with your system's package manager"
    return f"{COMMANDS[manager]} {' '.join(PACKAGES[manager][program] for program in missing)}"


def _apt_install(missing: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    stack = [PACKAGES["apt"][p] for p in missing if p in STACK]
    tools = [PACKAGES["apt"][p] for p in missing if p in TEST_TOOLS]
    if stack:
        subprocess.run(["apt-get", "install", "-y", "-qq", *stack], env=env, check=False)
    if tools:
        # Only the binaries: Prometheus's recommended exporters, Chromium's fonts and
        # extras are not what the tests need.
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *tools], env=env,
                       check=False)


def check(say: Callable[[str], None] = print, lookup: Callable[[], dict[str, bool]] = found,
          manager: str | None = None, as_root: bool | None = None) -> int:
    """0 when everything the stack runs is here (missing test tools are named, not fatal)."""
    missing = [program for program, ok in lookup().items() if not ok]
    if not missing:
        return 0
    manager = manager or package_manager()
    as_root = os.geteuid() == 0 if as_root is None else as_root
    if manager == "apt" and as_root and shutil.which("apt-get"):
        say(f"installing {', '.join(missing)} (apt-get, as root)")
        _apt_install(missing)
        missing = [program for program, ok in lookup().items() if not ok]
        if not missing:
            return 0
    for kind in (STACK, TEST_TOOLS):
        these = [program for program in missing if program in kind]
        if these:
            say(f"missing: {', '.join(these)}. {WHY[kind]}; install them with:\n"
                f"    {install_command(manager, these)}")
    return 1 if any(program in STACK for program in missing) else 0


if __name__ == "__main__":
    sys.exit(check())
