"""The chain runs on the event loop FASTRELAY_LOOP names (`make test` runs the chain,
half-close and failure tests a second time with FASTRELAY_LOOP=asyncio): every program says
which loop it runs on in its ready line and its log, and a tunnel works on it."""

from __future__ import annotations

import os
import subprocess

from conftest import LISTED, UNLISTED, Chain, Target, curl_path


def expected_loop() -> str:
    return os.environ.get("FASTRELAY_LOOP", "").strip().lower() or "uvloop"


def expected_hotpath() -> set[str]:
    if os.environ.get("FASTRELAY_PURE_PYTHON", "") not in ("", "0"):
        return {"python"}
    if os.environ.get("FASTRELAY_EXPECT_COMPILED") == "1":
        return {"compiled"}
    return {"compiled", "python", "mixed"}


def test_every_program_names_the_hot_path_it_runs(chain: Chain) -> None:
    """`make test` runs the suite compiled, and this module again on the pure-Python
    fallback (FASTRELAY_PURE_PYTHON=1): each program says which one it runs."""
    for proc in chain.procs:
        assert proc.ready.get("hotpath") in expected_hotpath(), (proc.name, proc.ready)


def test_every_program_runs_on_the_chosen_loop(chain: Chain, target: Target) -> None:
    loop = expected_loop()
    assert [proc.ready.get("loop") for proc in chain.procs] == [loop] * len(chain.procs)
    for proc in chain.procs:
        assert f"event loop: {loop}" in proc.log_path.read_text(), proc.name
    for host in (LISTED, UNLISTED):
        out = subprocess.run(
            [
                *(curl_path(), "-sS", "--max-time", "10", "--cacert", str(target.ca_pem)),
                *("-x", chain.proxy, target.https(host, "/hello")),
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert f"hello from the target at {host}" in out.stdout
