"""Builds the optional compiled hot path (fastrelay/hotpath.py explains it).

Cython compiles the same `.py` files that run when nothing is compiled. Each
extension is optional: without a C compiler the install still succeeds and
every module runs from its source. FASTRELAY_NO_COMPILE=1 skips the build.
The SHA-256 of each source whose build succeeded goes to
fastrelay/_hotpath_build.py, so that a build whose source changed since (or an
older build left in place by a failed one) is never used.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

HERE = Path(__file__).resolve().parent


def _load_hotpath() -> ModuleType:
    """fastrelay/hotpath.py on its own (stdlib only), for its list of modules."""
    spec = importlib.util.spec_from_file_location("_hotpath", HERE / "fastrelay" / "hotpath.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOTPATH = _load_hotpath()
HOT_PATH: tuple[str, ...] = HOTPATH.COMPILED
RECORD = HERE / "fastrelay" / "_hotpath_build.py"


def source(name: str) -> str:
    return name.replace(".", "/") + ".py"


def record_text(digests: dict[str, str]) -> str:
    lines = [
        '"""Written by setup.py: the SHA-256 of each compiled source (fastrelay/hotpath.py)."""',
        "",
        "SOURCES = {",
    ]
    lines += [f'    "{name}": "{digests[name]}",' for name in HOT_PATH if name in digests]
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_record(path: Path, digests: dict[str, str]) -> None:
    text = record_text(digests)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


class build_ext(_build_ext):
    """Records a module's source only once its build succeeded (or was up to date).

    An optional extension that fails to compile leaves whatever build was there
    before, and an in-place build copies it beside the source again; a record
    written before the build would vouch for that old build with the new
    source's hash, and it would run old code.
    """

    def run(self) -> None:
        self.fastrelay_built: dict[str, str] = {}
        super().run()
        if self.inplace:
            write_record(RECORD, self.fastrelay_built)
        else:  # a wheel or a regular install: the record travels with the builds
            write_record(Path(self.build_lib) / "fastrelay" / RECORD.name, self.fastrelay_built)

    def build_extension(self, ext: Extension) -> None:
        super().build_extension(ext)  # raises when it fails; setuptools then warns
        digest = getattr(ext, "fastrelay_digest", None)
        if digest is not None:
            self.fastrelay_built[ext.name] = digest


def extensions() -> list[Extension]:
    if os.environ.get("FASTRELAY_NO_COMPILE", "") not in ("", "0"):
        RECORD.unlink(missing_ok=True)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    built: list[Extension] = []
    for name in HOT_PATH:
        # The hash of what Cython translates now (.py and .pxd): the build that follows is of it.
        digest = HOTPATH.source_hash(name)
        # One module at a time: one that does not translate (a .pxd out of step
        # with its .py, picows' .pxd missing) runs from source; the rest still build.
        try:
            translated = cythonize(
                [Extension(name, [source(name)])],
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
            continue
        for extension in translated:
            # cythonize's copy drops `optional`: a failed compile must not fail the install.
            extension.optional = True
            extension.fastrelay_digest = digest  # type: ignore[attr-defined]
        built += translated
    return built


setup(ext_modules=extensions(), cmdclass={"build_ext": build_ext})
