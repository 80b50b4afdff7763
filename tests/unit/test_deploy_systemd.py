"""deploy/systemd: the unit files and example configs agree with the real programs.

Each unit must parse and carry the hardening settings; every flag in its ExecStart and every
key of its example TOML (the commented-out optional keys too) must be accepted by the program's
own config loader; the three units' commands must actually start the programs, which then stop
cleanly on SIGTERM within TimeoutStopSec; and `systemd-analyze verify`, where it works, must
have nothing to say about them.
"""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from support.procs import is_ready, wait_until

from fastrelay import config as cfg
from fastrelay.lifecycle import spawn_ready

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "systemd"
PROGRAMS = {"relay": "fastrelay.relay.config", "agent": "agent.config", "client": "client_a.config"}
VENV_PYTHON = "/opt/fastrelay/.venv/bin/python"
ETC = "/etc/fastrelay"

# Key -> accepted values ("" is an empty assignment: nothing granted).
HARDENING: dict[str, set[str]] = {
    "Type": {"exec", "simple"},
    "Restart": {"on-failure"},
    "KillSignal": {"SIGTERM"},
    "NoNewPrivileges": {"yes"},
    "LimitNOFILE": {"1048576"},
    "ProtectSystem": {"strict"},
    "ProtectHome": {"yes"},
    "PrivateTmp": {"yes"},
    "PrivateDevices": {"yes"},
    "ProtectKernelTunables": {"yes"},
    "ProtectKernelModules": {"yes"},
    "ProtectControlGroups": {"yes"},
    "RestrictAddressFamilies": {"AF_INET AF_INET6 AF_UNIX"},
    "LockPersonality": {"yes"},
    "MemoryDenyWriteExecute": {"yes"},
    "SystemCallArchitectures": {"native"},
    "CapabilityBoundingSet": {""},
    "AmbientCapabilities": {""},
}
# Secrets stay out of the example TOML files (which tend to end up world-readable).
SECRET_KEYS = {"token", "client_tokens", "agent_tokens"}
# What the test writes into files the example configs name, by option.
FILE_CONTENT = {
    "client_tokens_file": "client-secret\n",
    "agent_tokens_file": "agent-secret\n",
    "rules": "127.0.0.2/32\n",
}
TOKEN_OF = {"agent": "agent-secret\n", "client": "client-secret\n"}


# --- parsing ---


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}}; repeated keys are kept."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        line, pending = pending + line, ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"not a unit-file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(program: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((DEPLOY / f"fastrelay-{program}.service").read_text())


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key)
    assert values, f"{key}= missing"
    return values[-1]


def seconds(text: str) -> float:
    """systemd time spans as used here: '30', '30s', '2min', '1min 30s'."""
    total = 0.0
    for number, suffix in re.findall(r"(\d+(?:\.\d+)?)\s*(min|s|)", text):
        total += float(number) * (60 if suffix == "min" else 1)
    return total


def exec_start(program: str) -> list[str]:
    argv = shlex.split(one(unit(program)["Service"], "ExecStart"))
    assert argv[:4] == [VENV_PYTHON, "-m", "fastrelay", program], argv
    return argv[4:]


def config_module(program: str) -> ModuleType:
    return importlib.import_module(PROGRAMS[program])


def all_options(program: str) -> list[cfg.Option]:
    return [*config_module(program).OPTIONS, *cfg.COMMON_OPTIONS]


def check_flags(program: str, args: list[str]) -> None:
    """Every --flag in `args` is a real option of `program` that may be given as a flag."""
    known = {o.flag_name for o in all_options(program) if o.flag} | {"--config"}
    for arg in args:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            assert flag in known, f"fastrelay {program} has no option {flag}"


def example_toml(program: str, uncomment: bool = False) -> str:
    text = (DEPLOY / f"{program}.toml.example").read_text()
    if uncomment:  # the optional keys shown commented out must be real too
        text = re.sub(r"(?m)^#\s?([a-z][a-z0-9_-]*\s*=)", r"\1", text)
    return text


