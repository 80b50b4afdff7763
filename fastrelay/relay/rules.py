"""The relay's ``--client-rules``: the rules file it pushes to client_a in RULES frames.

Parsed and validated with client_a's own parser (:mod:`fastrelay.protocol.rules`), so a file
the relay accepts is one client_a accepts.  Its canonical form must fit a RULES frame:
:data:`MAX_PUSHED_RULES_BYTES` of rules, and the whole frame within ``--max-frame-size``.
"""

from __future__ import annotations

from pathlib import Path

from fastrelay.protocol.frames import HEADER_SIZE
from fastrelay.protocol.rules import MAX_PUSHED_RULES_BYTES, PushedRules, decode_rules_file

# A file this much larger than the limit is refused before it is parsed (comments and
# spacing may make a file larger than its canonical form, but not by this much).
MAX_FILE_BYTES = 16 * MAX_PUSHED_RULES_BYTES


def load_client_rules(path: Path, max_frame_size: int) -> PushedRules:
    """The RULES to push from ``path``: RuleError (FILE:LINE), ValueError (too large) or
    OSError when it cannot be used."""
    with path.open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{path}: over {MAX_FILE_BYTES} bytes; too large to push")
    pushed = PushedRules.from_entries(decode_rules_file(data, str(path), local=False).entries)
    if pushed.size > MAX_PUSHED_RULES_BYTES:
        raise ValueError(
            f"{path}: {len(pushed.entries)} rules are {pushed.size} bytes in canonical form, "
            f"over the {MAX_PUSHED_RULES_BYTES}-byte limit of a RULES frame"
        )
    frame = len(pushed.encode())
    if frame > max_frame_size:
        raise ValueError(
            f"{path}: the RULES frame would be {frame} bytes, over --max-frame-size "
            f"({max_frame_size}); raise it or push fewer rules"
        )
    assert frame > HEADER_SIZE
    return pushed
