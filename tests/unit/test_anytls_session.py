"""AnyTLS sessions (outbound/_anytls_session.py) against a scripted server on an in-memory "TLS" stream.

What mihomo does not show in the lab (tests/kernel/test_proxy_anytls.py): a SYNACK with an error, an
alert, a heartbeat, a v1 server that never acknowledges, a reused session that went silent, a stream
whose reader is slow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from daetui.net.stream import DialError
from daetui.outbound import _anytls_session as session_mod
from daetui.outbound import _anytls_wire as wire
from daetui.outbound import anytls
from daetui.outbound._address import socks_address
from daetui.outbound.direct import DirectDialer


class FakeTls:
    """The client's side of a connection whose server is the test: what was written, and what to read."""

    raw = None

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.writes: list[bytes] = []
        self.closed = False
        self.wrote = asyncio.Event()

    async def read(self, n: int) -> bytes:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise OSError("closed")
        self.writes.append(bytes(data))
        self.wrote.set()

    async def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        self.incoming.put_nowait(b"")

    # -- the server's side --

    def send(self, *frames: bytes) -> None:
        self.incoming.put_nowait(b"".join(frames))

    def frames(self) -> list[tuple[int, int, bytes]]:
        """What the client sent, as frames, cmdWaste left out."""
        stream, out = b"".join(self.writes), []
        while stream:
            parsed = wire.parse_frame(stream)
            assert parsed is not None, "a frame cut short"
            command, sid, data, used = parsed
            if command != wire.WASTE:
                out.append((command, sid, data))
            stream = stream[used:]
        return out

    async def until(self, predicate: Callable[[list[tuple[int, int, bytes]]], bool]) -> None:
        async with asyncio.timeout(2):
            while not predicate(self.frames()):
                self.wrote.clear()
                await self.wrote.wait()


