"""Hysteria2 against a real server: mihomo's hysteria2 listener (sing-quic), with and without Salamander.

Every node is made from its share link and dialed from the router
namespace straight to mihomo on ADDR.hosts4[1] / hosts6[1], which reaches the
wan's echo, source and UDP echo servers. TLS certificates come from a
throwaway LabCA. One mihomo serves the whole module.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import http_get, in_router, lan_connect, newest_conn, plane_in_lab, read_to_end, udp_exchange, wait_for

from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, SOURCE_PORT, Lab
from daetui.net.stream import DialError
from daetui.outbound import _hy2_conn, hysteria2, trojan
from daetui.outbound._hy2_conn import STREAM_WINDOW
from daetui.outbound.direct import DirectDialer
from daetui.outbound.hysteria2 import Hysteria2Dialer, Hysteria2Node, parse_link
from daetui.outbound.links import parse_link as parse_any
from testkit.configs import LAB_CHECKS
from testkit.peers.mihomo import TlsMihomo, tls, tls_mihomo
from testkit.peers.trojan import TrojanGfw
from testkit.proxycheck import download, echo, udp_round

pytestmark = pytest.mark.kernel

SERVER = {4: ADDR.hosts4[1], 6: ADDR.hosts6[1]}
DEST = {4: ADDR.hosts4[0], 6: ADDR.hosts6[0]}
TLS_NAME = "proxy.lab.test"
PASSWORD = "lab hy2 pass:word"
OBFS_PASSWORD = "lab salamander key"
# Our ports on mihomo's addresses (10750-10759 are this module's).
PORT = 10750
PORT_OBFS = 10751
PORT_TROJAN = 10752    # trojan-gfw's, on the wan's own address (mihomo refuses a connection to itself)
HOP_PORTS = (10753, 10757)  # sent to PORT by the wan's firewall, as a port-hopping server's is told to
MB = 1 << 20
ECHO = 256 << 10
V4V6 = pytest.mark.parametrize("v", [4, 6])


Peers = TlsMihomo


@pytest.fixture(scope="module")
def peers(lab: Lab) -> Iterator[Peers]:
    """mihomo with a hysteria2 listener, and one behind Salamander."""
    users = {"lab": PASSWORD}
    with tls_mihomo(lab, TLS_NAME, lambda ca: [
        {"name": "hy2", "type": "hysteria2", "port": PORT, "users": users, **tls(ca)},
        {"name": "hy2obfs", "type": "hysteria2", "port": PORT_OBFS, "users": users,
         "obfs": "salamander", "obfs-password": OBFS_PASSWORD, **tls(ca)},
    ]) as p:
        yield p


def link_of(v: int, *, password: str = PASSWORD, obfs: bool = False, scheme: str = "hysteria2") -> str:
    """The share link a provider would hand out for the listener on its IPv`v` address."""
    addr = f"[{SERVER[v]}]" if v == 6 else SERVER[v]
    port = PORT_OBFS if obfs else PORT
    query = f"sni={TLS_NAME}" + (f"&obfs=salamander&obfs-password={quote(OBFS_PASSWORD)}" if obfs else "")
    return f"{scheme}://{quote(password)}@{addr}:{port}/?{query}"


def node_of(v: int, **kw: object) -> Hysteria2Node:
    """The node, parsed from its link as the config loader does (and its own link parsing back to it)."""
    node = parse_any(link_of(v, **kw))  # type: ignore[arg-type]
    assert isinstance(node, Hysteria2Node)
    assert parse_link(node.link()) == node
    return node


def dialer_of(p: Peers, node: Hysteria2Node, **kw: object) -> Hysteria2Dialer:
    return node.dialer(DirectDialer(mark=0, connect_timeout=3), ca_file=p.ca.ca_file, **kw)  # type: ignore[arg-type]


# -- TCP and UDP ----------------------------------------------------------------------------------

@V4V6
def test_tcp_and_udp(peers: Peers, v: int) -> None:
    """Over IPv`v` to the server, one QUIC connection: 1 MB downloaded and 256 KB echoed to an IPv4 and an
    IPv6 destination, at once; then datagrams (4000 bytes: fragments both ways) to both UDP echoes."""
    d = dialer_of(peers, node_of(v))
    payload = pattern_bytes(ECHO)[::-1]

    async def run() -> None:
        try:
            got = await asyncio.gather(download(d, DEST[4], MB), echo(d, DEST[6], payload, half_close=True))
            assert got[0] == pattern_bytes(MB)
            assert got[1] == payload
            u = await d.datagrams()
            try:
                await udp_round(u, [DEST[4], DEST[6]], (1, 700, 1400, 4000))
            finally:
                u.close()
            assert d.handshakes == 1  # the streams and the session shared the connection
        finally:
            d.close()

    in_router(peers.lab, run())


def test_salamander(peers: Peers) -> None:
    """The same through the Salamander listener (hy2:// spelling): TCP both ways and UDP."""
    d = dialer_of(peers, node_of(6, obfs=True, scheme="hy2"))

    async def run() -> None:
        try:
            assert await download(d, DEST[4], 300_000) == pattern_bytes(300_000)
            u = await d.datagrams()
            try:
                await udp_round(u, [DEST[4], DEST[6]], (1, 1400))
            finally:
                u.close()
        finally:
            d.close()

    in_router(peers.lab, run())


def test_a_slow_reader_holds_the_server_back(peers: Peers) -> None:
    """A stream nobody reads holds at most its window (QUIC flow control tied to the reader); then all arrives."""
    d = dialer_of(peers, node_of(4))
    n = 6 * MB

    async def run() -> tuple[int, bytes]:
        try:
            s = await d.connect(DEST[6], SOURCE_PORT)
            await s.write(f"{n}\n".encode())
            first = await s.read(1)
            await asyncio.sleep(0.5)
            held = len(s.buf)  # type: ignore[attr-defined]
            return held, first + await read_to_end(s, limit=n)
        finally:
            d.close()

    held, got = in_router(peers.lab, run())
    assert STREAM_WINDOW // 2 < held <= STREAM_WINDOW
    assert got == pattern_bytes(n)


def test_a_connection_that_ended_is_opened_again(peers: Peers) -> None:
    """The dialer's connection ends (closed under it): the next dial opens a new one, and works."""
    d = dialer_of(peers, node_of(6))

    async def run() -> int:
        try:
            assert await download(d, DEST[4], 1000) == pattern_bytes(1000)
            assert d.connection is not None
            d.connection.abort()
            assert await download(d, DEST[4], 1000) == pattern_bytes(1000)
            return d.handshakes
        finally:
            d.close()

    assert in_router(peers.lab, run()) == 2


@pytest.fixture
def hop_firewall(peers: Peers) -> Iterator[None]:
    """The wan's nft DNAT of HOP_PORTS to the listener's PORT (what hysteria's docs tell a server to set up)."""
    table = f"hy2hop{os.getpid()}"
    low, high = HOP_PORTS
    rules = f"""table inet {table} {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {SERVER[4]} udp dport {low}-{high} dnat ip to {SERVER[4]}:{PORT}
    ip6 daddr {SERVER[6]} udp dport {low}-{high} dnat ip6 to [{SERVER[6]}]:{PORT}
  }}
}}
"""
    subprocess.run(["ip", "netns", "exec", peers.lab.wan, "nft", "-f", "-"], input=rules, text=True, check=True,
                   timeout=10)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", peers.lab.wan, "nft", "delete", "table", "inet", table], timeout=10,
                       check=False)


