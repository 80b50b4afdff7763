"""The relay logs each agent and client_a connect and disconnect once, at info, with the
role, the peer address, the relay instance and the reason (issue 11, item 3).

    agent --WebSocket--> relay (--log-format json)   client_a --2 WebSockets--> relay
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from support.procs import Chain, Proc, wait_until

ADDRESS = re.compile(r"^127\.0\.0\.1:\d+$")


def events(relay: Proc, verb: str, role: str) -> list[dict]:
    found = []
    for line in relay.log_path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("role") == role and re.match(rf"{role} {verb} from ", doc.get("msg", "")):
            found.append(doc)
    return found


def check(doc: dict, relay: Proc, role: str) -> None:
    assert doc["level"] == "info", doc
    assert doc["role"] == role, doc
    assert ADDRESS.match(doc["peer"]), doc
    assert doc["instance"] == relay.ready["instance"], doc


def test_agent_connect_and_disconnect_logged_once_each(make_chain, rules_file: Path) -> None:
    chain: Chain = make_chain()
    relay = chain.start_relay("--log-format", "json")
    agent = chain.start_agent()
    wait_until(lambda: events(relay, "connected", "agent"), what="agent connect logged")
    agent.stop()  # a clean stop: the agent closes its WebSocket
    wait_until(lambda: events(relay, "disconnected", "agent"), what="agent disconnect logged")
    (connected,) = events(relay, "connected", "agent")
    (gone,) = events(relay, "disconnected", "agent")
    check(connected, relay, "agent")
    check(gone, relay, "agent")
    assert gone["peer"] == connected["peer"]
    assert gone["reason"], gone


def test_killed_client_is_logged_as_connection_lost(make_chain, rules_file: Path) -> None:
    chain: Chain = make_chain()
    relay = chain.start_relay("--log-format", "json")
    chain.start_agent()
    client = chain.start_client(rules_file)  # two carriers by default
    wait_until(lambda: len(events(relay, "connected", "client")) == 2, what="client connects")
    client.kill()  # no CLOSE frame: the sockets just go
    wait_until(lambda: len(events(relay, "disconnected", "client")) == 2, what="client disconnects")
    connected = events(relay, "connected", "client")
    gone = events(relay, "disconnected", "client")
    for doc in [*connected, *gone]:
        check(doc, relay, "client")
    assert {d["peer"] for d in gone} == {d["peer"] for d in connected}
    assert all(d["reason"] == "connection lost" for d in gone), gone
    assert len(events(relay, "connected", "agent")) == 1  # the agent is untouched
    assert not events(relay, "disconnected", "agent")
