"""`make install`'s check for redis-server, PostgreSQL and nginx: one command to run, per platform."""

from __future__ import annotations

from collector.devtools import syscheck

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n'
UBUNTU = "ID=ubuntu\nID_LIKE=debian\n"
FEDORA = 'ID=fedora\n'


def test_the_platform_decides_the_package_manager():
    assert syscheck.package_manager("Linux", DEBIAN) == "apt"
    assert syscheck.package_manager("Linux", UBUNTU) == "apt"
    assert syscheck.package_manager("Linux", FEDORA) == "dnf"
    assert syscheck.package_manager("Darwin", "") == "brew"
    assert syscheck.package_manager("Linux", "ID=arch\n") is None


def test_missing_programs_name_the_one_command_that_installs_them():
    said = []
    lookup = {"redis-server": True, "initdb/pg_ctl": False, "nginx": False}.copy
    assert syscheck.check(said.append, lookup, manager="apt", as_root=False) == 1
    assert said == ["missing: initdb/pg_ctl, nginx. The stack runs them; install them with:\n"
                    "    sudo apt-get install -y postgresql nginx"]
    said.clear()
    assert syscheck.check(said.append, lookup, manager="brew", as_root=False) == 1
    assert said[0].endswith("brew install postgresql@15 nginx")
    said.clear()
    assert syscheck.check(said.append, lookup, manager="dnf", as_root=False) == 1
    assert said[0].endswith("sudo dnf install -y postgresql-server nginx")


def test_this_machine_has_everything_the_stack_runs():
    said = []
    assert syscheck.check(said.append) == 0 and said == []
