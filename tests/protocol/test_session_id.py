"""new_session_id: a random version-4 UUID in the text form str(uuid.uuid4()) gives."""

from __future__ import annotations

import re
import uuid

from fastrelay.protocol.messages import new_session_id

CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_a_session_id_is_a_canonical_version_4_uuid() -> None:
    ids = [new_session_id() for _ in range(2000)]
    for text in ids:
        assert CANONICAL.fullmatch(text), text
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    assert len(set(ids)) == len(ids)
    # every random nibble position takes more than one value: the bytes are really random
    for position in range(36):
        if text[position] != "-" and position not in (14,):
            assert len({t[position] for t in ids}) > 1, position