def localize(program: str, text: str, tmp: Path) -> str:
    """The example TOML with every file it names replaced by a file under `tmp`."""
    by_name = {o.name: o for o in all_options(program)}
    for key, value in tomllib.loads(text).items():
        opt = by_name.get(key.replace("-", "_"))
        if opt is None or not isinstance(value, str) or not value.startswith("/"):
            continue
        local = tmp / f"{program}-{opt.name}"
        if opt.parse is not cfg.optional_output:  # files that must exist
            default = TOKEN_OF[program] if opt.name == "token_file" else "x\n"
            local.write_text(FILE_CONTENT.get(opt.name, default))
        text = text.replace(json.dumps(value), json.dumps(str(local)))
    return text


def load_config(program: str, text: str, tmp: Path, args: list[str] | None = None) -> object:
    """Run the program's own loader on `text` given as --config, as the unit would."""
    path = tmp / f"{program}.toml"
    path.write_text(localize(program, text, tmp))
    args = exec_start(program) if args is None else args
    check_flags(program, args)
    argv = [str(path) if a == f"{ETC}/{program}.toml" else a for a in args]
    assert str(path) in argv, f"ExecStart does not pass --config {ETC}/{program}.toml"
    try:
        return config_module(program).load(argv, {})
    except SystemExit as exc:  # argparse: an unknown flag or a bad value
        pytest.fail(f"fastrelay {program} refused {argv}: exit {exc.code}")


# --- the units on their own ---


