"""A strict parser for the access log's text (logfmt) lines, for the tests.

A value is either bare (no space, quote, '=' or backslash, printable) or a
JSON string literal. Anything else on the line is an error, so a value that
should have been quoted and was not makes the parse fail.
"""

from __future__ import annotations

import json
import re

_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^\s"=\\]+)(?: |$)')


def parse_logfmt(line: str) -> dict[str, str]:
    """key=value pairs in order; raises ValueError on anything malformed."""
    if "\n" in line or "\r" in line:
        raise ValueError(f"a logfmt line holds no raw line break: {line!r}")
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        match = _PAIR.match(line, pos)
        if match is None:
            raise ValueError(f"not key=value at column {pos}: {line!r}")
        key, raw = match.group(1), match.group(2)
        if key in fields:
            raise ValueError(f"key {key!r} twice in {line!r}")
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
        pos = match.end()
    if not fields:
        raise ValueError("empty line")
    return fields
