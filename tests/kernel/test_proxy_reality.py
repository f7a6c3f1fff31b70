"""vless with REALITY (security=reality), against mihomo's vless listener with a `reality-config`.

REALITY poses as another site, its `dest`: here a TLS 1.3 site of the lab's
own (testkit/peers/tls_site.py, a LabCA certificate for site.lab.test) on
ADDR.hosts4[2] / hosts6[2]. mihomo (testkit/peers/mihomo.py) listens on
ADDR.hosts4[1] / hosts6[1]; every node is made from its share link, dialed
from the router namespace through a DirectDialer, to the wan's echo, source
and UDP echo servers.

A client REALITY does not recognise (wrong public key, wrong short id, a
name it does not serve) is relayed to dest, so it sees dest's certificate:
a DialError naming it, and (with our own TLS 1.3 client accepting any
certificate) the site itself answering through mihomo.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509 import load_pem_x509_certificate
from helpers import in_router, read_to_end

from daetui.control.relay_framed import relay_framed
from daetui.lab.dnspeers import LabCA
from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, SOURCE_PORT, Lab
from daetui.net import tls13
from daetui.net.stream import framing_of
from daetui.outbound import reality, vless
from daetui.outbound.direct import DirectDialer
from daetui.outbound.vless import VlessDialer
from testkit.peers.mihomo import Mihomo
from testkit.peers.tls_site import PAGE, TlsSite
from testkit.proxycheck import download, echo, outcome, through_framed_relay, udp_round
from testkit.sockets import ByteCounter, read_all, tcp_pair

pytestmark = pytest.mark.kernel

SERVER = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}
DEST = {4: ADDR.hosts4[0], 6: ADDR.hosts6[0]}
SITE = {4: ADDR.hosts4[2], 6: ADDR.hosts6[2]}
SITE_NAME = "site.lab.test"
# Our ports (10800-10849 are this module's): mihomo's REALITY listener, and the site it poses as.
P_REALITY, P_SITE = 10801, 10802
UID = str(uuid.uuid4())
SHORT_ID = "0123abcd"
MB = 1 << 20
ECHO = 256 << 10
V4V6 = pytest.mark.parametrize("v", [4, 6])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def keypair() -> tuple[str, str]:
    """A REALITY key pair as mihomo and links write them: (private, public), base64url."""
    key = X25519PrivateKey.generate()
    return (_b64(key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())),
            _b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)))


@dataclass
class Peers:
    lab: Lab
    ca: LabCA
    mihomo: Mihomo
    public_key: str


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[Peers]:
    """The site, and mihomo's vless+REALITY listener posing as it."""
    private, public = keypair()
    with ExitStack() as stack:
        ca = stack.enter_context(LabCA(SITE_NAME, (SITE[4], SITE[6])))
        stack.enter_context(TlsSite(lab, ca, port=P_SITE))
        listener = {"name": "vless-reality", "type": "vless", "port": P_REALITY,
                    "users": [{"username": "lab", "uuid": UID}],
                    "reality-config": {"dest": f"{SITE[4]}:{P_SITE}", "private-key": private,
                                       "short-id": [SHORT_ID, ""], "server-names": [SITE_NAME]}}
        mh = Mihomo(lab, [listener])
        stack.callback(mh.stop)
        mh.start()
        yield Peers(lab, ca, mh, public)


def link_of(p: Peers, v: int, *, pbk: str = "", sid: str = SHORT_ID, sni: str = SITE_NAME) -> str:
    """The share link a provider would hand out (v2rayN/Xray format), for the server's IPv`v` address."""
    addr = f"[{SERVER[v]}]" if v == 6 else SERVER[v]
    return (f"vless://{UID}@{addr}:{P_REALITY}?encryption=none&security=reality&sni={sni}&fp=chrome"
            f"&pbk={pbk or p.public_key}&sid={sid}&spx=%2F&type=tcp#reality")


def dialer_of(p: Peers, v: int, **kw: str) -> VlessDialer:
    """The node's dialer (from its link, which round-trips), its connections made directly from the router."""
    node = vless.parse_link(link_of(p, v, **kw))
    assert vless.parse_link(node.link()) == node and node.reality is not None
    return node.dialer(DirectDialer(mark=0, connect_timeout=3))


@V4V6
def test_download_and_echo(peers: Peers, v: int) -> None:
    """1 MB downloaded and 256 KB echoed through the server on its IPv`v` address, to an IPv`v` destination."""
    d = dialer_of(peers, v)
    assert in_router(peers.lab, download(d, DEST[v], MB)) == pattern_bytes(MB)
    payload = pattern_bytes(ECHO)[::-1]
    assert in_router(peers.lab, echo(d, DEST[v], payload)) == payload


