"""The framed relay (shadowsocks, and TLS as trojan uses it, on the loop's transports), over loopback.

The server side speaks shadowsocks with the module's own Sealer and Opener
(ss-server itself is the peer in the kernel tests), or TLS with Python's ssl
module; each test runs on both loops daetui can use, asyncio's own and uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from daetui.control import relay_framed as relay_framed_module
from daetui.control.relay_framed import relay_framed
from daetui.net.stream import PlainCodec, SocketStream
from daetui.net.tls import start_tls
from daetui.outbound.shadowsocks import (
    LEN_FRAME,
    Opener,
    Sealer,
    SsStream,
    decode_address,
    encode_address,
    master_key,
    method_of,
    subkey,
)
from testkit.sockets import ByteCounter, read_all, tcp_pair

METHOD = method_of("aes-256-gcm")
KEY = master_key("framed relay test", METHOD.key_size)
TARGET = ("203.0.113.7", 443)
LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"), pytest.param(uvloop.new_event_loop, id="uvloop")]


class Server:
    """The shadowsocks server's end of the connection: reads the client's salt and address, answers framed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.opener: Opener | None = None
        self.buf = b""
        salt = os.urandom(METHOD.salt_size)
        self.sealer = Sealer(METHOD.aead(subkey(KEY, salt)))
        self.salt: bytes | None = salt

    async def _more(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 1 << 16)
        if not data:
            return False
        if self.opener is None:
            self.buf += data
            if len(self.buf) < METHOD.salt_size:
                return True
            self.opener = Opener(METHOD.aead(subkey(KEY, self.buf[:METHOD.salt_size])))
            data, self.buf = self.buf[METHOD.salt_size:], b""
        self.buf += self.opener.feed(data)
        return True

    async def target(self) -> tuple[str, int]:
        """The address the client's first chunk names."""
        while True:
            with contextlib.suppress(ValueError, IndexError):
                host, port, end = decode_address(self.buf)
                self.buf = self.buf[end:]
                return host, port
            assert await self._more(), "closed before the address"

    async def read_all(self) -> bytes:
        while await self._more():
            pass
        out, self.buf = self.buf, b""
        return out

    def frame(self, data: bytes) -> bytes:
        out = self.sealer.seal(data)
        if self.salt is not None:
            out, self.salt = self.salt + out, None
        return bytes(out)

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, self.frame(data))


Scenario = Callable[[socket.socket, Server, "asyncio.Task[str | None]", ByteCounter, ByteCounter], Awaitable[None]]


