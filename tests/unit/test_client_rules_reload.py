"""The relay's --client-rules option (config, TOML, validation) and the FileReloader that both
client_a's --rules and the relay's --client-rules use."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from fastrelay.config import ConfigError
from fastrelay.protocol.rules import PushedRules, RuleError
from fastrelay.relay import config as relay_config
from fastrelay.relay.rules import load_client_rules
from fastrelay.reload import FileReloader, load_at_start

TOKENS = {"FASTRELAY_CLIENT_TOKENS": "c", "FASTRELAY_AGENT_TOKENS": "a"}


def test_client_rules_from_toml_env_and_flag(tmp_path: Path) -> None:
    rules = tmp_path / "push.txt"
    rules.write_text(".corp.example @corp\n")
    toml = tmp_path / "relay.toml"
    toml.write_text(f'client_rules = "{rules}"\nclient_rules_poll = 0.5\n')
    config = relay_config.load(["--config", str(toml)], TOKENS)
    assert (config.client_rules, config.client_rules_poll) == (rules, 0.5)
    config = relay_config.load([], {**TOKENS, "FASTRELAY_CLIENT_RULES": str(rules)})
    assert config.client_rules == rules
    assert relay_config.load([], TOKENS).client_rules is None


def test_bad_client_rules_is_a_config_error_naming_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "push.txt"
    rules.write_text("ok.example\nbad..example\n")
    with pytest.raises(ConfigError, match=rf"^--client-rules: {rules}:2: invalid pattern"):
        relay_config.load(["--client-rules", str(rules)], TOKENS)


def test_load_client_rules_is_canonical(tmp_path: Path) -> None:
    rules = tmp_path / "push.txt"
    rules.write_text("# team list\n[pool corp]\n.corp.example\n\n10.0.0.0/8  fallback=direct\n")
    pushed = load_client_rules(rules, 1 << 20)
    assert pushed.text == ".corp.example @corp\n10.0.0.0/8 @corp fallback=direct\n"
    assert pushed == PushedRules.from_entries(pushed.entries)


def test_unreadable_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--rules: cannot read .*nope.txt: No such file"):
        load_at_start("--rules", tmp_path / "nope.txt", lambda p: p.read_bytes())


class Applied:
    def __init__(self) -> None:
        self.values: list[PushedRules] = []

    def __call__(self, value: PushedRules) -> None:
        self.values.append(value)


def test_reload_keeps_the_old_value_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "push.txt"
    path.write_text("a.example\n")
    applied = Applied()
    reloader = FileReloader(
        path,
        "--client-rules",
        lambda p: load_client_rules(p, 1 << 20),
        applied,
        logging.getLogger("t"),
    )
    assert reloader.reload() is True
    path.write_text("a.example\n[pushed off]\n")
    with caplog.at_level(logging.ERROR):
        assert reloader.reload() is False
    assert f"{path}:2: '[pushed off]' belongs in client_a's own" in caplog.text
    path.unlink()
    assert reloader.reload() is False
    assert reloader.counts == {"ok": 1, "error": 2}
    assert [v.text for v in applied.values] == ["a.example\n"]


def test_watch_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "push.txt"
    path.write_text("a.example\n")
    applied = Applied()
    reloader = FileReloader(
        path, "x", lambda p: load_client_rules(p, 1 << 20), applied, logging.getLogger("t")
    )

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(reloader.watch(stop, 0.01))
        tmp = path.with_suffix(".new")
        tmp.write_text("a.example\nb.example\n")
        os.replace(tmp, path)
        for _ in range(500):  # bounded: at most 5 s
            if applied.values:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert [v.text for v in applied.values] == ["a.example\nb.example\n"]
    assert reloader.counts == {"ok": 1, "error": 0}


def test_rule_error_carries_the_line(tmp_path: Path) -> None:
    path = tmp_path / "push.txt"
    path.write_text("\n\n*.a*b\n")
    with pytest.raises(RuleError) as info:
        load_client_rules(path, 1 << 20)
    assert (info.value.source, info.value.line) == (str(path), 3)
