"""A relay worker (daetui/control/worker.py) driven through its channel, as the main process drives it.

The worker runs on the test's loop with a plain loopback listener (the kernel's hand-over is the lab's
business: tests/kernel/test_relay_workers.py); the test answers its questions. What is checked here is
the protocol's edges: a flow relayed and reported, a close that arrives before the plan, a plan that
arrives after the flow gave up, a node the worker was never sent, one client's share of the waiting.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from daetui.control import worker as worker_mod
from daetui.control.worker import Worker
from daetui.control.workerwire import Channel


class Main:
    """The main process's end: the worker's messages in a queue, `send` to it."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.channel: Channel | None = None

    async def next(self, kind: str, timeout: float = 5.0) -> tuple[Any, ...]:
        """The next message of this kind (others, such as counts, are passed over)."""
        async with asyncio.timeout(timeout):
            while True:
                m = await self.inbox.get()
                if m[0] == kind:
                    return m

    def send(self, m: tuple[Any, ...]) -> None:
        assert self.channel is not None
        self.channel.send(m)


@pytest.fixture
async def world(request, monkeypatch):  # type: ignore[no-untyped-def]
    """(main, the worker, its listener's address, an echo server's); `indirect` params: the worker module's
    bounds to set before it starts."""
    for name, value in getattr(request, "param", {}).items():
        monkeypatch.setattr(worker_mod, name, value)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    main = Main()
    main.channel = await Channel.open(mine, main.inbox.put_nowait, lambda exc: None)
    w = Worker(theirs, 0, [listener])
    task = asyncio.ensure_future(w.run())
    assert (await main.next("ready"))[1] > 0
    yield main, w, listener.getsockname(), server.sockets[0].getsockname()
    main.send(("stop",))
    await asyncio.wait_for(task, 5)
    server.close()
    main.channel.close()


async def connect(addr: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*addr)


async def test_a_flow_is_planned_relayed_counted_and_reported_done(world) -> None:  # type: ignore[no-untyped-def]
    main, _, at, echo = world
    reader, writer = await connect(at)
    _, tag, client, dst = await main.next("open")
    assert dst == at and client == writer.get_extra_info("sockname")
    main.send(("plan", tag, 11, "dial", None, echo[0], echo[1], None, False, 0))
    writer.write(b"x" * 100_000)
    got = await reader.readexactly(100_000)
    assert got == b"x" * 100_000
    counts = await main.next("counts")   # every 0.5 s, of the flows that moved
    while counts[1][0][:3] != (11, 100_000, 100_000):   # a report in the middle of the transfer
        counts = await main.next("counts")
    writer.close()
    done = await main.next("done")
    assert done[1:4] == (11, 100_000, 100_000) and done[5] is None


async def test_a_close_that_comes_before_the_plan_is_carried_out_when_the_plan_lands(world) -> None:  # type: ignore[no-untyped-def]
    main, _, at, echo = world
    reader, _writer = await connect(at)
    _, tag, *_ = await main.next("open")
    main.send(("close", [(12, "closed from the console")]))   # the same frame as the plan
    main.send(("plan", tag, 12, "dial", None, echo[0], echo[1], None, False, 0))
    done = await main.next("done")
    assert done[1] == 12 and done[5] == "closed from the console"
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)


@pytest.mark.parametrize("world", [{"ANSWER_TIMEOUT": 0.2}], indirect=True)
async def test_a_plan_that_comes_after_the_flow_gave_up_ends_its_row(world) -> None:  # type: ignore[no-untyped-def]
    main, _, at, echo = world
    reader, _writer = await connect(at)
    _, tag, *_ = await main.next("open")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)     # given up: the client is reset
    main.send(("plan", tag, 13, "dial", None, echo[0], echo[1], None, False, 0))
    done = await main.next("done")
    assert done[1] == 13 and "too late" in done[5]


async def test_a_node_the_worker_was_never_sent_fails_the_flow_and_is_asked_for(world) -> None:  # type: ignore[no-untyped-def]
    main, _, at, _echo = world
    _reader, _writer = await connect(at)
    _, tag, *_ = await main.next("open")
    main.send(("plan", tag, 14, "dial", "n1", "203.0.113.10", 443, None, False, 0))
    assert (await main.next("unknown_node"))[1] == "n1"
    done = await main.next("done")
    assert done[1] == 14 and "not known" in done[5]


@pytest.mark.parametrize("world", [{"MAX_WAITING_CLIENT": 3}], indirect=True)   # max_flows_per_client's part
async def test_one_client_holds_at_most_its_share_of_the_flows_waiting_for_a_plan(world) -> None:  # type: ignore[no-untyped-def]
    main, w, at, _echo = world
    held = [await connect(at) for _ in range(3)]
    for _ in range(3):
        await main.next("open")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        reader, _ = await connect(at)   # the fourth from the same address, while three wait: reset at once
        await asyncio.wait_for(reader.readexactly(1), 5)
    assert main.inbox.empty() or all(m[0] != "open" for m in main.inbox._queue)  # type: ignore[attr-defined]
    assert sum(w._waiting_by.values()) == 3
    for _, writer in held:
        writer.close()
