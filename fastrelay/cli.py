"""`fastrelay PROGRAM [options]`: one entry point for every registered program."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from fastrelay.programs import Program, programs


def usage(registered: dict[str, Program]) -> str:
    width = max(len(name) for name in registered)
    lines = [f"usage: fastrelay {{{','.join(registered)}}} [options]", ""]
    lines += [f"  {name:<{width}}   {p.summary}" for name, p in registered.items()]
    lines += ["", "`fastrelay PROGRAM --help` lists a program's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    registered = programs()
    if not args or args[0] in ("-h", "--help"):
        print(usage(registered))
        return 0 if args else 2
    name, rest = args[0], args[1:]
    program = registered.get(name)
    if program is None:
        print(f"fastrelay: unknown program {name!r}\n\n{usage(registered)}", file=sys.stderr)
        return 2
    return program.main(rest)


if __name__ == "__main__":
    sys.exit(main())
