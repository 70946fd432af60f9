"""`make install`'s check for the system programs the stack runs: redis-server,
PostgreSQL's initdb and pg_ctl, and nginx.

Where one is missing it prints the one command that installs them on this platform
(Debian/Ubuntu apt, Fedora dnf, macOS brew) and fails, instead of a traceback later
in `make run`; run as root on Debian/Ubuntu (CI, a fresh VM) it installs them itself.
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

# program -> package, per package manager
PACKAGES = {
    "apt": {"redis-server": "redis-server", "initdb/pg_ctl": "postgresql", "nginx": "nginx"},
    "dnf": {"redis-server": "redis", "initdb/pg_ctl": "postgresql-server", "nginx": "nginx"},
    "brew": {"redis-server": "redis", "initdb/pg_ctl": "postgresql@15", "nginx": "nginx"},
}
COMMANDS = {"apt": "sudo apt-get install -y", "dnf": "sudo dnf install -y", "brew": "brew install"}


def found() -> dict[str, bool]:
    return {
        "redis-server": Path(redis_server_binary()).exists(),
        "initdb/pg_ctl": postgres_bin() is not None,
        "nginx": nginx_binary() is not None,
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


def check(say: Callable[[str], None] = print, lookup: Callable[[], dict[str, bool]] = found,
          manager: str | None = None, as_root: bool | None = None) -> int:
    missing = [program for program, ok in lookup().items() if not ok]
    if not missing:
        return 0
    manager = manager or package_manager()
    as_root = os.geteuid() == 0 if as_root is None else as_root
    command = install_command(manager, missing)
    if manager == "apt" and as_root and shutil.which("apt-get"):
        say(f"installing {', '.join(missing)} (apt-get, as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *(PACKAGES["apt"][p] for p in missing)], env=env,
                       check=False)
        missing = [program for program, ok in lookup().items() if not ok]
        if not missing:
            return 0
    say(f"missing: {', '.join(missing)}. The stack runs them; install them with:\n    {command}")
    return 1


if __name__ == "__main__":
    sys.exit(check())