@V4V6
def test_port_hopping(peers: Peers, hop_firewall: None, v: int) -> None:
    """A node of ports 10753-10757: its packets go to one port, then another every hop; a TCP stream and a UDP
    session carry on across the hops (mihomo's QUIC takes the client's new address each time)."""
    addr = f"[{SERVER[v]}]" if v == 6 else SERVER[v]
    node = parse_link(f"hy2://{quote(PASSWORD)}@{addr}:{HOP_PORTS[0]}-{HOP_PORTS[1]}/?sni={TLS_NAME}")
    assert node.hop_ports == "10753-10757"
    d = dialer_of(peers, node, hop_interval=0.25)
    payload = pattern_bytes(50_000)

    async def run() -> list[int]:
        try:
            s = await d.connect(DEST[v], ECHO_PORT)
            u = await d.datagrams()
            for _ in range(6):  # 6 rounds, ~0.3 s apart: over several hops
                await s.write(payload)
                got = bytearray()
                while len(got) < len(payload):
                    data = await asyncio.wait_for(s.read(1 << 16), 5)
                    assert data
                    got += data
                assert got == payload
                await udp_round(u, [DEST[4], DEST[6]], (1400,))
                await asyncio.sleep(0.3)
            s.close()
            u.close()
            assert d.hopper is not None and d.handshakes == 1
            return d.hopper.ports
        finally:
            d.close()

    ports = in_router(peers.lab, run())
    assert len(ports) >= 5 and all(HOP_PORTS[0] <= p <= HOP_PORTS[1] for p in ports), ports
    assert len(set(ports)) >= 2, ports


