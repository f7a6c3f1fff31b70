"""net/websocket.py against a WebSocket server made with wsproto's server side, over loopback.

The server is a real WebSocket implementation (the other half of the library),
driven step by step so a test can send what v2ray never does on cue: pings,
close frames, fragmented messages, refusals, garbage.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
from collections.abc import Awaitable, Callable

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
)

from daetui.control.relay_framed import relay_framed
from daetui.net.stream import DialError, SocketStream, framing_of
from daetui.net.websocket import MAX_FRAME, open_websocket, split_early_data
from testkit.sockets import ByteCounter, read_all, tcp_pair


class Server:
    """The server end of a tcp pair, speaking WebSocket through wsproto."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ws = WSConnection(ConnectionType.SERVER)
        self.loop = asyncio.get_running_loop()
        self.events: list[object] = []

    async def _more(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 1 << 16)
        self.ws.receive_data(data or None)
        self.events += list(self.ws.events())
        return bool(data)

    async def event(self, kind: type) -> object:
        """The next event of `kind` (others before it are dropped)."""
        while True:
            while self.events:
                e = self.events.pop(0)
                if isinstance(e, kind):
                    return e
            assert await self._more(), f"closed before a {kind.__name__}"

    async def send(self, *events: object) -> None:
        await self.loop.sock_sendall(self.sock, b"".join(self.ws.send(e) for e in events))

    async def accept(self, subprotocol_echo: bool = True) -> Request:
        req = await self.event(Request)
        assert isinstance(req, Request)
        sub = req.subprotocols[0] if (req.subprotocols and subprotocol_echo) else None
        await self.send(AcceptConnection(subprotocol=sub))
        return req

    async def data(self, n: int) -> bytes:
        """n bytes of the client's messages."""
        out = bytearray()
        while len(out) < n:
            e = await self.event(Message)
            assert isinstance(e, Message)
            out += e.data
        return bytes(out)


Scenario = Callable[[Server, socket.socket], Awaitable[None]]


def run(scenario: Callable[[Server], Awaitable[None]], client: Callable[[SocketStream], Awaitable[None]]) -> None:
    async def main() -> None:
        a, b = tcp_pair()
        server = Server(b)
        try:
            await asyncio.wait_for(asyncio.gather(scenario(server), client(SocketStream(a))), 10)
        finally:
            a.close()
            b.close()
    asyncio.run(main())


def test_split_early_data() -> None:
    assert split_early_data("/ray") == ("/ray", 0, "")
    assert split_early_data("/ray?ed=2048") == ("/ray", 2048, "")
    assert split_early_data("/ray?a=1&ed=2048&eh=X-Ed") == ("/ray?a=1", 2048, "X-Ed")
    assert split_early_data("/ray?a=1") == ("/ray?a=1", 0, "")
    with pytest.raises(ValueError, match="not a number"):
        split_early_data("/ray?ed=lots")


def test_handshake_path_host_headers_and_bytes_both_ways() -> None:
    up, down = os.urandom(300_000), os.urandom(200_000)

    async def scenario(s: Server) -> None:
        req = await s.accept()
        assert (req.target, req.host) == ("/ray?x=1", "cdn.test")
        assert (b"user-agent", b"daetui-test") in [(k.lower(), v) for k, v in req.extra_headers]
        assert req.subprotocols == []
        assert await s.data(len(up)) == up
        await s.send(BytesMessage(data=down[:1000]), BytesMessage(data=down[1000:]))

    async def client(inner: SocketStream) -> None:
        ws = await open_websocket(inner, host="cdn.test", path="/ray?x=1", headers=[("User-Agent", "daetui-test")],
                                  timeout=3)
        assert ws.raw is None
        await ws.write(up)  # more than MAX_FRAME: one message in several frames
        assert len(up) > MAX_FRAME
        got = bytearray()
        while len(got) < len(down):
            data = await ws.read(1 << 16)
            assert data
            got += data
        assert got == down

    run(scenario, client)


@pytest.mark.parametrize(("path", "header", "max_ed"), [
    ("/ray?ed=2048", "Sec-WebSocket-Protocol", 0),
    ("/ray", "Sec-WebSocket-Protocol", 100),
    ("/ray?ed=100&eh=X-Early", "Sec-WebSocket-Protocol", 0),
    ("/ray", "X-Early", 100),
])
def test_early_data_in_the_header(path: str, header: str, max_ed: int) -> None:
    """The first bytes go base64url (no padding) in the header; the rest as the first message; `ed` not sent."""
    first = os.urandom(1500)
    limit = max_ed or int(path.split("ed=")[1].split("&")[0])

    async def scenario(s: Server) -> None:
        req = await s.accept()
        assert req.target == "/ray"
        if "X-Early" in header + path:
            values = [v for k, v in req.extra_headers if k.lower() == b"x-early"]
            assert len(values) == 1 and req.subprotocols == []
            token = values[0].decode()
        else:
            assert len(req.subprotocols) == 1
            token = req.subprotocols[0]
        assert "=" not in token
        assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) == first[:limit]
        if len(first) > limit:
            assert await s.data(len(first) - limit) == first[limit:]
        await s.send(BytesMessage(data=b"ok"))

    async def client(inner: SocketStream) -> None:
        ws = await open_websocket(inner, host="h", path=path, early_data=first, early_data_header=header,
                                  max_early_data=max_ed, timeout=3)
        assert await ws.read(10) == b"ok"

    run(scenario, client)


def test_no_early_data_without_ed() -> None:
    """Without `ed`, early_data is the first message and no header carries it."""
    async def scenario(s: Server) -> None:
        req = await s.accept()
        assert req.subprotocols == []
        assert await s.data(5) == b"first"

    async def client(inner: SocketStream) -> None:
        await open_websocket(inner, host="h", path="/", early_data=b"first", timeout=3)

    run(scenario, client)


