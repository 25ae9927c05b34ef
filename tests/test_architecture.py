"""The package's floors (README, "Architecture"): imports point down only, the domain
runs without Dramatiq or a web framework, and no module imports itself in a circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_linter_contracts_hold() -> None:
    # The contracts live in pyproject.toml: floors as layers, the domain's forbidden
    # imports, and no cycles among siblings at any depth.
    command = ("import sys; from importlinter.cli import lint_imports; "
               "sys.exit(lint_imports(config_filenames=('pyproject.toml',), no_cache=True))")
    result = subprocess.run([sys.executable, "-c", command], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def module_cycles(package: str) -> list[list[str]]:
    """Every circle of imports among ``package``'s modules, function-level imports
    included (grimp reads every import statement)."""
    graph = grimp.build_graph(package)
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == "open":
                cycles.append(path[path.index(imported):] + [imported])
            elif imported not in state:
                visit(imported, path)
        path.pop()
        state[module] = "done"

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [])
    return cycles


def test_no_module_imports_itself_in_a_circle() -> None:
    # Also a package and its own modules, which the siblings contract does not see.
    assert module_cycles("outreach_actors") == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch) -> None:
    # The check above can fail: a package whose two modules import each other.
    package = tmp_path / "circular_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from circular_probe import b\n")
    (package / "b.py").write_text("from circular_probe import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert module_cycles("circular_probe") == [
        ["circular_probe.a", "circular_probe.b", "circular_probe.a"]]
