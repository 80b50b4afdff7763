"""The compiled hot path (fastrelay/hotpath.py): the same source compiled, the
source itself with FASTRELAY_PURE_PYTHON=1, and never a build older than its source.

`make test` sets FASTRELAY_EXPECT_COMPILED=1 for its main pass, so a build
that silently failed fails here instead of leaving the suite on the fallback.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys

import pytest

import fastrelay.protocol
from fastrelay import hotpath

IMPORT_ALL = (
    "import importlib, fastrelay.hotpath as h\n"
    "for name in h.COMPILED: importlib.import_module(name)\n"
    "import sys\n"
    "print(h.mode())\n"
    "for name in h.COMPILED: print(sys.modules[name].__file__)\n"
)


def run_python(code: str, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k != hotpath.PURE_ENV}
    environment.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    return out.stdout.split()


def test_pure_python_imports_every_hot_module_from_its_source() -> None:
    mode, *files = run_python(IMPORT_ALL, FASTRELAY_PURE_PYTHON="1")
    assert mode == "python"
    assert len(files) == len(hotpath.COMPILED)
    assert all(file.endswith(".py") for file in files), files


@pytest.mark.skipif(
    os.environ.get("FASTRELAY_EXPECT_COMPILED") != "1",
    reason="make test's main pass checks the build (FASTRELAY_EXPECT_COMPILED=1)",
)
def test_the_install_built_every_hot_module() -> None:
    mode, *files = run_python(IMPORT_ALL)
    assert mode == "compiled", files
    assert all(file.endswith(".so") for file in files), files


def test_the_source_finder_serves_only_its_modules_and_only_from_source() -> None:
    finder = hotpath.SourceFinder(frozenset({"fastrelay.protocol.frames"}))
    path = list(fastrelay.protocol.__path__)
    spec = finder.find_spec("fastrelay.protocol.frames", path)
    assert spec is not None and spec.origin is not None
    assert spec.origin.endswith(os.path.join("protocol", "frames.py"))
    assert isinstance(spec.loader, importlib.machinery.SourceFileLoader)
    assert finder.find_spec("fastrelay.protocol.flow", path) is None  # not named
    assert finder.find_spec("fastrelay.protocol.frames", None) is None  # top level: no folder
    assert finder.find_spec("fastrelay.protocol.frames", ["/nonexistent"]) is None


def test_a_build_whose_source_changed_is_stale() -> None:
    current = {name: hotpath.source_hash(name) for name in hotpath.COMPILED}
    assert hotpath.stale_builds(current) == frozenset()
    edited = dict(current, **{"fastrelay.io.mux": "0" * 64})
    assert hotpath.stale_builds(edited) == frozenset({"fastrelay.io.mux"})
    assert hotpath.stale_builds({}) == frozenset(hotpath.COMPILED)  # a record from elsewhere


def test_a_stale_module_runs_from_source_and_the_mode_says_mixed() -> None:
    """A record whose hash for one module differs (its source was edited after
    the build): that module comes from source, the rest as built."""
    code = (
        "import sys, types, fastrelay.hotpath as h\n"
        "record = types.ModuleType('fastrelay._hotpath_build')\n"
        "record.SOURCES = {n: h.source_hash(n) for n in h.COMPILED}\n"
        "record.SOURCES['fastrelay.io.mux'] = '0' * 64\n"
        "sys.modules['fastrelay._hotpath_build'] = record\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, h.SourceFinder)]\n"
        "h.install()\n"
        "import fastrelay.io.mux, fastrelay.protocol.frames\n"
        "print(fastrelay.io.mux.__file__.endswith('.py'))\n"
        "print(h.mode())\n"
    )
    from_source, mode = run_python(code)
    assert from_source == "True"
    built = run_python(IMPORT_ALL)[0] == "compiled"
    assert mode == ("mixed" if built else "python")