def test_keepalive_while_in_use(peers: Peers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quiet stream outlives QUIC's idle timeout (PINGs keep the connection); unused, the connection ends."""
    monkeypatch.setattr(hysteria2, "IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(_hy2_conn, "KEEPALIVE", 0.3)
    d = dialer_of(peers, node_of(4))

    async def run() -> str:
        try:
            s = await d.connect(DEST[4], ECHO_PORT)
            await asyncio.sleep(1.5)
            await s.write(b"still here")
            assert await s.read(100) == b"still here"
            s.close()
            await asyncio.sleep(1.5)
            assert d.connection is not None
            return d.connection.ended
        finally:
            d.close()

    assert "Idle timeout" in in_router(peers.lab, run())


def test_chain_trojan_through_hysteria2(peers: Peers) -> None:
    """hysteria2 as the first hop of a chain: trojan's TLS runs inside a hysteria2 stream."""
    first = dialer_of(peers, node_of(4))
    tj = trojan.parse_link(f"trojan://{quote(PASSWORD)}@{DEST[4]}:{PORT_TROJAN}?sni={TLS_NAME}")
    chained = tj.dialer(first, ca_file=peers.ca.ca_file)
    server = TrojanGfw(peers.lab, peers.ca, [PASSWORD], address=DEST[4], port=PORT_TROJAN)

    async def run() -> bytes:
        try:
            return await download(chained, DEST[6], 200_000)  # type: ignore[arg-type]
        finally:
            first.close()

    with server:
        assert in_router(peers.lab, run()) == pattern_bytes(200_000)


# -- what fails -----------------------------------------------------------------------------------

async def outcome(d: Hysteria2Dialer) -> str:
    """What one request through the dialer comes to: data, or the DialError's words."""
    try:
        s = await d.connect(DEST[4], ECHO_PORT)
        try:
            await s.write(b"ping")
            return f"data {await asyncio.wait_for(s.read(100), 5)!r}"
        finally:
            s.close()
    except DialError as e:
        return f"DialError {e}"
    finally:
        d.close()


def test_wrong_password(peers: Peers) -> None:
    """A wrong password: the server answers /auth as a web server would, and the error says authentication."""
    got = in_router(peers.lab, outcome(dialer_of(peers, node_of(4, password="not the password"))), timeout=10)
    assert got.startswith("DialError") and "authentication failed" in got, got


def test_without_salamander_to_salamander(peers: Peers) -> None:
    """No obfs to a Salamander listener: the handshake gets no answer, in the dialer's timeout."""
    node = parse_link(link_of(4).replace(f":{PORT}/", f":{PORT_OBFS}/"))
    got = in_router(peers.lab, outcome(dialer_of(peers, node, handshake_timeout=1.5)), timeout=10)
    assert got == f"DialError hysteria2 {SERVER[4]}:{PORT_OBFS}: QUIC handshake: no answer in 1.5s", got


def test_untrusted_certificate(peers: Peers) -> None:
    """Without the lab's CA the certificate is refused, unless the link says insecure=1."""
    node = node_of(4)
    d = node.dialer(DirectDialer(mark=0, connect_timeout=3), handshake_timeout=3)
    got = in_router(peers.lab, outcome(d), timeout=10)
    assert got.startswith("DialError") and "QUIC handshake" in got, got
    insecure = parse_link(node.link().replace("/?", "/?insecure=1&"))
    d = insecure.dialer(DirectDialer(mark=0, connect_timeout=3))
    assert in_router(peers.lab, outcome(d), timeout=10) == "data b'ping'"


def test_pinned_certificate(peers: Peers) -> None:
    """pinSHA256: the server's own certificate's hash passes; another one fails the dial, naming the pin."""
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(peers.ca.cert_file.read_text())).hexdigest()
    node = parse_link(f"{link_of(4)}&pinSHA256={pin.upper()}")
    assert node.pin_sha256 == pin
    assert in_router(peers.lab, outcome(dialer_of(peers, node)), timeout=10) == "data b'ping'"
    node = parse_link(f"{link_of(4)}&pinSHA256={'ab' * 32}")
    got = in_router(peers.lab, outcome(dialer_of(peers, node)), timeout=10)
    assert got.startswith("DialError") and "not the pinned one" in got, got


# -- end to end -----------------------------------------------------------------------------------

def test_lan_flows_through_a_hysteria2_node(peers: Peers, tmp_path: Path) -> None:
    """A LAN client's TCP and UDP, routed by the kernel to a group whose node is a hy2:// link in the config
    (the lab's CA trusted through global allow_insecure): health checked, relayed, counted under the node."""
    host = DEST[4]
    cfg = f"""
[global]
lan_interface = ["lan0"]
dial_mode = "ip"
allow_insecure = true
check_interval = "10m"
{LAB_CHECKS}

[node]
hy = "{link_of(6, scheme="hy2")}"

[group.proxy]
policy = "fixed(0)"

[routing]
rules = ["dip({host}) -> proxy"]
fallback = "direct"
"""
    with plane_in_lab(peers.lab, cfg, tmp_path) as runner:
        assert http_get(peers.lab, host, f"/bytes/{MB}", timeout=20) == pattern_bytes(MB)
        assert newest_conn(runner, (host, 80), "tcp").node == "hy"
        payload = pattern_bytes(ECHO)[::-1]
        s = lan_connect(peers.lab, host, ECHO_PORT, 20)
        try:
            s.sendall(payload)
            got = bytearray()
            while len(got) < len(payload):
                chunk = s.recv(1 << 16)
                assert chunk, f"echo ended after {len(got)} bytes"
                got += chunk
        finally:
            s.close()
        assert got == payload
        # Counts as they pass (in one process) or within 0.5 s (a relay worker reports them): waited for.
        conn = wait_for(lambda: (c := newest_conn(runner, (host, ECHO_PORT), "tcp")).up == len(payload) and c)
        assert conn.node == "hy" and conn.up == len(payload)
        for size in (1, 700, 1400):
            d = pattern_bytes(size)
            assert udp_exchange(peers.lab, host, d, timeout=3) == [d]
        assert newest_conn(runner, (host, ECHO_PORT), "udp").node == "hy"
