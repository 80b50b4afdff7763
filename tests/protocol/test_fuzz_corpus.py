"""The committed fuzz corpus (fuzz/corpus/<harness>/, grown by `make fuzz`) as seeds.

Every corpus file goes through the check its harness runs (fuzz/targets.py): the parser
raises only its documented error, or parses to a result with the invariants its callers rely
on, and gives the same outcome fed in pieces. Then Hypothesis mutates corpus files (flips,
inserts, deletes, truncates) and runs the same check, so the inputs the campaign found
interesting keep being explored by `make test` without atheris.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets import TARGETS

CORPUS = Path(__file__).resolve().parents[2] / "fuzz" / "corpus"
FILES = {name: sorted((CORPUS / name).glob("*")) for name in TARGETS}

pytestmark = pytest.mark.timeout(60)


def test_every_harness_has_a_corpus() -> None:
    assert all(FILES.values()), {name: len(files) for name, files in FILES.items()}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_with_only_the_documented_errors(name: str) -> None:
    check = TARGETS[name]
    for path in FILES[name]:
        try:
            check(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(CORPUS.parent.parent)}: {exc!r}") from exc


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with a few random edits, the kind libFuzzer makes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(out)))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "repeat"]))
        if edit == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "delete":
            del out[at : at + draw(st.integers(1, 8))]
        elif edit == "truncate":
            del out[at:]
        elif edit == "repeat":
            out[at:at] = out[at : at + draw(st.integers(1, 8))] * draw(st.integers(2, 4))
    return bytes(out)


seeds = st.sampled_from(
    [(name, path.read_bytes()) for name, files in sorted(FILES.items()) for path in files]
    or [("frames", b"")]
)


@settings(max_examples=300, deadline=None)
@given(seeds.flatmap(lambda seed: st.tuples(st.just(seed[0]), mutated(seed[1]))))
def test_mutated_corpus_raises_only_the_documented_errors(case: tuple[str, bytes]) -> None:
    name, data = case
    TARGETS[name](data)
