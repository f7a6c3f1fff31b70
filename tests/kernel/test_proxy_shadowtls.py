"""Shadowsocks behind ShadowTLS v3 (SIP003 `plugin=shadow-tls`), against mihomo's shadowsocks listener's `shadow-tls`.

mihomo (testkit/peers/mihomo.py; sing-shadowtls inside) listens on ADDR.hosts4[1] /
hosts6[1] with shadowsocks (aes-128-gcm, and 2022-blake3-aes-128-gcm) behind ShadowTLS v3,
whose handshake server (`dest`) is the lab's own TLS 1.3 site (testkit/peers/tls_site.py, a
LabCA certificate for site.lab.test) on ADDR.hosts4[2]. Every node is made from its share
link, as dae reads them (`?plugin=shadowtls;password=...;skipVerify=true`, plus `host`), and
dialed from the router namespace to the wan's echo, source and UDP echo servers.

What a server that does not know the client does: it relays the connection to dest as it
is, so a wrong ShadowTLS password completes a real handshake with the site (whose records
then carry no HMAC): a DialError saying so, quoting the site's own answer to the request the
client sends it to look like a browser; and a plain TLS client (an active prober) gets the
site's certificate and page from mihomo's port.

UDP of a shadow-tls node goes to the listener's port unwrapped (as mihomo's own client
sends it): mihomo's shadowsocks listener serves it there.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from helpers import in_router, read_to_end

from daetui.lab.dnspeers import LabCA
from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, SOURCE_PORT, Lab
from daetui.net.stream import DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.shadowsocks import SsDialer, parse_link
from testkit.peers.mihomo import Mihomo
from testkit.peers.tls_site import PAGE, TlsSite
from testkit.proxycheck import through_framed_relay

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

SERVER = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}
DEST = {4: ADDR.hosts4[0], 6: ADDR.hosts6[0]}  # the echo and UDP echo servers
SOURCE = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}  # the source server
SITE = {4: ADDR.hosts4[2], 6: ADDR.hosts6[2]}
SITE_NAME = "site.lab.test"
# Our ports (10860-10869 are this module's): the listeners, and the site ShadowTLS shakes hands with.
P_AEAD, P_2022, P_SITE = 10861, 10863, 10862
SS_PASSWORD = "ss lab password"
SS22_KEY = base64.b64encode(b"0123456789abcdef").decode()
STLS_PASSWORD = "shadow;tls=pässword"  # SIP003's escapes and non-ASCII, in a link
MB = 1 << 20
ECHO = 256 << 10
DIRECT = DirectDialer(mark=0, connect_timeout=3.0)
V4V6 = pytest.mark.parametrize("v", [4, 6])


@dataclass
class Peers:
    lab: Lab
    ca: LabCA
    mihomo: Mihomo


def _shadow_tls(version: int = 3) -> dict[str, object]:
    return {"enable": True, "version": version, "users": [{"name": "lab", "password": STLS_PASSWORD}],
            "handshake": {"dest": f"{SITE[4]}:{P_SITE}"}}


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[Peers]:
    """The site, and mihomo's shadowsocks listeners behind ShadowTLS v3 shaking hands with it."""
    with ExitStack() as stack:
        ca = stack.enter_context(LabCA(SITE_NAME, (SITE[4], SITE[6])))
        stack.enter_context(TlsSite(lab, ca, port=P_SITE))
        listeners = [
            {"name": "ss-stls", "type": "shadowsocks", "port": P_AEAD, "cipher": "aes-128-gcm",
             "password": SS_PASSWORD, "udp": True, "shadow-tls": _shadow_tls()},
            {"name": "ss22-stls", "type": "shadowsocks", "port": P_2022, "cipher": "2022-blake3-aes-128-gcm",
             "password": SS22_KEY, "udp": True, "shadow-tls": _shadow_tls()},
        ]
        mh = Mihomo(lab, listeners)
        stack.callback(mh.stop)
        mh.start()
        yield Peers(lab, ca, mh)


