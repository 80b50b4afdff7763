"""The compiled hot path, and the way back to pure Python.

`pip install` (setup.py) compiles the modules in `COMPILED` with Cython from
the very same `.py` source: there is no second implementation to drift. A
`.pxd` file beside a module declares, for the compiler only, which of its
classes become C extension types and the C types of their fields and of the
locals of the per-message methods (Cython's "augmenting .pxd"); the `.py`
says nothing of it. The build sits beside its source and Python imports it
first. A module runs from its `.py` source instead when:

- ``FASTRELAY_PURE_PYTHON=1`` is set: how the test suite proves the fallback,
  and how an operator rules the compiled code out;
- its source (`.py` and `.pxd`) changed since it was built, or its last build
  failed (the build records the SHA-256 of each source it built, in
  ``fastrelay/_hotpath_build.py``): a stale build never runs old code;
- a module whose `.pxd` cimports it runs from source: a build calls the C
  functions and types of the builds it cimports, which a `.py` does not have;
- nothing was built (no C compiler or Cython at install time,
  ``FASTRELAY_NO_COMPILE=1``), or there is no record of what was.

`mode()` says which one this process runs; every program's ready line names it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

# The per-frame path of the three programs; setup.py builds exactly these.
COMPILED = (
    "fastrelay.protocol.output",
    "fastrelay.protocol.frames",
    "fastrelay.protocol.messages",
    "fastrelay.protocol.flow",
    "fastrelay.protocol.state",
    "fastrelay.protocol.session",
    "fastrelay.protocol.switch",
    "fastrelay.io.mux",
    "fastrelay.io.tunnel",
    "fastrelay.io.carrier",
    "fastrelay.relay.peer",
)
PURE_ENV = "FASTRELAY_PURE_PYTHON"
_CIMPORT = re.compile(r"^\s*from\s+(fastrelay(?:\.\w+)+)\s+cimport\b", re.MULTILINE)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def source_path(name: str) -> str:
    """The `.py` file of a module in COMPILED."""
    parts = name.split(".")[1:]
    return os.path.join(_PACKAGE_DIR, *parts) + ".py"


def declarations_path(name: str) -> str:
    """The `.pxd` beside a module's source (it may not exist)."""
    return source_path(name)[: -len(".py")] + ".pxd"


def source_hash(name: str) -> str:
    """What a build of `name` is of: its `.py` and its `.pxd`, if any."""
    digest = hashlib.sha256()
    with open(source_path(name), "rb") as file:
        digest.update(file.read())
    try:
        with open(declarations_path(name), "rb") as file:
            digest.update(b"\0" + file.read())
    except FileNotFoundError:
        pass
    return digest.hexdigest()


def cimports(name: str) -> frozenset[str]:
    """The modules of COMPILED whose builds the build of `name` uses (its `.pxd`'s cimports)."""
    try:
        with open(declarations_path(name), encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return frozenset()
    return frozenset(found for found in _CIMPORT.findall(text) if found in COMPILED)


def pure_requested() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def stale_builds(built: dict[str, str]) -> frozenset[str]:
    """The modules of COMPILED that must run from source: those whose source no
    longer matches a recorded build, and every module that cimports one of them."""
    stale = set()
    for name in COMPILED:
        try:
            if built.get(name) != source_hash(name):
                stale.add(name)
        except OSError:
            stale.add(name)
    if not stale:
        return frozenset()
    uses = {name: cimports(name) for name in COMPILED}
    for _ in COMPILED:  # each round adds a layer of users; there are at most len(COMPILED)
        users = {name for name in COMPILED if uses[name] & stale} - stale
        if not users:
            break
        stale |= users
    return frozenset(stale)


class SourceFinder:
    """Finds the `.py` source of the modules in `names`, never their build."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in self.names or not path:
            return None
        name = fullname.rpartition(".")[2]
        for folder in path:
            source = os.path.join(folder, name + ".py")
            if os.path.exists(source):
                loader = importlib.machinery.SourceFileLoader(fullname, source)
                return importlib.util.spec_from_file_location(fullname, source, loader=loader)
        return None


def install() -> None:
    """Called by fastrelay/__init__.py, before any module of COMPILED loads."""
    if any(isinstance(finder, SourceFinder) for finder in sys.meta_path):
        return
    if pure_requested():
        names = frozenset(COMPILED)
    else:
        try:
            record = importlib.import_module("fastrelay._hotpath_build")  # written by setup.py
            built = record.SOURCES
        except (ImportError, AttributeError):
            # Nothing was built, or a build was left without its record (say, by a later
            # FASTRELAY_NO_COMPILE=1 build): no build of unknown source is used.
            built = {}
        names = stale_builds(built)
        if not names:
            return
    sys.meta_path.insert(0, SourceFinder(names))


def mode() -> str:
    """The hot path this process runs: "compiled" when every loaded module of COMPILED is a build,
    "python" when none is, "mixed" otherwise (a partial or stale build)."""
    kinds = {
        isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)
        for name in COMPILED
        if (module := sys.modules.get(name)) is not None
    }
    if kinds == {True}:
        return "compiled"
    if kinds == {False} or not kinds:
        return "python"
    return "mixed"
