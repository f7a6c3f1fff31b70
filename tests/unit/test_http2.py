"""net/http2.py against an HTTP/2 server made with the h2 library's server side, over loopback (no TLS).

The server plays v2ray's h2 inbound by hand, so a test can hold back flow
control, refuse, reset or go away on cue.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from daetui.net.http2 import WINDOW, Http2Stream, open_http2
from daetui.net.stream import DialError, SocketStream
from testkit.sockets import tcp_pair


class Server:
    """The server end of a tcp pair, speaking HTTP/2 through h2."""

    def __init__(self, sock: socket.socket, window: int = 65535) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.conn.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.body = bytearray()
        self.ended = False
        self.auto_ack = True

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.loop.sock_sendall(self.sock, data)

    async def more(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 1 << 16)
        if not data:
            return False
        for e in self.conn.receive_data(data):
            if isinstance(e, h2.events.DataReceived):
                self.body += e.data
                if self.auto_ack:
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                self.ended = True
            self.events.append(e)
        await self.flush()
        return True

    async def request(self) -> dict[bytes, bytes]:
        await self.flush()
        while True:
            for e in self.events:
                if isinstance(e, h2.events.RequestReceived):
                    return dict(e.headers)
            assert await self.more(), "closed before the request"

    async def respond(self, status: int = 200, end: bool = False) -> None:
        self.conn.send_headers(1, [(b":status", str(status).encode())], end_stream=end)
        await self.flush()

    async def send(self, data: bytes, end: bool = False) -> None:
        """`data` as response body, within the client's flow-control windows."""
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(1), self.conn.max_outbound_frame_size)
            if window <= 0:
                assert await self.more(), "closed while we waited for its window"
                continue
            self.conn.send_data(1, bytes(view[:window]))
            view = view[window:]
            await self.flush()
        if end:
            self.conn.end_stream(1)
            await self.flush()

    async def body_of(self, n: int) -> bytes:
        while len(self.body) < n:
            assert await self.more(), f"closed after {len(self.body)} of {n} body bytes"
        return bytes(self.body[:n])


def run(scenario: Callable[[Server], Awaitable[None]], client: Callable[[SocketStream], Awaitable[None]],
        window: int = 65535) -> None:
    async def main() -> None:
        a, b = tcp_pair()
        server = Server(b, window)
        try:
            await asyncio.wait_for(asyncio.gather(scenario(server), client(SocketStream(a))), 15)
        finally:
            a.close()
            b.close()
    asyncio.run(main())


async def read_n(s: Http2Stream, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = await s.read(1 << 16)
        assert data, f"ended after {len(got)} bytes"
        got += data
    return bytes(got)


def test_put_request_body_both_ways_and_half_close() -> None:
    """PUT path to a host of the list; a body larger than every window both ways; END_STREAM as the end."""
    up, down = os.urandom(1_000_000), os.urandom(3 * WINDOW + 17)

    async def scenario(s: Server) -> None:
        headers = await s.request()
        assert headers[b":method"] == b"PUT" and headers[b":path"] == b"/ray"
        assert headers[b":authority"] in (b"a.test", b"b.test") and headers[b":scheme"] == b"https"
        await s.respond()
        assert await s.body_of(len(up)) == up
        while not s.ended:  # the client's write_eof
            assert await s.more()
        await s.send(down, end=True)

    async def client(inner: SocketStream) -> None:
        h = await open_http2(inner, hosts=["a.test", "b.test"], path="/ray", timeout=3, early_data=up[:10])
        await h.write(up[10:])
        await h.write_eof()
        assert await read_n(h, len(down)) == down
        assert await h.read(10) == b""
        with pytest.raises(DialError, match="write after the end"):
            await h.write(b"more")
        h.close()

    run(scenario, client)  # the server's window is h2's default, 64 KiB: the upload waits for its updates


def test_receive_buffer_is_bounded_by_the_window() -> None:
    """A server with more to send than we read: it stops at our window, which reopens as we read."""
    down = os.urandom(4 * WINDOW)

    async def scenario(s: Server) -> None:
        await s.request()
        await s.respond()
        await s.send(down, end=True)

    async def client(inner: SocketStream) -> None:
        h = await open_http2(inner, hosts=[], path="/", timeout=3)
        await asyncio.sleep(0.3)  # the server sends what it may, nothing is read
        assert WINDOW // 2 <= len(h.buf) <= WINDOW
        assert await read_n(h, len(down)) == down

    run(scenario, client)


@pytest.mark.parametrize(("status", "reason"), [(404, "HTTP 404 (wrong path or host?)"), (502, "HTTP 502")])
def test_refusal_on_first_read(status: int, reason: str) -> None:
    async def scenario(s: Server) -> None:
        headers = await s.request()
        assert headers[b":authority"] == b"www.example.com"  # v2ray's default host when none is given
        await s.respond(status, end=True)
        await s.more()

    async def client(inner: SocketStream) -> None:
        h = await open_http2(inner, hosts=[], path="x", timeout=3)
        with pytest.raises(DialError, match=re.escape(reason)):
            await h.read(10)
        with pytest.raises(DialError, match=re.escape(reason)):
            await h.write(b"x")
        h.close()

    run(scenario, client)


@pytest.mark.parametrize("how", ["reset", "goaway", "close", "garbage"])
def test_server_breaking_off(how: str) -> None:
    async def scenario(s: Server) -> None:
        await s.request()
        await s.respond()
        await s.send(b"some")
        if how == "reset":
            s.conn.reset_stream(1, 8)
        elif how == "goaway":
            s.conn.close_connection(2)
        await s.flush()
        if how == "garbage":
            # SETTINGS of 5 bytes (a multiple of 6 is required): a connection error
            await s.loop.sock_sendall(s.sock, b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\xff" * 5)
        s.sock.shutdown(socket.SHUT_WR)

    reasons = {"reset": "reset the request", "goaway": "GOAWAY", "close": "closed the connection before the "
               "response ended", "garbage": "protocol error"}

    async def client(inner: SocketStream) -> None:
        h = await open_http2(inner, hosts=["h"], path="/", timeout=3)
        got = bytearray()
        with pytest.raises(DialError, match=reasons[how]):
            while True:
                data = await h.read(100)
                assert data
                got += data
        assert got in (b"", b"some")
        h.close()

    run(scenario, client)
