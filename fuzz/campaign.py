"""Run every harness in turn (one core), growing fuzz/corpus/<harness>/; print the counts.

    python -m fuzz.campaign [--runs N] [--seconds S] [harness ...]
    python -m fuzz.campaign --minimise [harness ...]

Each harness gets at most N inputs and S seconds of wall clock (libFuzzer's -runs and
-max_total_time), and 10 s per input (-timeout: a hang is a finding). A crash or hang leaves
its input in fuzz/artifacts/ and the campaign goes on with the next harness; the exit status
is 1 if any harness found something. A corpus grown past MAX_CORPUS files is minimised with
libFuzzer's -merge=1 into a fresh directory, which then replaces it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in HERE.glob("fuzz_*.py"))
MAX_CORPUS = 300
PER_INPUT_TIMEOUT = 10  # seconds
_DONE = re.compile(rb"Done (\d+) runs in (\d+) second")


def _libfuzzer(name: str, *args: str, timeout: float) -> tuple[int, bytes]:
    command = [sys.executable, str(HERE / f"fuzz_{name}.py"), *args]
    # -merge=1 re-runs the harness as its own command (#!/usr/bin/env python3): this
    # interpreter's directory first on PATH makes that the Python that has atheris.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        proc = subprocess.run(
            command, capture_output=True, timeout=timeout, cwd=HERE.parent, env=env
        )
    except subprocess.TimeoutExpired as exc:
        return -1, (exc.stderr or b"") + b"\n(campaign: killed at the wall-clock bound)"
    return proc.returncode, proc.stdout + proc.stderr


def _minimise(name: str, corpus: Path) -> None:
    fresh = corpus.with_name(corpus.name + ".min")
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()
    code, out = _libfuzzer(name, "-merge=1", str(fresh), str(corpus), timeout=600)
    if code == 0 and any(fresh.iterdir()):
        shutil.rmtree(corpus)
        fresh.rename(corpus)
    else:
        shutil.rmtree(fresh, ignore_errors=True)
        print(f"  {name}: merge failed ({code}), corpus kept:\n{out[-2000:].decode()}")


def run(name: str, runs: int, seconds: int) -> tuple[int, float, str]:
    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = HERE / "artifacts"
    artifacts.mkdir(exist_ok=True)
    dictionary = HERE / "dicts" / f"{name}.dict"
    started = time.monotonic()
    code, out = _libfuzzer(
        name,
        str(corpus),
        f"-runs={runs}",
        f"-max_total_time={seconds}",
        f"-timeout={PER_INPUT_TIMEOUT}",
        "-rss_limit_mb=2048",
        "-max_len=4096",
        f"-artifact_prefix={artifacts}/{name}-",
        *([f"-dict={dictionary}"] if dictionary.exists() else []),
        timeout=seconds + 120,
    )
    elapsed = time.monotonic() - started
    done = _DONE.search(out)
    count = int(done.group(1)) if done else 0
    if code == 0 and done:
        outcome = "ok"
    else:
        at = out.find(b"=== Uncaught Python exception")
        report = out[at : at + 3000] if at >= 0 else out[-3000:]
        outcome = f"FOUND (exit {code}):\n{report.decode(errors='replace')}"
    if sum(1 for _ in corpus.iterdir()) > MAX_CORPUS:
        _minimise(name, corpus)
    return count, elapsed, outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000, help="inputs per harness")
    parser.add_argument("--seconds", type=int, default=600, help="wall clock per harness")
    parser.add_argument(
        "--minimise", action="store_true", help="only minimise the corpora (-merge=1), no fuzzing"
    )
    parser.add_argument("harness", nargs="*", help=f"default: all of {', '.join(HARNESSES)}")
    args = parser.parse_args()
    unknown = set(args.harness) - set(HARNESSES)
    if unknown:
        parser.error(f"no such harness: {', '.join(sorted(unknown))}")
    args.harness = args.harness or HARNESSES
    if args.minimise:
        for name in args.harness:
            before = sum(1 for _ in (HERE / "corpus" / name).iterdir())
            _minimise(name, HERE / "corpus" / name)
            after = sum(1 for _ in (HERE / "corpus" / name).iterdir())
            print(f"{name:15} corpus {before:4} -> {after:4} files")
        return 0
    total, found = 0, False
    for name in args.harness:
        count, elapsed, outcome = run(name, args.runs, args.seconds)
        files = sum(1 for _ in (HERE / "corpus" / name).iterdir())
        total += count
        found |= outcome != "ok"
        print(f"{name:15} {count:>10} inputs {elapsed:7.1f} s  corpus {files:4}  {outcome}")
        sys.stdout.flush()
    print(f"{'total':15} {total:>10} inputs")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