def sip003_escape(text: str) -> str:
    return "".join("\\" + c if c in "\\;=" else c for c in text)


def link_of(v: int, *, port: int = P_AEAD, password: str = STLS_PASSWORD, extra: str = ";skipVerify=true",
            host: str = SITE_NAME) -> str:
    """The share link a provider would hand out: SIP002, the plugin as dae reads it (URL-encoded `name;opts`)."""
    method, secret = ("aes-128-gcm", SS_PASSWORD) if port == P_AEAD else ("2022-blake3-aes-128-gcm", SS22_KEY)
    user = base64.urlsafe_b64encode(f"{method}:{secret}".encode()).decode().rstrip("=")
    addr = f"[{SERVER[v]}]" if v == 6 else SERVER[v]
    plugin = f"shadowtls;password={sip003_escape(password)};host={host}{extra}"
    return f"ss://{user}@{addr}:{port}/?plugin={quote(plugin, safe='')}#stls-v{v}"


def dialer_of(v: int, *, ca_file: str | None = None, answer_timeout: float | None = None, **kw: str) -> SsDialer:
    """The node's dialer, from its link (which round-trips), its connections made directly from the router."""
    node = parse_link(link_of(v, **kw))
    assert node.plugin is not None and node.plugin.kind == "shadow-tls"
    assert parse_link(node.link()) == node
    return node.dialer(DIRECT, ca_file=ca_file, answer_timeout=answer_timeout)  # type: ignore[arg-type]


async def download(d: SsDialer, v: int, size: int) -> bytes:
    stream = await d.connect(SOURCE[v], SOURCE_PORT)
    try:
        await stream.write(b"%d\n" % size)
        return await read_to_end(stream)
    finally:
        stream.close()


async def echo(d: SsDialer, v: int, payload: bytes) -> bytes:
    """`payload` through the echo server, written in uneven pieces while the answer is read."""
    stream = await d.connect(DEST[v], ECHO_PORT)

    async def send() -> None:
        for i in range(0, len(payload), 50_000):  # records cut across writes
            await stream.write(payload[i:i + 50_000])

    got = bytearray()
    sender = asyncio.ensure_future(send())
    try:
        while len(got) < len(payload) and (data := await stream.read(1 << 16)):
            got += data
        await sender
        return bytes(got)
    finally:
        sender.cancel()
        stream.close()


# -- bytes through mihomo ------------------------------------------------------------------------------

@V4V6
def test_megabyte_download(peers: Peers, v: int) -> None:
    """1 MB from the lab's source server, intact, through ShadowTLS over IPv4 / IPv6."""
    assert in_router(peers.lab, download(dialer_of(v), v, MB)) == pattern_bytes(MB)


@V4V6
def test_echo(peers: Peers, v: int) -> None:
    """256 KB up and back through the echo server, intact."""
    payload = os.urandom(ECHO)
    got = in_router(peers.lab, echo(dialer_of(v), v, payload))
    assert len(got) == ECHO and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_shadowsocks_2022_behind_it(peers: Peers) -> None:
    """A 2022 method behind ShadowTLS: 1 MB down and 256 KB echoed."""
    d = dialer_of(6, port=P_2022)
    assert in_router(peers.lab, download(d, 6, MB)) == pattern_bytes(MB)
    payload = os.urandom(ECHO)
    assert in_router(peers.lab, echo(d, 4, payload)) == payload


@V4V6
def test_udp_goes_to_the_listener_port(peers: Peers, v: int) -> None:
    """The node's datagrams go to the listener's port as plain shadowsocks UDP, and come back."""
    d = dialer_of(v)
    payloads = [b"ping", os.urandom(1400)]

    async def go() -> list[tuple[bytes, str, int]]:
        grams = await d.datagrams()
        out = []
        try:
            for p in payloads:
                await grams.send(p, DEST[v], ECHO_PORT)
                out.append(await asyncio.wait_for(grams.recv(), 3))
        finally:
            grams.close()
        return out

    assert in_router(peers.lab, go()) == [(p, DEST[v], ECHO_PORT) for p in payloads]