def test_half_close(peers: Peers) -> None:
    """The client's end (close_notify) reaches the destination, which still answers."""
    d = dialer_of(peers, 4)
    payload = pattern_bytes(100_000)

    async def run() -> bytes:
        s = await d.connect(DEST[6], ECHO_PORT)
        try:
            await s.write(payload)
            await s.write_eof()
            return await read_to_end(s)  # echo closes once it read our end
        finally:
            s.close()

    assert in_router(peers.lab, run()) == payload


def test_framed_relay(peers: Peers) -> None:
    """A REALITY stream runs in the relay's framed path (its Session is the Codec): 256 KB echoed, 1 MB downloaded."""
    d = dialer_of(peers, 6)

    payload = pattern_bytes(ECHO)[::-1]
    got, up, down = in_router(peers.lab, through_framed_relay(d, DEST[4], ECHO_PORT, payload, ECHO))
    assert got == payload and (up, down) == (ECHO, ECHO)
    got, up, down = in_router(peers.lab, through_framed_relay(d, DEST[4], SOURCE_PORT, f"{MB}\n".encode(), MB))
    assert got == pattern_bytes(MB)


def test_relay_reads_to_end(peers: Peers) -> None:
    """Through the framed relay, the destination's end ends the client's side; the client's end then finishes it."""
    d = dialer_of(peers, 4)

    async def run() -> bytes:
        s = await d.connect(DEST[6], SOURCE_PORT)
        framing = framing_of(s)
        assert framing is not None
        client, relay_side = tcp_pair()
        task = asyncio.ensure_future(relay_framed(relay_side, *framing, ByteCounter(), ByteCounter()))
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(client, b"300000\n")
            got = await read_all(client)
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(task, 5) is None
            return got
        finally:
            client.close()

    assert in_router(peers.lab, run()) == pattern_bytes(300_000)


@V4V6
def test_udp_echo(peers: Peers, v: int) -> None:
    """Datagrams (vless carries UDP, one session per destination) to IPv4 and IPv6 echoes come back whole."""
    d = dialer_of(peers, v)

    async def run() -> None:
        u = await d.datagrams()
        try:
            await udp_round(u, [DEST[4], DEST[6]], (1, 700, 1400, 8000))
        finally:
            u.close()

    in_router(peers.lab, run())


# -- what fails -------------------------------------------------------------------------------


@pytest.mark.parametrize("wrong", ["pbk", "sid", "sni"])
def test_not_recognised_sees_dest(peers: Peers, wrong: str) -> None:
    """A wrong public key, a short id the server does not know, or a name it does not serve: DialError
    naming the certificate that came instead, dest's; with our TLS 1.3 client accepting any certificate,
    the site itself answers through mihomo (REALITY relays what it does not recognise to dest)."""
    kw = {"pbk": {"pbk": keypair()[1]}, "sid": {"sid": "0123abce"}, "sni": {"sni": "stranger.lab.test"}}[wrong]
    got = in_router(peers.lab, outcome(dialer_of(peers, 4, **kw)), timeout=10)
    assert got.startswith(f"DialError REALITY: the server answered with the certificate of CN={SITE_NAME}, "
                          "not REALITY's"), got

    node = vless.parse_link(link_of(peers, 4, **kw))
    assert node.reality is not None
    site_der = peers.ca.cert_file.read_bytes()

    async def run() -> tuple[bytes, bytes]:
        seen: list[bytes] = []

        def session_id(hello: bytes, random: bytes, key: X25519PrivateKey) -> bytes:
            auth = reality.auth_key(key, node.reality.key, random)
            return reality.seal_session_id(hello, random, auth, node.reality.sid, int(time.time()))

        stream = await DirectDialer(mark=0, connect_timeout=3).connect(SERVER[4], P_REALITY)
        tls = await tls13.handshake(stream, node.sni, lambda certs: seen.extend(certs), session_id=session_id,
                                    timeout=5)
        try:
            await tls.write(f"GET / HTTP/1.1\r\nHost: {node.sni}\r\n\r\n".encode())
            return seen[0], await read_to_end(tls)
        finally:
            tls.close()

    cert, page = in_router(peers.lab, run(), timeout=10)
    assert cert == load_pem_x509_certificate(site_der).public_bytes(Encoding.DER)
    assert page == PAGE


def test_server_closed_or_not_reality(peers: Peers) -> None:
    """The site itself (a TLS server that is not REALITY) given as the node: its certificate, named."""
    node = vless.parse_link(link_of(peers, 6).replace(f"[{SERVER[6]}]:{P_REALITY}", f"[{SITE[6]}]:{P_SITE}"))
    got = in_router(peers.lab, outcome(node.dialer(DirectDialer(mark=0, connect_timeout=3))), timeout=10)
    assert got.startswith(f"DialError REALITY: the server answered with the certificate of CN={SITE_NAME}"), got
