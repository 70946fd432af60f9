"""The package's shape: layers one way, no import cycles, no import-time side effects.

Every import counts, including the ones inside functions: a function-local import
that hides a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from collector.devtools.processes import ROOT

# The layer order, lowest first. A module may import its own package and any lower
# layer; packages that share a layer (web and tasks) must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("collector.core",),
    ("collector.store",),
    ("collector.pipeline",),
    ("collector.web", "tasks"),
    ("collector",),  # the command-line modules: collector.migrate, collector.deadletters
]
# Tools for running the stack locally (bench, tests, make run): the service never imports them.
DEV_ONLY = "collector.devtools"
PACKAGES = ("collector", "tasks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Our modules that `name` imports anywhere in its body (module or function level)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            # `from pkg import mod` imports the module pkg.mod when there is one.
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.split(".")[0] in PACKAGES and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = source_files()
    known = set(files)
    return {name: {t for t in imports_of(name, path, known) if t in known} for name, path in files.items()}


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, owning package) by the longest matching package prefix."""
    best = None
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                if best is None or len(package) > len(best[1]):
                    best = (index, package)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        if module.startswith(DEV_ONLY):
            continue
        here, package = layer_of(module)
        for target in sorted(targets):
            if target.startswith(DEV_ONLY):
                problems.append(f"{module} imports the dev-only {target}")
                continue
            there, other = layer_of(target)
            if there > here or (there == here and other != package):
                problems.append(f"{module} ({package}) imports {target} ({other}), a higher or sibling layer")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = [stack.pop()]
            while component[-1] != node:  # node is on the stack, so this ends
                component.append(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_in_collector_or_tasks():
    assert cycles(import_graph()) == []


def test_layers_import_only_downwards():
    assert layer_violations(import_graph()) == []


def test_the_checks_catch_what_they_are_for():
    graph = {
        "collector.core.a": {"collector.web.b"},  # upwards
        "collector.web.b": {"collector.core.a", "tasks.drain"},  # a sibling layer
        "collector.pipeline.c": {"collector.devtools.processes"},  # dev-only
        "collector.store.d": {"collector.store.e"},
        "collector.store.e": {"collector.store.d"},  # a cycle inside one layer
    }
    assert cycles(graph) == [["collector.core.a", "collector.web.b"], ["collector.store.d", "collector.store.e"]]
    problems = "\n".join(layer_violations(graph))
    assert "collector.core.a (collector.core) imports collector.web.b" in problems
    assert "collector.web.b (collector.web) imports tasks.drain (tasks)" in problems
    assert "collector.pipeline.c imports the dev-only collector.devtools.processes" in problems


def test_function_local_imports_count(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from collector.web import app\n    import tasks.drain\n")
    assert imports_of("collector.core.m", module, {"collector.web.app", "tasks.drain"}) == {
        "collector.web.app", "tasks.drain"}


def test_no_module_is_over_about_400_lines():
    long = {name: n for name, path in source_files().items() if (n := len(path.read_text().splitlines())) > 420}
    assert long == {}


# Imported first, so that what the libraries do on their own import is not blamed on ours.
THIRD_PARTY = ("flask", "celery", "celery.signals", "kombu", "redis", "psycopg", "psycopg_pool", "marshmallow",
               "apispec", "apispec.ext.marshmallow", "orjson", "prometheus_client", "pythonjsonlogger.json",
               "yoyo", "swagger_ui_bundle", "requests", "werkzeug", "gevent")

SNAPSHOT = """
import atexit, json, logging, os, sys, tempfile

def snapshot():
    import prometheus_client
    from prometheus_client import values
    sockets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                sockets.append(fd)
        except OSError:  # the directory listing's own descriptor, closed by now
            pass
    return {
        "environ": dict(os.environ),
        "tmp": sorted(os.listdir(tempfile.gettempdir())),
        "cwd": sorted(os.listdir(".")),
        "sockets": len(sockets),
        "atexit": atexit._ncallbacks(),
        "value_class": repr(values.ValueClass),
        "registry": sorted(map(repr, prometheus_client.REGISTRY._collector_to_names)),
        "root_handlers": len(logging.getLogger().handlers),
        "logger_handlers": {n: len(logging.getLogger(n).handlers) for n in ("collector", "tasks", "celery")},
    }
"""


def our_modules() -> list[str]:
    return sorted(name for name in source_files() if not name.endswith("__main__"))


def test_importing_any_module_has_no_side_effects(tmp_path):
    code = SNAPSHOT + f"""
for lib in {THIRD_PARTY!r}:
    __import__(lib)
before = snapshot()
import importlib
for name in {our_modules()!r}:
    importlib.import_module(name)
after = snapshot()
print(json.dumps({{k: [before[k], after[k]] for k in before if before[k] != after[k]}}))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed == {}, f"importing our modules changed: {sorted(changed)}"


def test_the_side_effect_check_sees_a_side_effect(tmp_path):
    """The snapshot above would notice the old tasks.celery_app's os.environ and mkdtemp."""
    code = SNAPSHOT + """
before = snapshot()
import os, tempfile
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
after = snapshot()
print(json.dumps(sorted(k for k in before if before[k] != after[k])))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["environ", "tmp"]
