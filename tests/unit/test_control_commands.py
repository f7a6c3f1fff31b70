"""The control socket's commands: each one declared is served and offered, and travels as declared.

The declarations are daetui/control/commands.py; the server answers them from
the ControlPlane (or a handler of its own), the client sends them. These tests
fail when the three drift apart: a command declared and not served, served
and not declared, or declared with arguments the plane does not take.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daetui.control.client import ControlClient, ControlError
from daetui.control.commands import COMMANDS, Command, ControlApi, convert
from daetui.control.plane import ControlPlane
from daetui.control.server import ControlServer
from daetui.control.state import MapEntries, ReloadResult
from daetui.routing.explain import ExplainResult

SERVED_BY_PLANE = [c for c in COMMANDS.values() if c.serves is not None]


def server_handler(c: Command) -> Any:
    return ControlServer.OWN[c.name] if c.serves is None else getattr(ControlPlane, c.serves)


def test_the_server_answers_exactly_the_commands_it_does_not_leave_to_the_plane() -> None:
    assert set(ControlServer.OWN) == {c.name for c in COMMANDS.values() if c.serves is None}


@pytest.mark.parametrize("c", COMMANDS.values(), ids=lambda c: c.name)
def test_every_command_is_served_with_the_arguments_it_declares(c: Command) -> None:
    handler = server_handler(c)
    sig = inspect.signature(handler)
    declared = {p.name: p for p in c.params}
    # Every declared argument is taken, and nothing the handler needs is left undeclared.
    sig.bind(None, **dict.fromkeys(declared))
    needed = {n for n, p in list(sig.parameters.items())[1:]
              if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    assert needed <= set(declared), f"{c.name}: the handler needs {needed - set(declared)}"
    # An argument left out takes the handler's default: the declaration must promise the same one.
    for name, p in sig.parameters.items():
        if name in declared and not declared[name].required and p.default is not inspect.Parameter.empty:
            assert declared[name].default == p.default, f"{c.name}({name}=...)"
    if c.blocking:
        assert not inspect.iscoroutinefunction(handler), f"{c.name} runs in a thread: it cannot be a coroutine"


@pytest.mark.parametrize("c", COMMANDS.values(), ids=lambda c: c.name)
def test_every_command_is_offered_by_the_client(c: Command) -> None:
    method = getattr(ControlClient, c.method)
    assert method.command is c, f"ControlClient.{c.method} is not the declared command"
    assert list(inspect.signature(method).parameters)[1:] == [p.name for p in c.params]


def test_a_command_cannot_be_declared_twice() -> None:
    from daetui.control.commands import command

    with pytest.raises(ValueError, match="declared twice"):
        command("ping", serves=None)(ControlApi.ping.__wrapped__)  # type: ignore[attr-defined]


def test_arguments_are_converted_as_the_server_always_did() -> None:
    assert convert(int, "5000") == 5000
    assert convert(list[int], ["3", 4]) == [3, 4]
    assert convert(str | None, 7) == "7"
    with pytest.raises(TypeError):
        convert(list[str], "a")
    c = COMMANDS["pin_node"]
    # A required argument that may be null (unpin) is null when absent, as before; others must be there.
    assert c.arguments({"group": "g"}) == {"group": "g", "node": None}
    with pytest.raises(ValueError, match="'group' missing"):
        c.arguments({"node": "n"})
    # Optional ones absent or null are left to the plane's default.
    assert COMMANDS["explain"].arguments({"target": "a", "mac": None, "port": "443"}) == {"target": "a", "port": 443}


# -- over a real socket, against a plane that records what it is asked ---------------------------

class RecordingPlane:
    """Answers as ControlPlane would, and keeps each call with the arguments it got."""

    started = 1234.5
    running = True
    config = SimpleNamespace(source="/etc/daetui/config.toml")

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.threads: dict[str, bool] = {}
        self.stopped = asyncio.Event()

    def _called(self, method: str, **kw: Any) -> None:
        self.calls.append((method, kw))
        self.threads[method] = threading.current_thread() is not threading.main_thread()

    def map_entries(self, name: str, search: str = "", limit: int = 5000) -> MapEntries:
        self._called("map_entries", name=name, search=search, limit=limit)
        return MapEntries(name, ("key", "value"), (("1", "2"),), 1)

    async def edit_rules(self, op: str, **kw: Any) -> ReloadResult:
        self._called("edit_rules", op=op, **kw)
        return ReloadResult(True, "edited", 7, toggled=("dport(22) -> direct",))

    def pin_node(self, group: str, node: str | None) -> None:
        self._called("pin_node", group=group, node=node)

    def explain(self, **query: Any) -> ExplainResult:
        self._called("explain", **query)
        return ExplainResult("proxy", 2, "rule #3")

    def close_connections(self, ids: list[int]) -> int:
        self._called("close_connections", ids=ids)
        return len(ids)

    def request_stop(self) -> None:
        self.stopped.set()


async def test_commands_travel_as_declared(tmp_path: Path) -> None:
    plane = RecordingPlane()
    server = ControlServer(plane, tmp_path / "control.sock")  # type: ignore[arg-type]
    await server.start()
    client = ControlClient(tmp_path / "control.sock")
    await client.connect()
    try:
        ping = await client.ping()
        assert (ping["started"], ping["config"], ping["running"]) == (1234.5, "/etc/daetui/config.toml", True)

        # A blocking command runs in a thread; the answer comes back as its declared type.
        entries = await client.map_entries("routing_tuples")
        assert entries == MapEntries("routing_tuples", ("key", "value"), (("1", "2"),), 1)
        assert plane.calls[-1] == ("map_entries", {"name": "routing_tuples", "search": "", "limit": 5000})
        assert plane.threads["map_entries"]

        # Only the arguments the caller gave reach the plane: the rest keep the plane's defaults.
        result = await client.edit_rules("toggle", 2, enabled=False, expect="dport(22) -> direct")
        assert result == ReloadResult(True, "edited", 7, toggled=("dport(22) -> direct",))
        assert plane.calls[-1] == ("edit_rules", {"op": "toggle", "index": 2, "enabled": False,
                                                  "expect": "dport(22) -> direct"})
        assert await client.explain(target="www.example.test:443", mac=None, sport=40000) == \
            ExplainResult("proxy", 2, "rule #3")
        assert plane.calls[-1] == ("explain", {"target": "www.example.test:443", "sport": 40000})

        # A command with nothing to say is done; null reaches the plane where it means something.
        assert await client.pin_node("proxy", None) is None
        assert plane.calls[-1] == ("pin_node", {"group": "proxy", "node": None})

        # The wire name is the declared one; the server converts what a hand-written request sends.
        assert await client.call("close", ids=["3", 4]) == 2
        assert plane.calls[-1] == ("close_connections", {"ids": [3, 4]})
        with pytest.raises(ControlError, match="unknown command 'closeall'"):
            await client.call("closeall")
        with pytest.raises(ControlError, match="'addr' missing"):
            await client.call("learn_name", name="x.example.test")

        assert await client.stop_daemon() is None
        await asyncio.wait_for(plane.stopped.wait(), 2)
    finally:
        await client.close()
        await server.stop()


async def test_events_reach_a_subscriber_in_order_a_burst_in_one_write(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from daetui.control import server as server_module
    from daetui.control.events import EventBus

    plane = RecordingPlane()
    plane.events = EventBus()  # type: ignore[attr-defined]
    server = ControlServer(plane, tmp_path / "control.sock")  # type: ignore[arg-type]
    writes = []
    real_forward = server_module.ControlServer._forward

    async def counting(self: ControlServer, sub: Any, writer: asyncio.StreamWriter) -> None:
        write = writer.write
        writer.write = lambda data: (writes.append(data.count(b"\n")), write(data))[1]  # type: ignore[method-assign]
        await real_forward(self, sub, writer)

    monkeypatch.setattr(server_module.ControlServer, "_forward", counting)
    await server.start()
    client = ControlClient(tmp_path / "control.sock")
    await client.connect()
    try:
        events = client.events()
        first = asyncio.ensure_future(events.__anext__())
        while not plane.events._subs:  # type: ignore[attr-defined]
            await asyncio.sleep(0.01)
        for i in range(200):  # a stream of connections: opened and closed
            plane.events.publish("conn.open" if i % 2 == 0 else "conn.close", id=i // 2)  # type: ignore[attr-defined]
        got = [await asyncio.wait_for(first, 5)]
        while len(got) < 200:
            got.append(await asyncio.wait_for(events.__anext__(), 5))
        assert [(e.kind, e.data["id"]) for e in got] == [
            ("conn.open" if i % 2 == 0 else "conn.close", i // 2) for i in range(200)]
        assert sum(writes) == 200 and len(writes) < 10  # batched, not a write per event
        plane.events.publish("log", n=1)  # type: ignore[attr-defined]
        late = await asyncio.wait_for(events.__anext__(), 5)  # a lone event still goes, within EVENT_BATCH
        assert (late.kind, late.data) == ("log", {"n": 1})
    finally:
        await client.close()
        await server.stop()