def test_framed_relay(peers: Peers) -> None:
    """The relay's framed path: shadowsocks' Codec layered on ShadowTLS's, 256 KB echoed, 1 MB down."""
    d = dialer_of(4)

    payload = pattern_bytes(ECHO)[::-1]
    got, up, down = in_router(peers.lab, through_framed_relay(d, DEST[4], ECHO_PORT, payload, ECHO, cancel=False))
    assert got == payload and (up, down) == (ECHO, ECHO)
    request = f"{MB}\n".encode()
    got, up, down = in_router(peers.lab, through_framed_relay(d, SOURCE[4], SOURCE_PORT, request, MB, cancel=False))
    assert got == pattern_bytes(MB) and down == MB


# -- the site's certificate ------------------------------------------------------------------------------

def test_certificate_checked_without_skip_verify(peers: Peers) -> None:
    """Without skipVerify the site's chain is checked against `host` (a name or an address): the LabCA passes
    it; the system's CAs, or another host, do not."""
    ca = str(peers.ca.ca_file)
    assert in_router(peers.lab, download(dialer_of(4, extra="", ca_file=ca), 4, 1000)) == pattern_bytes(1000)
    # An address as host: no SNI sent, the certificate's IP address checked.
    by_ip = dialer_of(4, extra="", host=SITE[4], ca_file=ca)
    assert in_router(peers.lab, download(by_ip, 4, 1000)) == pattern_bytes(1000)
    with pytest.raises(DialError, match=r"shadow-tls v3 site\.lab\.test\): ShadowTLS: the handshake server's "
                                        r"certificate is not valid for site\.lab\.test"):
        in_router(peers.lab, download(dialer_of(4, extra=""), 4, 1000))
    with pytest.raises(DialError, match=r"certificate is not valid for other\.lab\.test"):
        in_router(peers.lab, download(dialer_of(6, extra="", host="other.lab.test", ca_file=ca), 6, 1000))


# -- what a client the server does not know sees -----------------------------------------------------------

@V4V6
def test_wrong_password(peers: Peers, v: int) -> None:
    """The session id's HMAC fails, so mihomo relays the connection to the site as it is: the handshake
    completes with the site, unsigned, and the site itself answers the client's request."""
    d = dialer_of(v, password="not the password")
    with pytest.raises(DialError, match=r"^shadowsocks stls-v\d \(.*:10861, shadow-tls v3 site\.lab\.test\): "
                                        r"ShadowTLS: the server did not prove it knows the password \(none of its "
                                        r"handshake records carried the ShadowTLS HMAC\): wrong password, .*; it "
                                        r"relayed us to its handshake server, which answered a request with "
                                        r"'HTTP/1\.1 200 OK'"):
        in_router(peers.lab, download(d, v, 1000))


def test_prober_sees_the_site(peers: Peers) -> None:
    """A plain TLS client at mihomo's port (an active prober) gets the site: its certificate, its page."""
    async def probe() -> bytes:
        ctx = ssl.create_default_context(cafile=str(peers.ca.ca_file))
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(SERVER[4], P_AEAD, ssl=ctx, server_hostname=SITE_NAME), 5)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: site.lab.test\r\n\r\n")
            return await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()

    assert in_router(peers.lab, probe()) == PAGE


def test_wrong_shadowsocks_password_behind_it(peers: Peers) -> None:
    """ShadowTLS lets us through; mihomo's shadowsocks server behind it cannot decrypt us and closes the
    connection at once (it does not stay silent as ss-server does): said without waiting for a timeout."""
    node = parse_link(link_of(4))
    wrong = type(node)(node.name, node.host, node.port, node.method, "not the password", node.plugin)
    with pytest.raises(DialError, match=r"^shadowsocks stls-v4 \(203\.0\.113\.11:10861, shadow-tls v3 "
                                        r"site\.lab\.test\): server closed the connection without answering: "
                                        r"wrong password or method"):
        in_router(peers.lab, download(wrong.dialer(DIRECT, answer_timeout=5), 4, 1000))
