"""SOCKS4 and SOCKS4a dialers against real servers: danted (SOCKS4) and OpenSSH's `ssh -D` (SOCKS4 and 4a).

Every dial is made from the router namespace, where daetui runs, to the proxies on
203.0.113.11 / 2001:db8:3::11 (the server reached over IPv4 or IPv6; the destinations are
IPv4, all SOCKS4 can carry). danted 1.4.2 serves SOCKS4 but not SOCKS4a: it takes the
0.0.0.1 of a 4a request for an address and refuses, which is tested as what a user of a
socks4a:// link against it sees. `ssh -D` hands each request to an sshd on the wan's
loopback, which resolves 4a names (only the lab's `www.lab.test`, from its own /etc/hosts).

Not tested as a refusal: ssh -D grants a SOCKS4 request before sshd has connected, so a
destination sshd cannot reach (a closed port) showed here as a granted stream that then
stayed silent, never as reply 91 -- nothing a client can tell apart from a slow server.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from helpers import dial_http_get, in_router, read_to_end

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, SOURCE_PORT, Lab
from daetui.net.netns import netns
from daetui.net.stream import DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.socks4 import Socks4Dialer, parse_link
from testkit.peers.socks_http import BLOCKED, LAB_NAME, PROXY4, PROXY6, Danted, SshSocks

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

# Ports of this module's servers (no other test module uses them).
DANTED_PORT = 1094
SSH_SOCKS_PORT = 1095
SSHD_PORT = 2294
MB = 1 << 20
ECHO = 256 << 10
DIRECT = DirectDialer(mark=0, connect_timeout=3.0)
WEB4 = ADDR.hosts4[0]


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[dict[str, object]]:
    with ExitStack() as stack:
        danted = Danted(lab, DANTED_PORT)
        stack.callback(danted.stop)
        danted.start()
        ssh = SshSocks(lab, SSH_SOCKS_PORT, SSHD_PORT)
        stack.callback(ssh.stop)
        ssh.start()
        yield {"danted": danted, "ssh": ssh}


def proxy(v: int) -> str:
    return PROXY4 if v == 4 else f"[{PROXY6}]"


# (case, link template, destination host): socks4 sends addresses, socks4a the name.
CASES = {
    "danted-socks4": (f"socks4://{{proxy}}:{DANTED_PORT}", WEB4),
    "ssh-socks4": (f"socks4://lab-user@{{proxy}}:{SSH_SOCKS_PORT}", WEB4),
    "ssh-socks4a": (f"socks4a://{{proxy}}:{SSH_SOCKS_PORT}", LAB_NAME),
}
BY_CASE = pytest.mark.parametrize("case", list(CASES))
BY_FAMILY = pytest.mark.parametrize("v", [4, 6])


def dialer(case: str, v: int) -> tuple[Socks4Dialer, str]:
    template, dest = CASES[case]
    node = parse_link(template.format(proxy=proxy(v)), f"{case}-v{v}")
    assert parse_link(node.link()) == node
    return node.dialer(DIRECT), dest


@BY_CASE
@BY_FAMILY
def test_megabyte_download(lab: Lab, peers: dict[str, object], case: str, v: int) -> None:
    """1 MB from the lab's source server, intact; the stream is the socket itself (the relay splices it)."""
    d, dest = dialer(case, v)

    async def go() -> bytes:
        stream = await d.connect(dest, SOURCE_PORT)
        try:
            assert stream.raw is not None
            await stream.write(b"%d\n" % MB)
            return await read_to_end(stream)
        finally:
            stream.close()

    assert in_router(lab, go()) == pattern_bytes(MB)


@BY_CASE
@BY_FAMILY
def test_echo(lab: Lab, peers: dict[str, object], case: str, v: int) -> None:
    """256 KB up and back through the echo server, intact; our half-close reaches it and its end comes back."""
    d, dest = dialer(case, v)
    payload = os.urandom(ECHO)

    async def go() -> bytes:
        stream = await d.connect(dest, ECHO_PORT)

        async def send() -> None:
            await stream.write(payload)
            await stream.write_eof()

        try:
            sender = asyncio.ensure_future(send())  # read while writing: the echo answers as it reads
            got = await read_to_end(stream)
            await sender
            return got
        finally:
            stream.close()

    got = in_router(lab, go())
    assert len(got) == ECHO and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_socks4a_name_reaches_the_web_server(lab: Lab, peers: dict[str, object]) -> None:
    """The name goes to the server (sshd resolves it): the lab's web server answers with its address."""
    d, _ = dialer("ssh-socks4a", 4)
    head, body = in_router(lab, dial_http_get(d, LAB_NAME, "/"))
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body in (f"daetui lab host {ADDR.hosts4[0]}\n".encode(), f"daetui lab host {ADDR.hosts6[0]}\n".encode())


# -- refusals ---------------------------------------------------------------------------------------------

def test_danted_refuses_a_blocked_destination(lab: Lab, peers: dict[str, object]) -> None:
    """danted's ruleset blocks the destination: reply 91, said as such, with the server and the request."""
    d, _ = dialer("danted-socks4", 4)
    with pytest.raises(DialError, match=rf"^socks4 server {PROXY4}:{DANTED_PORT}: CONNECT {BLOCKED[0]}:80: "
                                        r"request rejected or failed$"):
        in_router(lab, dial_http_get(d, BLOCKED[0], "/"))


def test_socks4a_against_danted(lab: Lab, peers: dict[str, object]) -> None:
    """danted has no SOCKS4a: it refuses the request (it tried 0.0.0.1), and the error says the request failed."""
    node = parse_link(f"socks4a://{PROXY4}:{DANTED_PORT}")
    with pytest.raises(DialError, match=rf"^socks4a server {PROXY4}:{DANTED_PORT}: CONNECT {LAB_NAME}:80: "
                                        r"request rejected or failed$"):
        in_router(lab, dial_http_get(node.dialer(DIRECT), LAB_NAME, "/"))


def test_ipv6_destination_and_udp_refused(lab: Lab, peers: dict[str, object]) -> None:
    """SOCKS4 carries IPv4 destinations and TCP only: both refused before any connection, saying so."""
    d, _ = dialer("ssh-socks4a", 4)
    with pytest.raises(DialError, match="SOCKS4 carries IPv4 destinations only"):
        in_router(lab, d.connect(ADDR.hosts6[0], 80))
    with pytest.raises(DialError, match=r"SOCKS4 carries TCP only \(no UDP\)"):
        in_router(lab, d.datagrams())


def test_not_a_socks4_server(lab: Lab, peers: dict[str, object]) -> None:
    """A socks4 node pointed at sshd itself: its banner is no SOCKS4 reply, and the error says so."""
    node = parse_link(f"socks4://{PROXY4}:{DANTED_PORT}")
    wrong = type(node)("sshd", "127.0.0.1", SSHD_PORT)

    async def go() -> None:
        await wrong.dialer(DIRECT, timeout=3).connect(WEB4, 80)

    # sshd listens on the wan's loopback: reach it from inside the wan namespace.
    with netns(lab.wan), pytest.raises(DialError, match=r"answered version 83, not 0 \(not a SOCKS4 server\?\)"):
        asyncio.run(asyncio.wait_for(go(), 10))