def run_relay(loop_factory: Callable[[], asyncio.AbstractEventLoop], scenario: Scenario,
              frame_timeout: float = 30.0) -> None:
    """A client, the relay (an SsStream's socket and codec) and a server; `scenario` drives the ends."""
    async def main() -> None:
        client, relay_client_side = tcp_pair()
        relay_server_side, server_sock = tcp_pair()
        stream = SsStream(SocketStream(relay_server_side), METHOD, KEY, encode_address(*TARGET), "test",
                          frame_timeout=frame_timeout)
        framing = stream.framed()
        assert framing is not None and framing[0] is relay_server_side
        up, down = ByteCounter(), ByteCounter()
        task = asyncio.ensure_future(relay_framed(relay_client_side, *framing, up, down))
        try:
            await asyncio.wait_for(scenario(client, Server(server_sock), task, up, down), 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The relay's transports closed its sockets; the test's own ends are closed here.
            assert relay_client_side.fileno() == -1 and relay_server_side.fileno() == -1
            client.close()
            server_sock.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_bytes_arrive_exactly_both_ways_with_half_close(loop_factory):
    up_data, down_data = os.urandom(3_000_017), os.urandom(2_000_003)

    async def scenario(client, server, task, up, down):
        loop = asyncio.get_running_loop()

        async def serve() -> bytes:
            assert await server.target() == TARGET
            got = await server.read_all()  # the client's EOF arrives as EOF here
            await server.send(down_data)    # and the server can still answer
            server.sock.shutdown(socket.SHUT_WR)
            return got

        async def use() -> bytes:
            await loop.sock_sendall(client, up_data)
            client.shutdown(socket.SHUT_WR)
            return await read_all(client)

        got_up, got_down = await asyncio.gather(serve(), use())
        assert await task is None
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up_data).digest()
        assert got_down == down_data
        assert (up.n, down.n) == (len(up_data), len(down_data))

    run_relay(loop_factory, scenario)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_server_first_destination_is_reached_before_the_client_says_anything(loop_factory):
    async def scenario(client, server, task, up, down):
        loop = asyncio.get_running_loop()
        assert await server.target() == TARGET  # the header went alone
        await server.send(b"220 smtp.example ready\r\n")
        assert await loop.sock_recv(client, 100) == b"220 smtp.example ready\r\n"
        await loop.sock_sendall(client, b"QUIT\r\n")
        client.shutdown(socket.SHUT_WR)
        assert await server.read_all() == b"QUIT\r\n"
        server.sock.shutdown(socket.SHUT_WR)
        assert await read_all(client) == b""
        assert await task is None and (up.n, down.n) == (6, 24)

    run_relay(loop_factory, scenario)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_tampered_chunk_resets_the_client_after_the_good_bytes(loop_factory):
    async def scenario(client, server, task, up, down):
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"GET / HTTP/1.1\r\n\r\n")
        assert await server.target() == TARGET
        good = server.frame(b"HTTP/1.1 200 OK\r\n")
        bad = bytearray(server.frame(b"and then this"))
        bad[-1] ^= 1  # the payload's tag no longer matches
        await loop.sock_sendall(server.sock, good + bad)
        error = await task
        assert error == "destination: shadowsocks test: chunk 1 failed authentication (tampered?)"
        got = bytearray()
        with pytest.raises(ConnectionResetError):
            while data := await loop.sock_recv(client, 1 << 16):
                got += data
        assert got == b"HTTP/1.1 200 OK\r\n"
        assert down.n == len(got)

    run_relay(loop_factory, scenario)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_server_gone_before_the_header_resets_the_client(loop_factory):
    # The header (with what the client sent) goes out before the transports are made: a server
    # that reset meanwhile fails the relay as a transport's failed write would.
    async def main() -> None:
        client, relay_client_side = tcp_pair()
        relay_server_side, server_sock = tcp_pair()
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server_sock.close()  # a reset
        await asyncio.sleep(0.05)
        stream = SsStream(SocketStream(relay_server_side), METHOD, KEY, encode_address(*TARGET), "test")
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.05)
        framing = stream.framed()
        assert framing is not None
        error = await asyncio.wait_for(relay_framed(relay_client_side, *framing, ByteCounter(), ByteCounter()), 10)
        assert error is not None and error.startswith("destination: ") and "reset" in error.lower()
        with pytest.raises(ConnectionResetError):
            await read_all(client)
        assert relay_client_side.fileno() == -1 and relay_server_side.fileno() == -1
        client.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_server_stalling_inside_a_chunk_is_cut_off(loop_factory):
    async def scenario(client, server, task, up, down):
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"hello")
        assert await server.target() == TARGET
        frame = server.frame(b"an answer that never ends")
        started = time.monotonic()
        await loop.sock_sendall(server.sock, frame[:METHOD.salt_size + LEN_FRAME + 3])  # and then nothing
        error = await task
        assert error == "destination: shadowsocks test: server stalled for 0.4s in the middle of a chunk"
        assert time.monotonic() - started >= 0.4
        with pytest.raises(ConnectionResetError):
            await read_all(client)

    run_relay(loop_factory, scenario, frame_timeout=0.4)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_client_that_does_not_read_holds_the_server_back(loop_factory):
    # Without backpressure the relay would read the server's 48 MiB into memory at once. And
    # while the client holds the server back (a second, far past frame_timeout, in the middle
    # of a chunk), the server is not stalling: nothing is cut off.
    total = 48 << 20
    payload = os.urandom(1 << 20) * 48

    async def scenario(client, server, task, up, down):
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"x")
        assert await server.target() == TARGET
        framed = memoryview(server.frame(payload))
        sent = 0
        idle_since = time.monotonic()
        while sent < len(framed) and time.monotonic() - idle_since < 1.0:  # until the server cannot send
            try:
                n = server.sock.send(framed[sent:sent + (1 << 20)])
            except BlockingIOError:
                await asyncio.sleep(0.02)
                continue
            sent += n
            idle_since = time.monotonic()
        assert sent < len(framed) // 2, f"the server pushed {sent >> 20} MiB into a client that reads nothing"
        reader = asyncio.ensure_future(read_all(client))
        await loop.sock_sendall(server.sock, framed[sent:])
        server.sock.shutdown(socket.SHUT_WR)
        got = await reader
        client.shutdown(socket.SHUT_WR)
        assert len(got) == total and got == payload
        assert await task is None

    run_relay(loop_factory, scenario, frame_timeout=0.2)


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_closing_the_relay_resets_the_client(loop_factory):
    async def scenario(client, server, task, up, down):
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"hello")
        assert await server.target() == TARGET
        while len(server.buf) < 5:  # the header may have gone alone, before the client's bytes came
            assert await server._more()
        assert server.buf == b"hello"
        # The header goes out before the transports are made: an answer read shows them made.
        await server.send(b"hi")
        assert await loop.sock_recv(client, 100) == b"hi"
        task.cancel()  # what "close the connection" in the console does
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ConnectionResetError):
            await read_all(client)
        with contextlib.suppress(ConnectionResetError):  # the server's side ends too, either way
            assert await asyncio.wait_for(read_all(server.sock), 5) == b""

    run_relay(loop_factory, scenario)


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("turns", range(6))
def test_a_closed_relay_has_let_go_of_its_sockets_when_it_returns(loop_factory, turns, monkeypatch):
    # Closed at any point of its set-up or after: when it returns, its transports have closed the
    # sockets (the caller closes its own socket objects next: a descriptor closed under a live
    # transport could be another connection's by then). Its safety wait is made long, so that
    # waiting on a transport that never reports its end would show.
    monkeypatch.setattr(relay_framed_module, "LOST_WAIT", 60.0)

    async def main() -> None:
        client, relay_client_side = tcp_pair()
        relay_server_side, server_sock = tcp_pair()
        task = asyncio.ensure_future(relay_framed(relay_client_side, relay_server_side, PlainCodec(),
                                                  ByteCounter(), ByteCounter()))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        loop = asyncio.get_running_loop()
        for s in (relay_client_side, relay_server_side):
            if s.fileno() != -1:  # never handed to a transport: still the caller's, held by nothing else
                loop.add_reader(s.fileno(), lambda: None)  # RuntimeError if a transport still uses it
                loop.remove_reader(s.fileno())
        for s in (client, server_sock, relay_client_side, relay_server_side):
            s.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


