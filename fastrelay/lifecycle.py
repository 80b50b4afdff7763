"""Process lifecycle shared by the programs: the event loop, signals, readiness line.

A program is one coroutine that receives a `stop` event. SIGTERM or SIGINT
sets it and the program shuts down cleanly; a second signal exits at once.
When its sockets are bound, a program prints one JSON line on stdout
(`{"event": "ready", ...}` with the bound addresses) so supervisors and tests
that asked for port 0 learn the real ports.

The relay, the agent and client_a each fill in a :class:`Service`, and
:func:`serve_service` runs it: start, ready, wait for `stop`, drain, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from fastrelay import hotpath
from fastrelay.eventloop import LoopChoice, choose_loop

if TYPE_CHECKING:
    from fastrelay.accesslog import AccessLog
    from fastrelay.io.admin import Readiness

PR_SET_PDEATHSIG = 1


# The event loop `run` chose, named in the ready line ("loop").
_loop_name = ""


def announce_ready(program: str, **addresses: Any) -> None:
    fields: dict[str, Any] = {"event": "ready", "program": program, "pid": os.getpid()}
    if _loop_name:
        fields["loop"] = _loop_name
    fields["hotpath"] = hotpath.mode()  # compiled, python, or mixed (fastrelay/hotpath.py)
    line = orjson.dumps({**fields, **addresses})
    sys.stdout.write(line.decode() + "\n")
    sys.stdout.flush()


class BindError(OSError):
    """A listening address that could not be bound, named by its option:
    `--listen 127.0.0.1:8080: address already in use`, once, no errno text."""

    def __init__(self, option: str, host: str, port: int, exc: OSError) -> None:
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
        super().__init__(exc.errno, reason)
        self.option = option
        self.message = f"{option} {format_address((host, port))}: {reason[:1].lower()}{reason[1:]}"
        if exc.errno == errno.EADDRINUSE:
            self.message += " (another program holds that port: choose another with " + option + ")"

    def __str__(self) -> str:
        return self.message


def bound_address(server: asyncio.AbstractServer) -> str:
    """The address a server's first listening socket is bound to, as `host:port`."""
    sockets: list[socket.socket] = list(getattr(server, "sockets", None) or [])  # not on the ABC
    return format_address(sockets[0].getsockname()) if sockets else "unknown"


def format_address(sockname: tuple) -> str:
    host, port = sockname[0], sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def on_sighup(reopen: Callable[[], None] | None) -> None:
    """SIGHUP reopens the access log (logrotate); without one it is logged
    and ignored, never the default action of ending the process."""

    def handler() -> None:
        if reopen is None:
            logging.getLogger("fastrelay").info("SIGHUP: no access log to reopen")
        else:
            reopen()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, handler)


def follow_parent(expected_ppid: int) -> None:
    """SIGTERM this process when its parent dies, even by SIGKILL, so a
    supervised worker never outlives its supervisor holding the port (Linux
    PR_SET_PDEATHSIG, set by the child itself: uvloop may spawn without
    running a preexec hook). If the parent is already gone, stop now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != expected_ppid:
        os.kill(os.getpid(), signal.SIGTERM)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (every connection is an
    fd, and distributions default the soft limit to 1024); logs the limit in
    force once and returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log = logging.getLogger("fastrelay")
    if soft == hard:
        log.info("open file limit: %d (the hard limit)", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # e.g. an unlimited hard limit on macOS
        log.info("open file limit: %d (not raised to the hard limit %d: %s)", soft, hard, exc)
        return soft
    log.info("open file limit: %d (raised from %d)", hard, soft)
    return hard


_force_exit_hooks: list[Callable[[], None]] = []


def on_force_exit(hook: Callable[[], None]) -> None:
    """Run `hook` (quick, no awaiting) when a second signal ends the process at once,
    e.g. the relay supervisor SIGKILLs its workers so none outlives it draining."""
    _force_exit_hooks.append(hook)


def force_exit() -> None:
    """The second Ctrl-C: say so, run the hooks, exit 1 without draining."""
    with contextlib.suppress(Exception):
        sys.stderr.write("second signal: stopping now, without waiting for open tunnels\n")
        sys.stderr.flush()
    for hook in _force_exit_hooks:
        with contextlib.suppress(Exception):
            hook()
    os._exit(1)


# The collector's generation-0 threshold in a running program (CPython's default is 700).
# Opening a tunnel allocates a few hundred GC-tracked objects (parsers, transports, futures,
# messages) that almost all die by reference count within the open, yet at 700 a young
# collection ran every few opens and walked them: 15-23 us of CPU per open in client_a and
# the agent (bench/README.md, "Setup"). At this threshold most are gone before one runs;
# what cyclic garbage waits in the meantime is bounded by the threshold (a few MB at most).
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """Run once per program after its imports, before its loop starts (from `run`): move
    everything allocated so far (modules, classes, config) to the permanent generation, so
    no collection walks it again, and raise the generation-0 threshold (GC_GEN0_THRESHOLD).
    Tests that serve in-process do not come through here and keep the defaults."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