def test_ping_is_answered_and_close_ends_the_stream() -> None:
    async def scenario(s: Server) -> None:
        await s.accept()
        await s.send(Ping(payload=b"are you there"), BytesMessage(data=b"one"))
        pong = await s.event(Pong)
        assert isinstance(pong, Pong) and pong.payload == b"are you there"
        await s.send(BytesMessage(data=b"two", message_finished=False), BytesMessage(data=b"three"))
        await s.send(CloseConnection(code=1000))
        close = await s.event(CloseConnection)  # the client answers the close
        assert isinstance(close, CloseConnection)

    async def client(inner: SocketStream) -> None:
        ws = await open_websocket(inner, host="h", path="/", timeout=3)
        got = bytearray()
        while data := await ws.read(100):
            got += data
        assert got == b"onetwothree"
        assert await ws.read(100) == b""
        await ws.write(b"after the close")  # dropped: the session is over
        await ws.write_eof()  # nothing: no half-close in WebSocket

    run(scenario, client)


@pytest.mark.parametrize(("answer", "reason"), [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found", "HTTP 404 (wrong path?): not found"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Accept: wrong\r\n\r\n", "not an HTTP upgrade: Bad accept token"),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP upgrade"),
    (b"", "closed the connection before answering"),
])
def test_a_bad_answer_is_a_clear_dial_error(answer: bytes, reason: str) -> None:
    async def scenario(s: Server) -> None:
        await s.event(Request)
        await s.loop.sock_sendall(s.sock, answer)
        s.sock.shutdown(socket.SHUT_WR)

    async def client(inner: SocketStream) -> None:
        with pytest.raises(DialError, match=re.escape(reason)):
            await open_websocket(inner, host="h", path="/", timeout=3)
        assert inner.sock.fileno() == -1  # closed on failure

    run(scenario, client)


def test_handshake_timeout() -> None:
    async def scenario(s: Server) -> None:
        await s.event(Request)  # and never answers

    async def client(inner: SocketStream) -> None:
        with pytest.raises(DialError, match=r"no upgrade answer in 0.3s"):
            await open_websocket(inner, host="h", path="/", timeout=0.3)

    run(scenario, client)


def test_a_bad_frame_is_a_dial_error() -> None:
    """A control frame longer than 125 bytes (refused by the spec), and a frame cut off by the end."""
    async def scenario(s: Server) -> None:
        await s.accept()
        await s.loop.sock_sendall(s.sock, bytes((0x89, 126)) + (200).to_bytes(2, "big") + b"x" * 200)

    async def client(inner: SocketStream) -> None:
        with pytest.raises(DialError, match="bad frame from the server: Control frame with payload len > 125"):
            # it may come with the upgrade's answer (then open_websocket fails) or after it
            ws = await open_websocket(inner, host="h", path="/", timeout=3)
            await ws.read(10)

    run(scenario, client)

    async def cut(s: Server) -> None:
        await s.accept()
        await s.loop.sock_sendall(s.sock, bytes((0x82, 100)) + b"y" * 40)
        s.sock.shutdown(socket.SHUT_WR)

    async def client2(inner: SocketStream) -> None:
        ws = await open_websocket(inner, host="h", path="/", timeout=3)
        assert await ws.read(100) == b"y" * 40
        with pytest.raises(DialError, match="closed in the middle of a frame"):
            await ws.read(100)

    run(cut, client2)


def test_framed_codec_in_the_relay() -> None:
    """The relay's framed path over a plain socket: bytes both ways, a ping answered, the close ending it."""
    up, down = os.urandom(500_000), os.urandom(400_000)

    async def main() -> None:
        a, b = tcp_pair()
        client, relay_side = tcp_pair()
        server = Server(b)
        loop = asyncio.get_running_loop()
        try:
            accept = asyncio.ensure_future(server.accept())
            ws = await open_websocket(SocketStream(a), host="h", path="/", timeout=3)
            await accept
            framing = framing_of(ws)
            assert framing is not None and framing[0] is a
            task = asyncio.ensure_future(relay_framed(relay_side, *framing, ByteCounter(), ByteCounter()))

            async def serve() -> None:
                assert await server.data(len(up)) == up
                await server.send(Ping(payload=b"p"), BytesMessage(data=down))
                assert isinstance(await server.event(Pong), Pong)
                await server.send(CloseConnection(code=1000))
                assert isinstance(await server.event(CloseConnection), CloseConnection)

            async def use() -> bytes:
                await loop.sock_sendall(client, up)
                got = await read_all(client)  # the server's close is the client's end
                client.shutdown(socket.SHUT_WR)
                return got

            got = (await asyncio.wait_for(asyncio.gather(serve(), use()), 10))[1]
            assert got == down
            assert await asyncio.wait_for(task, 5) is None
        finally:
            for s in (b, client):
                s.close()
            with contextlib.suppress(OSError):
                a.close()

    asyncio.run(main())


def test_refusal_body_is_bounded() -> None:
    """A refusal's body is quoted in part, whatever its size."""
    async def scenario(s: Server) -> None:
        await s.event(Request)
        await s.send(RejectConnection(status_code=403, has_body=True, headers=[(b"content-length", b"100000")]),
                     RejectData(data=b"z" * 100_000))

    async def client(inner: SocketStream) -> None:
        with pytest.raises(DialError, match=r"HTTP 403: z{200}$"):
            await open_websocket(inner, host="h", path="/", timeout=3)

    run(scenario, client)
