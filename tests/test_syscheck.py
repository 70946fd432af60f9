"""`make install`'s check for the system programs: redis-server, PostgreSQL and nginx (the
stack runs them) and promtool/prometheus, amtool, Chromium and chromedriver (the tests use
them); one command to run, per platform."""

from __future__ import annotations

import subprocess

from collector.devtools import syscheck

DEBIAN = 'PRETTY_NAME="Debian GNU/Linux 12"\nID=debian\n'
UBUNTU = "ID=ubuntu\nID_LIKE=debian\n"
FEDORA = 'ID=fedora\n'

EVERYTHING = dict.fromkeys(syscheck.STACK + syscheck.TEST_TOOLS, True)


def test_the_platform_decides_the_package_manager():
    assert syscheck.package_manager("Linux", DEBIAN) == "apt"
    assert syscheck.package_manager("Linux", UBUNTU) == "apt"
    assert syscheck.package_manager("Linux", FEDORA) == "dnf"
    assert syscheck.package_manager("Darwin", "") == "brew"
    assert syscheck.package_manager("Linux", "ID=arch\n") is None


def test_every_program_has_a_package_everywhere():
    for manager, packages in syscheck.PACKAGES.items():
        assert set(packages) == set(EVERYTHING), manager
    assert set(syscheck.found()) == set(EVERYTHING)


def test_missing_programs_name_the_one_command_that_installs_them():
    said = []
    lookup = {**EVERYTHING, "initdb/pg_ctl": False, "nginx": False}.copy
    assert syscheck.check(said.append, lookup, manager="apt", as_root=False) == 1
    assert said == ["missing: initdb/pg_ctl, nginx. The stack runs them; install them with:\n"
                    "    sudo apt-get install -y postgresql nginx"]
    said.clear()
    assert syscheck.check(said.append, lookup, manager="brew", as_root=False) == 1
    assert said[0].endswith("brew install postgresql@15 nginx")
    said.clear()
    assert syscheck.check(said.append, lookup, manager="dnf", as_root=False) == 1
    assert said[0].endswith("sudo dnf install -y postgresql-server nginx")


def test_missing_test_tools_are_named_but_do_not_stop_make_run():
    said = []
    lookup = {**EVERYTHING, "promtool/prometheus": False, "amtool": False}.copy
    assert syscheck.check(said.append, lookup, manager="apt", as_root=False) == 0
    assert said == ["missing: promtool/prometheus, amtool. The tests use them (tests/test_monitoring.py, "
                    "tests/test_browser.py, tests/test_bench_wrk.py); install them with:\n"
                    "    sudo apt-get install -y prometheus prometheus-alertmanager"]
    said.clear()
    assert syscheck.check(said.append, lookup, manager="brew", as_root=False) == 0
    assert said[0].endswith("brew install prometheus alertmanager")


def test_a_missing_browser_names_chromium_and_its_driver():
    said = []
    lookup = {**EVERYTHING, "chromium": False, "chromedriver": False}.copy
    assert syscheck.check(said.append, lookup, manager="apt", as_root=False) == 0
    assert said == ["missing: chromium, chromedriver. The tests use them (tests/test_monitoring.py, "
                    "tests/test_browser.py, tests/test_bench_wrk.py); install them with:\n"
                    "    sudo apt-get install -y chromium chromium-driver"]
    said.clear()
    assert syscheck.check(said.append, lookup, manager="dnf", as_root=False) == 0
    assert said[0].endswith("sudo dnf install -y chromium chromedriver")


def test_both_kinds_missing_get_a_command_each_and_fail():
    said = []
    lookup = {**EVERYTHING, "nginx": False, "amtool": False}.copy
    assert syscheck.check(said.append, lookup, manager="apt", as_root=False) == 1
    assert [line.splitlines()[1].strip() for line in said] == [
        "sudo apt-get install -y nginx", "sudo apt-get install -y prometheus-alertmanager"]


def test_as_root_on_debian_it_installs_what_is_missing(monkeypatch):
    commands = []
    monkeypatch.setattr(syscheck.subprocess, "run",
                        lambda argv, **kw: commands.append(argv) or subprocess.CompletedProcess(argv, 0))
    monkeypatch.setattr(syscheck.shutil, "which", lambda name: f"/usr/bin/{name}")
    answers = iter([{**EVERYTHING, "nginx": False, "promtool/prometheus": False, "chromium": False,
                     "chromedriver": False}, EVERYTHING])
    said = []
    assert syscheck.check(said.append, lambda: next(answers), manager="apt", as_root=True) == 0
    assert said == ["installing nginx, promtool/prometheus, chromium, chromedriver (apt-get, as root)"]
    assert commands == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "nginx"],
                        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus", "chromium",
                         "chromium-driver"]]


def test_this_machine_has_everything_the_stack_runs_and_the_tests_use():
    said = []
    assert syscheck.check(said.append) == 0 and said == []
