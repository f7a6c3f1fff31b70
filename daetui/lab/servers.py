"""The lab's "internet" servers, run inside the `wan` namespace.

    python -m daetui.lab.servers --http 80 --echo 7 --sink 9 --source 19 ADDR...

On every address: an HTTP server (`/` names the host, `/whoami` tells the
client address the server saw, `/bytes/N` sends N bytes), TCP and UDP echo,
a TCP sink that answers the byte count it read once the client half-closes,
and a TCP source that sends the number of bytes the client asks for.
Prints `ready` on stdout once every socket listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

CHUNK = 1 << 16
PATTERN = bytes(range(256)) * (CHUNK // 256)


def pattern_bytes(n: int) -> bytes:
    """The deterministic payload the source and /bytes/N send (tests compare it)."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


async def _send_pattern(writer: asyncio.StreamWriter, n: int) -> None:
    sent = 0
    while sent < n:
        k = min(CHUNK, n - sent)
        writer.write(PATTERN[:k])
        sent += k
        await writer.drain()


async def handle_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    local = writer.get_extra_info("sockname")[0]
    peer = writer.get_extra_info("peername")[0]
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        parts = head.split(b"\r\n", 1)[0].split()
        path = parts[1].decode() if len(parts) > 1 else "/"
        if path.startswith("/bytes/") and path[7:].isdigit():
            n = int(path[7:])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % n)
            await _send_pattern(writer, n)
        else:
            body = f"{peer}\n".encode() if path == "/whoami" else f"daetui lab host {local}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def handle_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def handle_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    total = 0
    try:
        while data := await reader.read(CHUNK):
            total += len(data)
        writer.write(f"{total}\n".encode())
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def handle_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 10)
        await _send_pattern(writer, int(line.strip() or b"0"))
    except (ValueError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


async def serve(args: argparse.Namespace) -> None:
    servers: list[asyncio.AbstractServer] = []
    loop = asyncio.get_running_loop()
    tcp = [(args.http, handle_http), (args.echo, handle_echo), (args.sink, handle_sink),
           (args.source, handle_source)]
    for addr in args.addresses:
        for port, handler in tcp:
            servers.append(await asyncio.start_server(handler, addr, port, family=_family(addr),
                                                      reuse_address=True))
        await loop.create_datagram_endpoint(UdpEcho, local_addr=(addr, args.echo), family=_family(addr))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="daetui.lab.servers")
    parser.add_argument("--http", type=int, default=80)
    parser.add_argument("--echo", type=int, default=7)
    parser.add_argument("--sink", type=int, default=9)
    parser.add_argument("--source", type=int, default=19)
    parser.add_argument("addresses", nargs="+")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
