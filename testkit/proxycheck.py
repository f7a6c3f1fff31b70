"""What every proxy protocol's lab test asks of a dialer: bytes from the wan's source server, bytes through
its echo server, datagrams through its UDP echo, and the words of a dial that fails.

The wan's servers (daetui.lab.servers) listen on every lab host address: SOURCE_PORT sends the
number of bytes a client asks for (`pattern_bytes`) and closes; ECHO_PORT sends back what it
reads, on TCP and UDP.
"""

from __future__ import annotations

import asyncio
import contextlib

from daetui.lab.topology import ADDR, ECHO_PORT, SOURCE_PORT
from daetui.net.stream import Datagrams, Dialer, DialError, Stream

PIECE = 50_000  # writes of an odd size: frames, chunks and records end anywhere


async def read_to_end(stream: Stream, limit: int = 4 << 20) -> bytes:
    """What a dialer's stream gives until its end; more than `limit` bytes fails the test."""
    out = bytearray()
    while data := await stream.read(1 << 16):
        out += data
        assert len(out) <= limit, "more bytes than were asked for"
    return bytes(out)


async def download(d: Dialer, dest: str, n: int) -> bytes:
    """n bytes from the wan's source server on `dest`, through the dialer."""
    s = await d.connect(dest, SOURCE_PORT)
    try:
        await s.write(f"{n}\n".encode())
        return await read_to_end(s)
    finally:
        s.close()


async def echo(d: Dialer, dest: str, payload: bytes, *, half_close: bool = False) -> bytes:
    """`payload` through the wan's echo server on `dest`, written in pieces while the answer is read
    (then, with `half_close`, the stream's end sent too)."""
    s = await d.connect(dest, ECHO_PORT)
    try:
        async def send() -> None:
            for i in range(0, len(payload), PIECE):
                await s.write(payload[i:i + PIECE])
            if half_close:
                await s.write_eof()

        sender = asyncio.ensure_future(send())
        got = bytearray()
        try:
            while len(got) < len(payload):
                data = await s.read(1 << 16)
                assert data, f"echo ended after {len(got)} bytes"
                got += data
            await sender
        finally:
            sender.cancel()
        return bytes(got)
    finally:
        s.close()


async def udp_round(u: Datagrams, dests: list[str], sizes: tuple[int, ...], timeout: float = 5) -> None:
    """Datagrams of a few sizes to the UDP echo of each destination; all come back, their senders named."""
    sent = []
    for dest in dests:
        for size in sizes:
            data = f"{dest} {size} ".encode().ljust(size, b".")[:size]
            sent.append((data, dest, ECHO_PORT))
            await u.send(data, dest, ECHO_PORT)
    got = [await asyncio.wait_for(u.recv(), timeout) for _ in sent]
    assert sorted(got) == sorted(sent)


async def outcome(d: Dialer, dest: str = ADDR.hosts4[0]) -> str:
    """What one request through the dialer to the echo on `dest` comes to: its data, or the DialError's words."""
    try:
        s = await d.connect(dest, ECHO_PORT)
        try:
            await s.write(b"ping")
            data = await asyncio.wait_for(s.read(1 << 16), 5)
        finally:
            s.close()
        return f"data {data[:40]!r}"
    except DialError as e:
        return f"DialError {e}"


async def through_framed_relay(d: Dialer, dest: str, port: int, request: bytes, expect: int, *,
                               cancel: bool = True) -> tuple[bytes, int, int]:
    """A client socket relayed by relay_framed over the dialer's stream to dest:port: (what the client got
    back, bytes counted up, bytes counted down) once `expect` bytes came back.

    The stream must offer the framed path (framing_of). At the end the relay is cancelled, or with
    `cancel=False` given 5 s to end by itself after the client closed (it passes the end on).
    """
    from daetui.control.relay_framed import relay_framed
    from daetui.net.stream import framing_of
    from testkit.sockets import ByteCounter, tcp_pair

    s = await d.connect(dest, port)
    framing = framing_of(s)
    assert framing is not None, f"{type(s).__name__} must offer the framed relay"
    client, relay_side = tcp_pair()
    up, down = ByteCounter(), ByteCounter()
    task = asyncio.ensure_future(relay_framed(relay_side, *framing, up, down))
    loop = asyncio.get_running_loop()
    try:
        sender = asyncio.ensure_future(loop.sock_sendall(client, request))
        got = bytearray()
        while len(got) < expect:
            data = await loop.sock_recv(client, 1 << 16)
            assert data, f"relay ended after {len(got)} bytes: {task.done() and task.result()}"
            got += data
        await sender
        return bytes(got), up.n, down.n
    finally:
        client.close()
        if cancel:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
