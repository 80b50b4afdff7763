"""AccessLog: logfmt quoting, JSON lines, write errors counted (never raised), reopen."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.logfmt import parse_logfmt

from fastrelay.accesslog import AccessLog

KEYS = [
    "ts",
    "program",
    "session",
    "client",
    "target",
    "route",
    "result",
    "bytes_up",
    "bytes_down",
    "duration_s",
]


def entry(**overrides: object) -> dict:
    fields: dict = {
        "session": "3f2a-1",
        "client": "127.0.0.1:50123",
        "target": "example.com:443",
        "route": "relay",
        "result": "ok",
        "bytes_up": 517,
        "bytes_down": 123456,
        "duration": 1.2345678,
    }
    fields.update(overrides)
    return fields


def lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), "every line ends with a newline"
    return text.splitlines()


def test_json_line_has_every_field_with_its_type(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, "json", "relay")
    log.write(**entry(), agent="127.0.0.1:40000")
    log.close()
    [line] = lines(path)
    record = json.loads(line)
    assert list(record) == [*KEYS, "agent"]
    assert record["program"] == "relay"
    assert record["session"] == "3f2a-1"
    assert record["client"] == "127.0.0.1:50123"
    assert record["target"] == "example.com:443"
    assert (record["route"], record["result"]) == ("relay", "ok")
    assert (record["bytes_up"], record["bytes_down"]) == (517, 123456)
    assert record["duration_s"] == pytest.approx(1.234568)
    assert record["agent"] == "127.0.0.1:40000"
    ts = datetime.fromisoformat(record["ts"])
    assert record["ts"].endswith("Z") and ts.tzinfo is not None
    assert ts.utcoffset() == UTC.utcoffset(None)
    assert log.lines == 1 and log.errors == 0


def test_defaults_for_an_open_that_never_carried_data(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, "json", "client")
    log.write(session="-", client="c", target="t:1", route="direct", result="dial_failed")
    log.close()
    record = json.loads(lines(path)[0])
    assert (record["bytes_up"], record["bytes_down"], record["duration_s"]) == (0, 0, 0.0)


@pytest.mark.parametrize(
    "value",
    [
        "two words",
        'say "hi"',
        "line\nbreak",
        "tab\there",
        "a=b",
        "back\\slash",
        "",
        "ünïcode",
        "\x1b[31mred",
    ],
)
def test_logfmt_quotes_what_would_break_the_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, "text", "agent")
    log.write(**entry(target=value, result="ok"))
    log.write(**entry(session="second"))
    log.close()
    first, second = lines(path)  # a newline in a value did not split the line
    fields = parse_logfmt(first)
    assert list(fields) == KEYS
    assert fields["target"] == value  # round-trips exactly
    assert parse_logfmt(second)["session"] == "second"


def test_logfmt_plain_values_stay_bare(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, "text", "relay")
    log.write(**entry(), agent="127.0.0.1:40000")
    log.close()
    [line] = lines(path)
    assert " program=relay " in line
    assert " client=127.0.0.1:50123 " in line
    assert " bytes_down=123456 " in line
    assert line.endswith(" agent=127.0.0.1:40000")
    fields = parse_logfmt(line)
    assert list(fields) == [*KEYS, "agent"]
    assert fields["duration_s"] == "1.234568"


def test_write_after_the_file_closed_counts_an_error(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, "json", "relay")
    log.write(**entry(session="before"))
    log.file.close()  # as if the file had gone away under the program
    log.write(**entry(session="after"))  # must not raise: the tunnel is not at fault
    log.write(**entry(session="after-2"))
    assert (log.lines, log.errors) == (1, 2)
    assert [json.loads(x)["session"] for x in lines(path)] == ["before"]


def test_reopen_starts_a_new_file_at_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    log = AccessLog(path, "json", "relay")
    log.write(**entry(session="one"))
    path.rename(rotated)  # what logrotate does
    log.write(**entry(session="two"))  # still the old file until the reopen
    log.reopen()
    assert path.exists()
    log.write(**entry(session="three"))
    log.close()
    assert [json.loads(x)["session"] for x in lines(rotated)] == ["one", "two"]
    assert [json.loads(x)["session"] for x in lines(path)] == ["three"]
    assert log.errors == 0


def test_reopen_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path, "json", "relay")
    log.write(**entry(session="one"))
    log.reopen()  # nobody moved the file: keep appending, never truncate
    log.write(**entry(session="two"))
    log.close()
    assert [json.loads(x)["session"] for x in lines(path)] == ["one", "two"]


def test_failed_reopen_keeps_the_old_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = AccessLog(logs / "access.log", "json", "relay")
    log.write(**entry(session="one"))
    kept = tmp_path / "kept.log"
    (logs / "access.log").rename(kept)
    logs.rmdir()  # the path cannot be created again
    log.reopen()
    log.write(**entry(session="two"))
    log.close()
    assert [json.loads(x)["session"] for x in lines(kept)] == ["one", "two"]
    assert log.errors == 0


def test_dash_means_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog(Path("-"), "json", "agent")
    log.write(**entry(session="to-stderr"))
    log.reopen()  # no-op for stderr
    log.close()  # must not close stderr
    assert not sys.stderr.closed
    err = capsys.readouterr().err
    assert json.loads(err.splitlines()[-1])["session"] == "to-stderr"