MALLOC_KEEP = 16 * 1024 * 1024
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# An operator's own malloc settings win: tune_malloc leaves the allocator alone then.
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune_malloc(environ: Mapping[str, str] = os.environ) -> str:
    """Keep glibc's malloc from handing the heap back to the kernel after every burst.

    A data pump frees and reallocates blocks of hundreds of KiB to a few MiB all the time
    (a transport's unsent tail, a frame read in pieces). With glibc's defaults a block over
    the dynamic mmap threshold is mapped and unmapped each time, and a heap whose free top
    passes the trim threshold is shrunk with brk, so the next burst faults fresh zeroed
    pages back in (and a shrink flushes TLBs on both cores). Blocks under MALLOC_KEEP
    (16 MiB) now come from the heap, and up to MALLOC_KEEP of free heap top stays mapped:
    -15 to -21 % CPU per MB in each program of a bulk tunnel (bench/README.md, "glibc's
    malloc"), for at most 16 MiB more resident memory after a burst (peak RSS unchanged).

    Returns what was done: "tuned"; "environment" when MALLOC_TRIM_THRESHOLD_,
    MALLOC_MMAP_THRESHOLD_, MALLOC_TOP_PAD_ or a glibc.malloc tunable is set (the
    operator's setting stands); "not glibc" on another C library; "refused" if mallopt
    failed."""
    if any(name in environ for name in MALLOC_ENV) or "glibc.malloc." in environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return "environment"
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return "not glibc"
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, ValueError):  # no confstr name, no libc symbol
        return "not glibc"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_THRESHOLD, MALLOC_KEEP) and mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP)
    return "tuned" if ok else "refused"


def run(
    main: Callable[[asyncio.Event], Awaitable[int | None]], choice: LoopChoice | None = None
) -> int:
    """Run a program's `main(stop)` on the chosen event loop (fastrelay/eventloop.py:
    uvloop unless FASTRELAY_LOOP says otherwise or it is missing), after raising the fd
    limit. Raises LoopChoiceError for a FASTRELAY_LOOP that cannot be honoured."""
    global _loop_name
    if choice is None:
        choice = choose_loop()
    _loop_name = choice.name
    log = logging.getLogger("fastrelay")
    if choice.note:
        log.info("event loop: %s (%s)", choice.name, choice.note)
    else:
        log.info("event loop: %s", choice.name)
    raise_fd_limit()
    tune_gc()
    log.debug("malloc: %s", tune_malloc())

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        hits = 0

        def on_signal() -> None:
            nonlocal hits
            hits += 1
            if hits > 1:
                force_exit()  # second Ctrl-C: the operator wants out now
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        return (await main(stop)) or 0

    with asyncio.Runner(loop_factory=choice.factory) as runner_:
        return runner_.run(runner())


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def first_of(*waitables: Awaitable[object]) -> None:
    """Wait until any of them completes; cancel and reap the waits made here (futures
    passed in are left alone)."""
    tasks = [asyncio.ensure_future(w) for w in waitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_all(t for t, w in zip(tasks, waitables, strict=True) if t is not w)


async def all_of(waitables: Iterable[Awaitable[object]], timeout: float) -> None:
    """Wait until all of them complete or `timeout` passes, whichever is first; the waits
    still pending are cancelled and reaped, and their exceptions are not raised here."""
    tasks = [asyncio.ensure_future(w) for w in waitables]
    if not tasks:
        return
    try:
        await asyncio.wait(tasks, timeout=max(0.0, timeout))
    finally:
        await cancel_all(tasks)


async def cancel_all(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and wait until each has finished (exceptions are swallowed)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class Service:
    """What a program fills in for :func:`serve_service`.

    ``start`` binds the sockets (the admin port first) and returns the addresses for the
    ready line; ``background`` gives the coroutines that run until `stop` (they end by
    themselves once it is set); ``drain`` runs after `stop`, while they wind down;
    ``close`` runs once they have ended.  SIGHUP calls ``on_sighup``.
    """

    program: str  # the ready line's "program" and the log's "<name> stopped"
    name: str
    log: logging.Logger
    readiness: Readiness
    access_log: AccessLog | None = None

    async def start(self) -> dict[str, Any]:
        raise NotImplementedError

    def background(self, stop: asyncio.Event) -> list[Coroutine[Any, Any, None]]:
        return []

    async def drain(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def on_sighup(self) -> None:
        """Reopen the access log (logrotate); without one, log that there is none."""
        if self.access_log is None:
            logging.getLogger("fastrelay").info("SIGHUP: no access log to reopen")
        else:
            self.access_log.reopen()


async def serve_service(service: Service, stop: asyncio.Event) -> int:
    """Run a program: start, announce ready, wait for `stop`, drain, close.

    The background coroutines belong to one TaskGroup, so none outlives the program.
    """
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, service.on_sighup)
    addresses = await service.start()
    async with asyncio.TaskGroup() as tasks:
        for coroutine in service.background(stop):
            tasks.create_task(coroutine)
        service.readiness.set("ready")
        announce_ready(service.program, **addresses)
        await stop.wait()
        service.readiness.set("draining")
        await service.drain()
    await service.close()
    if service.access_log is not None:
        service.access_log.close()
    service.log.info("%s stopped", service.name)
    return 0


def spawn_ready(
    argv: list[str],
    env: dict[str, str] | None = None,
    stderr=None,
    timeout: float = 20.0,
    cwd: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen, dict]:
    """Start a program and wait for its JSON ready line (used by the demo,
    the benchmarks and the tests). `env` is added to `base_env` (default:
    this process's environment). Raises RuntimeError if no line comes in time."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env={**(os.environ if base_env is None else base_env), **(env or {})},
        cwd=cwd,
    )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    line = b""
    try:
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    finally:
        selector.close()
    if not line.endswith(b"\n"):
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"{' '.join(argv[:4])} did not report ready")
    return proc, orjson.loads(line)


def stop_process(popen: subprocess.Popen, timeout: float = 8.0) -> int | None:
    """SIGTERM (after SIGCONT, in case a test stopped it), SIGKILL after
    `timeout`; returns the exit status. Only ever the process we started."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGCONT)
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    return popen.returncode
