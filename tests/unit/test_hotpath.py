"""The compiled hot path (fastrelay/hotpath.py): the same source compiled, the
source itself with FASTRELAY_PURE_PYTHON=1, and never a build older than its source.

`make test` sets FASTRELAY_EXPECT_COMPILED=1 for its main pass, so a build
that silently failed fails here instead of leaving the suite on the fallback.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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


def run_python(code: str, cwd: Path | None = None, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k != hotpath.PURE_ENV}
    environment.update(env)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
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
    edited = dict(current, **{"fastrelay.protocol.state": "0" * 64})
    assert hotpath.stale_builds(edited) >= {"fastrelay.protocol.state"}
    assert "fastrelay.protocol.flow" not in hotpath.stale_builds(edited)  # neither uses the other
    assert hotpath.stale_builds({}) == frozenset(hotpath.COMPILED)  # a record from elsewhere


def test_a_stale_build_takes_the_builds_that_cimport_it_to_source() -> None:
    """A build calls the C functions and types of the builds its .pxd cimports;
    with one of those from source it would not even import."""
    current = {name: hotpath.source_hash(name) for name in hotpath.COMPILED}
    frames_stale = dict(current, **{"fastrelay.protocol.frames": "0" * 64})
    assert hotpath.stale_builds(frames_stale) == {
        "fastrelay.protocol.frames",
        "fastrelay.protocol.session",  # cimports read_frame
        "fastrelay.protocol.switch",  # cimports read_frame
        "fastrelay.io.tunnel",  # cimports session's Stream
        "fastrelay.io.carrier",  # cimports session's Session
        "fastrelay.relay.peer",  # cimports switch's Conn and Switch
    }
    output_stale = dict(current, **{"fastrelay.protocol.output": "0" * 64})
    assert hotpath.stale_builds(output_stale) == {
        "fastrelay.protocol.output",
        "fastrelay.protocol.session",  # Session.out is an Output
        "fastrelay.protocol.switch",  # Conn.out is an Output
        "fastrelay.io.mux",  # MuxWriter extends Output
        "fastrelay.io.tunnel",
        "fastrelay.io.carrier",
        "fastrelay.relay.peer",
    }
    for name in hotpath.COMPILED:  # whatever goes stale, no build is left using a source
        stale = hotpath.stale_builds(dict(current, **{name: "0" * 64}))
        assert all(not hotpath.cimports(user) & stale for user in set(hotpath.COMPILED) - stale)


def test_the_cimports_are_read_from_each_pxd() -> None:
    assert hotpath.cimports("fastrelay.relay.peer") == {
        "fastrelay.io.mux",
        "fastrelay.protocol.switch",
    }  # picows' cimport is not a module of COMPILED
    assert hotpath.cimports("fastrelay.protocol.frames") == frozenset()


def test_a_build_is_of_its_pxd_as_well(tmp_path: Path) -> None:
    """Editing only a .pxd (a field's C type, a class made an extension type) stales the build."""
    code = "import fastrelay.hotpath as h\nprint(h.source_hash('fastrelay.io.mux'))\n"
    root = Path(hotpath.__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    shutil.copytree(
        root / "fastrelay", tree / "fastrelay", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    before = run_python(code, cwd=tree)[0]
    declarations = tree / "fastrelay" / "io" / "mux.pxd"
    declarations.write_text(declarations.read_text() + "\n# edited\n")
    assert run_python(code, cwd=tree)[0] != before


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


def builds_beside_sources() -> dict[str, Path]:
    """The build of each module of COMPILED beside its source, where there is one."""
    found = {}
    for name in hotpath.COMPILED:
        stem = hotpath.source_path(name)[: -len(".py")]
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if os.path.exists(stem + suffix):
                found[name] = Path(stem + suffix)
                break
    return found


@pytest.mark.skipif(
    len(builds_beside_sources()) != len(hotpath.COMPILED)
    or importlib.util.find_spec("Cython") is None,
    reason="needs the compiled hot path and Cython (make hotpath)",
)
def test_a_module_whose_rebuild_fails_runs_from_source_not_from_its_older_build(
    tmp_path: Path,
) -> None:
    """`make hotpath` after an edit: when a module's C compile fails (here: no
    compiler) setuptools warns and copies the older build beside the source again,
    and when a module no longer translates its older build stays where it was.
    Neither may be recorded under the new source's hash: both run from source."""
    root = Path(hotpath.__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    shutil.copytree(
        root / "fastrelay", tree / "fastrelay", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(root / name, tree / name)
    (tree / "fastrelay" / "_hotpath_build.py").unlink(missing_ok=True)
    # The earlier build where setuptools keeps it, newer than its C: up to date
    # for every module whose source is left alone.
    build_lib = tmp_path / "lib"
    for built in builds_beside_sources().values():
        target = build_lib / built.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, target)
    frames = tree / "fastrelay" / "protocol" / "frames.py"
    frames.write_text(frames.read_text() + "\n# edited after the build\n")
    tunnel = tree / "fastrelay" / "io" / "tunnel.py"  # its .pxd declares filled a cpdef function
    tunnel.write_text(tunnel.read_text() + "\nfilled = None  # valid Python, not for Cython\n")
    environment = dict(os.environ, CC="false", PYTHONWARNINGS="ignore")
    subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_ext", "--inplace", "--build-lib", build_lib],
        cwd=tree,
        env=environment,
        capture_output=True,
        timeout=300,
        check=True,
    )
    namespace: dict[str, dict[str, str]] = {}
    exec((tree / "fastrelay" / "_hotpath_build.py").read_text(), namespace)
    recorded = namespace["SOURCES"]
    failed = {"fastrelay.protocol.frames", "fastrelay.io.tunnel"}
    assert set(recorded) == set(hotpath.COMPILED) - failed
    mode, *files = run_python(IMPORT_ALL, cwd=tree, PYTHONPATH=str(tree))
    assert all(file.startswith(str(tree)) for file in files), files
    by_module = dict(zip(hotpath.COMPILED, files, strict=True))
    from_source = {name for name, file in by_module.items() if file.endswith(".py")}
    # and every module whose build uses theirs (hotpath.stale_builds)
    users = {"fastrelay.protocol.session", "fastrelay.protocol.switch", "fastrelay.io.carrier"}
    assert from_source == failed | users | {"fastrelay.relay.peer"}
    assert mode == "mixed"


def test_builds_without_a_record_are_not_used(tmp_path: Path) -> None:
    """A build left without its record (FASTRELAY_NO_COMPILE=1 deletes the record,
    not the builds) is of unknown source: every module runs from its .py."""
    root = Path(hotpath.__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    shutil.copytree(
        root / "fastrelay", tree / "fastrelay", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tree / "fastrelay" / "_hotpath_build.py").unlink(missing_ok=True)
    # Without the development install's finder, which would find the record beside the checkout.
    alone = (
        "import sys\nsys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
    )
    mode, *files = run_python(alone + IMPORT_ALL, cwd=tree, PYTHONPATH=str(tree))
    assert mode == "python"
    assert all(file.startswith(str(tree)) and file.endswith(".py") for file in files), files


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools")
def test_a_wheel_carries_each_pxd_its_build_is_checked_against(tmp_path: Path) -> None:
    """hotpath.source_hash covers the .pxd, so an installed package without its .pxd
    files would find every build stale and run everything from source."""
    root = Path(hotpath.__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    shutil.copytree(
        root / "fastrelay",
        tree / "fastrelay",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "_hotpath_build.py"),
    )
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(root / name, tree / name)
    for package in ("agent", "client_a"):
        (tree / package).mkdir()
        (tree / package / "__init__.py").write_text("")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*pip_wheel, "-w", str(tmp_path / "out"), str(tree)],
        env=dict(os.environ, FASTRELAY_NO_COMPILE="1", PYTHONWARNINGS="ignore"),
        capture_output=True,
        timeout=300,
        check=True,
    )
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    declared = {
        os.path.relpath(hotpath.declarations_path(name), root).replace(os.sep, "/")
        for name in hotpath.COMPILED
        if os.path.exists(hotpath.declarations_path(name))
    }
    assert declared and declared <= names, sorted(declared - names)
    assert not any(name.endswith(".c") for name in names)
