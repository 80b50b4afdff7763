"""Builds the optional compiled hot path (fastrelay/hotpath.py explains it).

Cython compiles the same `.py` files that run when nothing is compiled. Each
extension is optional: without a C compiler the install still succeeds and
every module runs from its source. FASTRELAY_NO_COMPILE=1 skips the build.
The SHA-256 of each compiled source goes to fastrelay/_hotpath_build.py, so
that a build whose source changed since is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def _load_hotpath() -> ModuleType:
    """fastrelay/hotpath.py on its own (stdlib only), for its list of modules."""
    spec = importlib.util.spec_from_file_location("_hotpath", HERE / "fastrelay" / "hotpath.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOT_PATH: tuple[str, ...] = _load_hotpath().COMPILED
RECORD = HERE / "fastrelay" / "_hotpath_build.py"


def source(name: str) -> str:
    return name.replace(".", "/") + ".py"


def record_sources() -> None:
    lines = [
        '"""Written by setup.py: the SHA-256 of each compiled source (fastrelay/hotpath.py)."""',
        "",
        "SOURCES = {",
    ]
    for name in HOT_PATH:
        digest = hashlib.sha256((HERE / source(name)).read_bytes()).hexdigest()
        lines.append(f'    "{name}": "{digest}",')
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if not RECORD.exists() or RECORD.read_text() != text:
        RECORD.write_text(text)


def extensions() -> list[Extension]:
    if os.environ.get("FASTRELAY_NO_COMPILE", "") not in ("", "0"):
        RECORD.unlink(missing_ok=True)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    record_sources()
    built: list[Extension] = []
    for name in HOT_PATH:
        # One module at a time: one that does not translate (a .pxd out of step
        # with its .py, picows' .pxd missing) runs from source; the rest still build.
        try:
            built += cythonize(
                [Extension(name, [source(name)], optional=True)],
                quiet=True,
                language_level=3,
                compiler_directives={
                    # Annotations are for mypy here, not C types: the compiled
                    # module accepts exactly what its source does.
                    "annotation_typing": False,
                    "binding": True,
                },
            )
        except Exception as exc:  # Cython's CompileError, or anything it raises
            print(f"warning: {name} not compiled, it runs from source: {exc!r}", file=sys.stderr)
    return built


setup(ext_modules=extensions())
