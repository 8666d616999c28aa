"""The layout rules of DESIGN.md, checked: torch-free imports and one-way dependencies."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["careloop", "serving", "feedback", "trainer", "bot"]
# package -> packages it must never import
FORBIDDEN = {"serving": {"bot", "trainer", "feedback"}, "feedback": {"bot", "trainer"},
             "careloop": {"bot", "trainer", "feedback", "serving"}}
# careloop's CLI is the shell that wires commands to every package, lazily.
SHELL_MODULES = {REPO_ROOT / "careloop" / "cli.py"}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    offenders = []
    for path in (REPO_ROOT / package).rglob("*.py"):
        if path in SHELL_MODULES:
            continue
        bad = _imported_packages(path) & FORBIDDEN[package]
        if bad:
            offenders.append(f"{path.relative_to(REPO_ROOT)} imports {sorted(bad)}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["bot", "bot.app", "feedback", "feedback.api", "serving.client", "serving.registry", "careloop.settings",
                                    "careloop.db", "careloop.cli"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"importing {module} imported torch\n{result.stderr}"


def test_every_top_level_package_exists():
    for package in PACKAGES:
        assert (REPO_ROOT / package / "__init__.py").is_file(), package
