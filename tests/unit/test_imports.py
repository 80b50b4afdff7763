"""No program imports another: agent/, client_a/ and the shared fastrelay/ stay apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> top-level packages its modules must not import
FORBIDDEN = {
    "agent": {"client_a"},
    "client_a": {"agent"},
    "fastrelay": {"agent", "client_a"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level package of every import in ``path``, wherever it sits (functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_other_program(package: str) -> None:
    sources = sorted((ROOT / package).rglob("*.py"))
    assert sources
    offenders = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources
        for name in imported_packages(path) & FORBIDDEN[package]
    }
    assert not offenders


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from client_a.rules import Rules\n    import agent.app\n")
    assert imported_packages(source) == {"client_a", "agent"}


def test_every_program_registers_itself() -> None:
    from fastrelay.programs import programs

    assert list(programs()) == ["relay", "agent", "client", "demo"]