def run(test: Callable[..., Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        node = anytls.AnyTlsNode("n", "203.0.113.5", 443, "pw")
        d = node.dialer(DirectDialer(mark=0), **kw)
        conns: list[FakeTls] = []

        async def connect(scheme: wire.PaddingScheme) -> FakeTls:
            conns.append(FakeTls())
            return conns[-1]

        d.pool.connect = connect
        try:
            return await test(d, conns)
        finally:
            d.close()

    return asyncio.run(main())


def acknowledge(conn: FakeTls, sid: int, error: bytes = b"") -> None:
    conn.send(*([wire.frame(wire.SERVER_SETTINGS, 0, b"v=2")] if sid == 1 else []),
              wire.frame(wire.SYNACK, sid, error))


async def connected(d: anytls.AnyTlsDialer, conns: list[FakeTls], host: str = "192.0.2.1", port: int = 80,
                    *, sid: int = 1, conn: int = -1) -> session_mod.AnyStream:
    """connect(), the server acknowledging the SYN."""
    task = asyncio.ensure_future(d.connect(host, port))
    async with asyncio.timeout(2):
        while len(conns) <= max(conn, 0) or not any(f[0] == wire.SYN and f[1] == sid for f in conns[conn].frames()):
            await asyncio.sleep(0.01)
    acknowledge(conns[conn], sid)
    return await task


def test_a_session_starts_with_settings_then_syn_and_the_destination_in_one_shaped_write() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await connected(d, conns, "example.com", 443)
        conn = conns[0]
        (settings, syn, psh) = conn.frames()
        assert settings[:2] == (wire.SETTINGS, 0)
        values = wire.parse_settings(settings[2])
        assert values["v"] == "2" and values["client"].startswith("daetui/")
        assert values["padding-md5"] == wire.DEFAULT_SCHEME.md5
        assert syn == (wire.SYN, 1, b"") and psh == (wire.PSH, 1, socks_address("example.com", 443))
        assert len(conn.writes) == 1 and 100 <= len(conn.writes[0]) < 400  # write 1 of the scheme: 100-400
        await s.write(b"x" * 3000)  # write 2: 400-500, then 500-1000s while bytes are left
        sizes = [len(w) for w in conn.writes[1:]]
        assert 400 <= sizes[0] < 500 and all(500 <= n < 1000 for n in sizes[1:-1])
        assert conn.frames()[3:] == [(wire.PSH, 1, b"x" * 3000)]
        conn.send(wire.frame(wire.PSH, 1, b"answer"), wire.frame(wire.FIN, 1))
        assert await s.read(100) == b"answer"
        assert await s.read(100) == b""

    run(test)


def test_a_synack_with_an_error_fails_the_dial_and_the_session_goes_on() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        task = asyncio.ensure_future(d.connect("192.0.2.1", 1))
        await asyncio.sleep(0.05)
        acknowledge(conns[0], 1, b"dial tcp 192.0.2.1:1: connection refused")
        with pytest.raises(DialError, match=r"could not reach 192\.0\.2\.1:1: dial tcp .* connection refused"):
            await task
        s = await connected(d, conns, sid=2)
        assert len(conns) == 1 and s.sid == 2

    run(test)


def test_a_server_that_closes_without_a_word_is_a_wrong_password() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        task = asyncio.ensure_future(d.connect("192.0.2.1", 80))
        await asyncio.sleep(0.05)
        conns[0].send(b"")
        with pytest.raises(DialError, match="wrong password"):
            await task
        assert not d.pool.sessions

    run(test)


def test_an_alert_ends_the_session_with_its_text() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        task = asyncio.ensure_future(d.connect("192.0.2.1", 80))
        await asyncio.sleep(0.05)
        conns[0].send(wire.frame(wire.ALERT, 0, b"client did not send its settings"))
        with pytest.raises(DialError, match="alert: client did not send its settings"):
            await task
        assert conns[0].closed

    run(test)


def test_heartbeats_are_answered_and_a_padding_update_is_for_the_next_sessions() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await connected(d, conns)
        conn = conns[0]
        conn.send(wire.frame(wire.HEART_REQUEST, 0), wire.frame(wire.UPDATE_PADDING, 0, b"stop=2\n0=5-5\n1=50-50"),
                  wire.frame(wire.WASTE, 0, bytes(100)), wire.frame(77, 0, b"future"), wire.frame(wire.PSH, 1, b"k"))
        assert await s.read(10) == b"k"
        await conn.until(lambda f: (wire.HEART_RESPONSE, 0, b"") in f)
        session = d.pool.sessions[0]
        assert session.scheme is wire.DEFAULT_SCHEME and session.padding_updates == 1
        assert d.pool.padding.scheme.raw == b"stop=2\n0=5-5\n1=50-50"
        session.close()
        await connected(d, conns, conn=1)
        settings = wire.parse_settings(conns[1].frames()[0][2])
        assert settings["padding-md5"] == d.pool.padding.scheme.md5
        assert [len(w) for w in conns[1].writes] == [50, len(conns[1].writes[1])]  # rule 1: 50 bytes, then the rest

    run(test)


def test_a_bad_padding_update_is_not_used() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await connected(d, conns)
        conns[0].send(wire.frame(wire.UPDATE_PADDING, 0, b"no stop here"), wire.frame(wire.PSH, 1, b"k"))
        assert await s.read(10) == b"k"
        assert d.pool.padding.scheme is wire.DEFAULT_SCHEME

    run(test)


def test_closing_sends_fin_and_the_idle_session_takes_the_next_stream() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await connected(d, conns)
        s.close()
        await conns[0].until(lambda f: (wire.FIN, 1, b"") in f)
        s2 = await connected(d, conns, sid=2)
        assert len(conns) == 1 and s2.sid == 2
        conns[0].send(wire.frame(wire.FIN, 2))   # the server's end: no FIN back
        assert await s2.read(10) == b""
        s2.close()
        await asyncio.sleep(0.05)
        assert (wire.FIN, 2, b"") not in conns[0].frames()
        with pytest.raises(DialError, match="has ended"):
            await s2.write(b"late")

    run(test)


def test_a_v1_server_never_acknowledges_its_streams_go_after_the_timeout_once() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await d.connect("192.0.2.1", 80)          # after handshake_timeout: no SYNACK, no server settings
        assert d.pool.sessions[0].peer_version == 1
        s.close()
        async with asyncio.timeout(0.1):               # and at once from then on
            await d.connect("192.0.2.1", 80)

    run(test, handshake_timeout=0.3)


def test_a_reused_session_that_went_silent_is_replaced() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await connected(d, conns)
        s.close()
        task = asyncio.ensure_future(d.connect("192.0.2.1", 80))   # sid 2 on the silent session, then a new one
        async with asyncio.timeout(2):
            while len(conns) < 2 or not conns[1].frames():
                await asyncio.sleep(0.01)
        acknowledge(conns[1], 1)
        s2 = await task
        assert conns[0].closed and s2.session is d.pool.sessions[-1] and s2.sid == 1

    run(test, handshake_timeout=0.3)


def test_a_slow_reader_holds_the_session_within_its_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "STREAM_BUFFER", 100)

    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        s = await connected(d, conns)
        conns[0].send(*(wire.frame(wire.PSH, 1, bytes([i]) * 60) for i in range(5)), wire.frame(wire.FIN, 1))
        await asyncio.sleep(0.05)
        assert len(s._buf) == 120, "two frames in, the third waits for room"
        got = b""
        while data := await s.read(1000):
            got += data
        assert got == b"".join(bytes([i]) * 60 for i in range(5))

    run(test)


def test_datagrams_are_uot_v2_in_a_stream() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        task = asyncio.ensure_future(d.datagrams())
        await asyncio.sleep(0.05)
        acknowledge(conns[0], 1)
        u = await task
        await u.send(b"query", "2001:db8::53", 53)
        frames = conns[0].frames()
        first = b"".join(f[2] for f in frames if f[0] == wire.PSH)
        assert first == (socks_address("sp.v2.udp-over-tcp.arpa", 0) + b"\x00" + socks_address("0.0.0.0", 0)
                         + wire.uot_packet(b"query", "2001:db8::53", 53))
        reply = wire.uot_packet(b"answer", "2001:db8::53", 53)
        conns[0].send(wire.frame(wire.PSH, 1, reply[:5]), wire.frame(wire.PSH, 1, reply[5:]))
        assert await u.recv() == (b"answer", "2001:db8::53", 53)
        conns[0].send(wire.frame(wire.FIN, 1))
        with pytest.raises(DialError, match="closed the UDP association"):
            await u.recv()

    run(test)


def test_idle_sessions_are_bounded_in_number() -> None:
    async def test(d: anytls.AnyTlsDialer, conns: list[FakeTls]) -> None:
        streams = [await connected(d, conns, conn=i) for i in range(3)]   # one stream each: three sessions
        assert len(conns) == 3
        for s in streams:
            s.close()
        assert [c.closed for c in conns] == [True, False, False]        # the oldest idle one went
        assert len(d.pool.sessions) == 2

    run(test, max_idle=2)
