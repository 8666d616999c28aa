"""The layout rules, checked: torch-free imports, one-way dependencies, no import cycle.

The rooms, from the ground up: ``careloop`` (settings, database, accounts, audit, queues: the
foundation, which imports nothing of ours above it); ``serving`` (what answers), then ``adapters``
(which version is live: the registry and rollout, which serving never imports: it is handed the
adapters to load at start); the domains ``feedback``, ``library`` (the medical library and
retrieval, which the bot, the trainer and review generation use and which uses no other domain),
``trainer``, ``bot``; and ``cli`` (the ``careloop`` command, ``careloop up``, doctor) on top, which
no other package imports. Every import counts, the lazy ones inside functions and the type-checking
ones too: an arrow is an arrow whenever it is followed.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["careloop", "serving", "adapters", "feedback", "library", "trainer", "bot", "cli"]
DOMAINS = {"serving", "adapters", "feedback", "library", "trainer", "bot"}
# package -> packages it must never import
FORBIDDEN = {"careloop": DOMAINS | {"cli"}, "serving": {"adapters", "bot", "trainer", "feedback", "library", "cli"},
             "adapters": {"bot", "trainer", "feedback", "library", "cli"},
             "feedback": {"bot", "trainer", "cli"}, "library": DOMAINS - {"library"} | {"cli"},
             "trainer": {"bot", "cli"}, "bot": {"cli"}}
# package -> the only modules of another package it may import
ONLY = {("trainer", "feedback"): {"feedback.export", "feedback.in_flight"}}  # its data, and what is on its way
# package -> modules of ours it must never import, even where its package may be imported
NEVER = {"bot": {"feedback.store"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """The modules of this repository that ``module`` imports, anywhere in it."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `from pkg import module` or `from module import name`
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    offenders = [f"{module} imports {target}" for module, targets in GRAPH.items()
                 if module.split(".")[0] == package for target in targets
                 if target.split(".")[0] in FORBIDDEN[package]]
    assert not offenders, offenders


@pytest.mark.parametrize(("package", "other"), sorted(ONLY))
def test_only_the_allowed_modules_of_another_package(package, other):
    offenders = [f"{module} imports {target}" for module, targets in GRAPH.items()
                 if module.split(".")[0] == package for target in targets
                 if target.split(".")[0] == other and target not in ONLY[(package, other)]
                 and target != other]
    assert not offenders, offenders


@pytest.mark.parametrize("package", sorted(NEVER))
def test_modules_a_package_never_imports(package):
    """The bot reads feedback through feedback's functions, never its tables (``feedback.store``)."""
    offenders = [f"{module} imports {target}" for module, targets in GRAPH.items()
                 if module.split(".")[0] == package for target in targets & NEVER[package]]
    assert not offenders, offenders


def test_the_server_is_handed_its_adapters():
    """Serving answers and never asks which version is live: nothing under ``serving`` imports the
    registry (``careloop serve`` reads it and hands the live version to ``serving.server.main``)."""
    offenders = [module for module, targets in GRAPH.items()
                 if module.split(".")[0] == "serving" and "adapters.registry" in targets]
    assert not offenders, offenders
    assert "adapters.registry" in GRAPH["cli.services"]


def test_no_import_cycle():
    """Depth-first search over the module graph; a back edge is a cycle, reported as its path."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, cycles


@pytest.mark.parametrize("module", ["bot", "bot.app", "feedback", "feedback.producer", "serving.client",
                                    "adapters.registry", "adapters.rollout", "careloop.settings", "careloop.db",
                                    "careloop.queues", "library.index", "library.documents", "library.grounding",
                                    "library.postgres", "cli.main"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"importing {module} imported torch\n{result.stderr}"


def test_every_top_level_package_exists():
    for package in PACKAGES:
        assert (REPO_ROOT / package / "__init__.py").is_file(), package