@pytest.mark.parametrize("program", PROGRAMS)
def test_unit_parses_and_is_hardened(program: str) -> None:
    path = DEPLOY / f"fastrelay-{program}.service"
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())

    sections = unit(program)
    service = sections["Service"]
    problems = [
        f"{key}={service.get(key, ['<missing>'])[-1]!r}, want one of {sorted(allowed)}"
        for key, allowed in HARDENING.items()
        if service.get(key, [None])[-1] not in allowed
    ]
    assert not problems, f"{path.name}: " + "; ".join(problems)
    assert service.get("User") == ["fastrelay"] or service.get("DynamicUser") == ["yes"]
    assert seconds(one(service, "RestartSec")) > 0
    assert one(service, "EnvironmentFile") == f"-{ETC}/{program}.env"
    assert "AF_NETLINK" not in one(service, "RestrictAddressFamilies")
    assert "ReadWritePaths" not in service, "nothing to write but an access log (LogsDirectory=)"
    assert one(sections["Install"], "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("program", PROGRAMS)
def test_timeout_stop_covers_the_relay_drain(program: str) -> None:
    stop = seconds(one(unit(program)["Service"], "TimeoutStopSec"))
    if program == "relay":
        default = next(o.default for o in all_options("relay") if o.name == "drain_timeout")
        drain = tomllib.loads(example_toml("relay")).get("drain_timeout", default)
        # Above the default drain too: a relay.toml without drain_timeout drains 30 s.
        longest = max(float(drain), float(default))
        assert stop >= longest + 5, f"TimeoutStopSec={stop} leaves no room after the drain"
    assert stop >= 5


# --- the units against the real programs ---


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("uncomment", [False, True], ids=["as-shipped", "optional-keys-on"])
def test_exec_start_and_example_toml_load(program: str, uncomment: bool, tmp_path: Path) -> None:
    text = example_toml(program, uncomment)
    keys = {k.replace("-", "_") for k in tomllib.loads(text)}
    assert not keys & SECRET_KEYS, "tokens belong in a token file or the .env file"
    config = load_config(program, text, tmp_path)
    if program == "relay":
        assert config.client_tokens == ("client-secret",)  # type: ignore[attr-defined]
        assert config.agent_tokens == ("agent-secret",)  # type: ignore[attr-defined]
    else:
        assert config.token == TOKEN_OF[program].strip()  # type: ignore[attr-defined]


def test_checks_fail_on_options_that_do_not_exist(tmp_path: Path) -> None:
    text = example_toml("agent")
    with pytest.raises(AssertionError, match="no option --no-such-flag"):
        check_flags("agent", ["--config", f"{ETC}/agent.toml", "--no-such-flag", "1"])
    with pytest.raises(cfg.ConfigError, match="unknown key 'no_such_key'"):
        load_config("agent", text + '\nno_such_key = "1"\n', tmp_path)
    with pytest.raises(cfg.ConfigError, match="drain_timeout"):  # a relay-only key
        load_config("agent", text + "\ndrain_timeout = 3\n", tmp_path)


@pytest.mark.parametrize("program", PROGRAMS)
def test_access_log_is_writable_when_configured(program: str) -> None:
    """An access log set in the example TOML must lie in a directory the unit makes writable
    (ProtectSystem=strict leaves everything else read-only); LogsDirectory= alone is a sign
    of a config that forgot the access log."""
    service = unit(program)["Service"]
    writable = [f"/var/log/{d}" for d in service.get("LogsDirectory", [])]
    values = tomllib.loads(example_toml(program))
    path = values.get("access_log") or values.get("access-log")
    if path and path != "-":
        assert any(str(Path(path).parent).startswith(w) for w in writable), (
            f"access_log {path} is not under a LogsDirectory= of the unit"
        )
    else:
        assert not writable, "LogsDirectory= without an access_log"


def test_environment_names_in_deploy_files_are_real() -> None:
    known = {f"{cfg.ENV_PREFIX}CONFIG"}
    for program in PROGRAMS:
        known |= {o.env_name for o in all_options(program)}
    for path in sorted(DEPLOY.iterdir()):
        for name in re.findall(r"\bFASTRELAY_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            assert name in known, f"{path.name} mentions {name}, which no program reads"


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, dict]:
    # cwd=/ as under systemd: the command must not depend on the working directory.
    with log.open("wb") as stderr:
        try:
            return spawn_ready(argv, env, stderr=stderr, cwd="/", base_env={})
        except RuntimeError:
            pytest.fail(f"{argv[3:]} did not start: {log.read_text(errors='replace')[-2000:]}")


def test_units_start_the_programs_and_stop_on_sigterm(tmp_path: Path) -> None:
    """The three ExecStart= lines, venv python and temp config substituted, start a working
    chain (client_a and the agent report ready through the relay), and each program exits 0
    on KillSignal= well within TimeoutStopSec=. Loopback addresses come from FASTRELAY_*
    variables, as an EnvironmentFile= would give them."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(cfg.ENV_PREFIX)}
    loopback = {"FASTRELAY_LISTEN": "127.0.0.1:0", "FASTRELAY_ADMIN": "127.0.0.1:0"}
    procs: list[tuple[str, subprocess.Popen]] = []
    try:
        ready: dict[str, dict] = {}
        relay_url = ""
        for program in PROGRAMS:  # relay first
            path = tmp_path / f"{program}.toml"
            path.write_text(localize(program, example_toml(program), tmp_path))
            args = [str(path) if a == f"{ETC}/{program}.toml" else a for a in exec_start(program)]
            env = {**base, **loopback, "FASTRELAY_LOG_LEVEL": "warning"}
            if program != "relay":
                env["FASTRELAY_RELAY"] = relay_url
            if program == "agent":
                env.pop("FASTRELAY_LISTEN")
            argv = [sys.executable, "-m", "fastrelay", program, *args]
            proc, ready[program] = _spawn(argv, env, tmp_path / f"{program}.log")
            procs.append((program, proc))
            if program == "relay":
                relay_url = f"ws://{ready['relay']['listen']}"
        for program in PROGRAMS:
            admin = ready[program]["admin"]
            wait_until(lambda a=admin: is_ready(a), timeout=15, what=f"{program} ready")
        for program, proc in reversed(procs):  # client_a, the agent, then the relay
            limit = seconds(one(unit(program)["Service"], "TimeoutStopSec"))
            kill_signal = getattr(signal, one(unit(program)["Service"], "KillSignal"))
            proc.send_signal(kill_signal)
            try:
                code = proc.wait(limit)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{program} still running {limit} s after {kill_signal.name}")
            assert code == 0, f"{program} exited {code} on {kill_signal.name}"
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=5)


# --- systemd's own check ---


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    copies = []
    for program in PROGRAMS:  # ExecStart must name an existing binary: use this venv's python
        text = (DEPLOY / f"fastrelay-{program}.service").read_text()
        copy = tmp_path / f"fastrelay-{program}.service"
        copy.write_text(text.replace(VENV_PYTHON, sys.executable))
        copies.append(copy)
    # First make sure verify works here at all: it must object to a broken copy.
    broken = tmp_path / "fastrelay-broken.service"
    broken.write_text(
        copies[0].read_text().replace("ProtectSystem=strict", "ProtectSystem=no-such")
    )
    probe = _verify([broken])
    if broken.name not in probe.stdout + probe.stderr:
        pytest.skip(f"systemd-analyze verify cannot run here: {probe.stderr.strip()[:300]}")
    result = _verify(copies)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output