# -- TLS (trojan's stream): the session as the codec ------------------------------------------------

@pytest.fixture(scope="module")
def ca():
    from daetui.lab.dnspeers import LabCA

    authority = LabCA("relay.test", ("127.0.0.1",))
    yield authority
    authority.close()


def server_context(ca) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca.cert_file, ca.key_file)
    return ctx


def tls_server(ca, sock: socket.socket, expect: int, answer: bytes, got: list[bytes]) -> threading.Thread:
    """A TLS server on `sock` (a thread, blocking): reads `expect` bytes, answers, then close_notify."""
    def serve() -> None:
        sock.setblocking(True)
        sock.settimeout(20)
        with server_context(ca).wrap_socket(sock, server_side=True) as tls:
            data = bytearray()
            while len(data) < expect:
                chunk = tls.recv(1 << 16)
                assert chunk, "the client's bytes stopped early"
                data += chunk
            got.append(bytes(data))
            tls.sendall(answer)
            tls.unwrap()  # close_notify: the destination's end, inside the TLS
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tls_bytes_arrive_exactly_and_close_notify_ends_the_client_side(loop_factory, ca):
    up_data, down_data = os.urandom(2_000_003), os.urandom(3_000_017)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, relay_client_side = tcp_pair()
        relay_server_side, server_sock = tcp_pair()
        got: list[bytes] = []
        server = tls_server(ca, server_sock, len(up_data), down_data, got)
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        stream = await start_tls(SocketStream(relay_server_side), ctx, "relay.test", 10, half_close=False)
        framing = stream.framed()
        assert framing is not None and framing[0] is relay_server_side
        up, down = ByteCounter(), ByteCounter()
        task = asyncio.ensure_future(relay_framed(relay_client_side, *framing, up, down))
        try:
            await loop.sock_sendall(client, up_data)
            got_down = await asyncio.wait_for(read_all(client), 20)  # ends at the server's close_notify
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(task, 10) is None
            assert got_down == down_data
            assert got == [up_data]
            assert (up.n, down.n) == (len(up_data), len(down_data))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            client.close()
            await asyncio.to_thread(server.join, 20)
            server_sock.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tls_garbage_from_the_server_resets_the_client(loop_factory, ca):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client, relay_client_side = tcp_pair()
        relay_server_side, server_sock = tcp_pair()
        ready = threading.Event()

        def serve() -> None:
            server_sock.setblocking(True)
            server_sock.settimeout(20)
            tls = server_context(ca).wrap_socket(server_sock, server_side=True)
            ready.wait(20)
            tls.recv(100)
            os.write(tls.fileno(), b"\x17\x03\x03\x00\x20" + os.urandom(32))  # a record no key opens, under the TLS
        server = threading.Thread(target=serve, daemon=True)
        server.start()
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        stream = await start_tls(SocketStream(relay_server_side), ctx, "relay.test", 10, half_close=False)
        framing = stream.framed()
        assert framing is not None
        task = asyncio.ensure_future(relay_framed(relay_client_side, *framing, ByteCounter(), ByteCounter()))
        try:
            ready.set()
            await loop.sock_sendall(client, b"hello")
            error = await asyncio.wait_for(task, 10)
            assert error is not None and error.startswith("destination: TLS: "), error
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(read_all(client), 10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            client.close()
            await asyncio.to_thread(server.join, 20)
            server_sock.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
