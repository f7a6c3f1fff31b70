"""Shadowsocks with SIP003 plugins, against real plugin servers in front of real ss-servers (lab's wan).

Each server is Debian's ss-server (shadowsocks-libev 3.3.5) started with `--plugin`:
obfs-server (simple-obfs 0.0.5) in http and in tls mode, ss-v2ray-plugin (v2ray-plugin
on v2ray 4.34) with websocket, and websocket in TLS (a throwaway LabCA). The dialer runs
in the router namespace and reaches the plugin on 203.0.113.12 / 2001:db8:3::12; ss-server
reaches the lab's echo, source and UDP echo servers on 203.0.113.10-11.

The http obfs-server has a `failover` (the lab's web server), as providers run it: a request
it does not take for its own (a wrong obfs-host, a TLS ClientHello) is handed there, so a
misconfigured client gets a web page where the 101 should be, and says so. The tls one has
none: what it does not take goes to ss-server, which stays silent, and the answer timeout
names the plugin.

v2ray-plugin's server (its default mux=1) takes only mux.cool inside the websocket: bare
bytes are dropped ("invalid metalen") and the connection stays silent; one started with
mux=0 takes only bare bytes. Both are run, each with the matching client, and crossed.

UDP of a plugin node goes to ss-server's own UDP relay on the same port, unwrapped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from helpers import in_router, read_to_end

from daetui.lab.dnspeers import LabCA
from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT, SOURCE_PORT, Lab
from daetui.net.stream import DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.shadowsocks import SsDialer, SsStream, parse_link
from daetui.outbound.sip003 import parse_plugin
from testkit.peers.shadowsocks import OBFS_SERVER, V2RAY_PLUGIN, SsServer
from testkit.proxycheck import through_framed_relay

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

METHOD = "aes-256-gcm"
PASSWORD = "plugin lab pässword;=\\"
OBFS_HOST = "cdn.lab.test"
TLS_NAME = "ws.lab.test"  # in the v2ray-plugin server's certificate (a throwaway LabCA)
MB = 1 << 20
ECHO = 256 << 10
DIRECT = DirectDialer(mark=0, connect_timeout=3.0)

WS_PATH = "/ss-ws"
# Ports of this module's servers (no other test module uses 8460-8469).
PORTS = {"obfs-http": 8460, "obfs-tls": 8461, "v2ray-ws": 8462, "v2ray-ws-tls": 8463, "v2ray-ws-nomux": 8464}
CLIENT = {
    "obfs-http": f"obfs-local;obfs=http;obfs-host={OBFS_HOST}",
    "obfs-tls": f"obfs-local;obfs=tls;obfs-host={OBFS_HOST}",
    "v2ray-ws": f"v2ray-plugin;host={OBFS_HOST};path={WS_PATH}",
    "v2ray-ws-tls": f"v2ray-plugin;tls;host={TLS_NAME};path={WS_PATH}",
    "v2ray-ws-nomux": f"v2ray-plugin;host={OBFS_HOST};path={WS_PATH};mux=0",
}
KINDS = list(PORTS)
BY_KIND = pytest.mark.parametrize("kind", KINDS)
BY_FAMILY = pytest.mark.parametrize("v", [4, 6])


def target(v: int, i: int = 0) -> str:
    return ADDR.hosts4[i] if v == 4 else ADDR.hosts6[i]


@pytest.fixture(scope="module")
def servers(lab: Lab) -> Iterator[dict[str, SsServer]]:
    """One ss-server per plugin setup, each with its plugin on its own port."""
    with ExitStack() as stack:
        ca = stack.enter_context(LabCA(TLS_NAME, (ADDR.hosts4[2], ADDR.hosts6[2])))
        opts = {
            "obfs-http": (OBFS_SERVER, f"obfs=http;obfs-host={OBFS_HOST};failover={ADDR.hosts4[0]}:{HTTP_PORT}"),
            "obfs-tls": (OBFS_SERVER, "obfs=tls"),
            # v2ray-plugin's server as providers run it: mux (its default) expected.
            "v2ray-ws": (V2RAY_PLUGIN, f"server;host={OBFS_HOST};path={WS_PATH}"),
            "v2ray-ws-tls": (V2RAY_PLUGIN, f"server;tls;host={TLS_NAME};path={WS_PATH};cert={ca.cert_file};"
                                           f"key={ca.key_file}"),
            "v2ray-ws-nomux": (V2RAY_PLUGIN, f"server;host={OBFS_HOST};path={WS_PATH};mux=0"),
        }
        out = {}
        for kind, (plugin, plugin_opts) in opts.items():
            server = SsServer(lab, METHOD, PASSWORD, PORTS[kind], plugin=plugin, plugin_opts=plugin_opts,
                              client_plugin=parse_plugin(CLIENT[kind]), client_ca_file=str(ca.ca_file))
            stack.callback(server.stop)
            server.start()
            out[kind] = server
        yield out


def dialer(servers: dict[str, SsServer], kind: str, v: int, **kw: object) -> SsDialer:
    """The node as a subscription would give it: its share link, parsed."""
    node = parse_link(servers[kind].node(v, name=f"{kind}-v{v}").link())
    assert node.plugin is not None and node.plugin == servers[kind].client_plugin
    return node.dialer(DIRECT, ca_file=servers[kind].client_ca_file, **kw)  # type: ignore[arg-type]


async def download(d: SsDialer, v: int, size: int) -> bytes:
    stream = await d.connect(target(v, 1), SOURCE_PORT)
    try:
        await stream.write(b"%d\n" % size)
        return await read_to_end(stream)
    finally:
        stream.close()


async def echo(d: SsDialer, v: int, payload: bytes) -> bytes:
    stream = await d.connect(target(v), ECHO_PORT)

    async def send() -> None:
        for i in range(0, len(payload), 50_000):  # writes of an odd size: records and chunks cut across them
            await stream.write(payload[i:i + 50_000])

    # No half-close: ss-server (libev) ends both directions on the client's end.
    got = bytearray()
    try:
        sender = asyncio.ensure_future(send())
        while len(got) < len(payload) and (data := await stream.read(1 << 16)):
            got += data
        await sender
        return bytes(got)
    finally:
        stream.close()


# -- bytes through the real plugin servers ------------------------------------------------------------

@BY_KIND
@BY_FAMILY
def test_megabyte_download(lab: Lab, servers: dict[str, SsServer], kind: str, v: int) -> None:
    """1 MB from the lab's source server, intact, through the plugin server over IPv4 / IPv6."""
    assert in_router(lab, download(dialer(servers, kind, v), v, MB)) == pattern_bytes(MB)


@BY_KIND
@BY_FAMILY
def test_echo(lab: Lab, servers: dict[str, SsServer], kind: str, v: int) -> None:
    """256 KB up and back through the echo server, intact."""
    payload = os.urandom(ECHO)
    got = in_router(lab, echo(dialer(servers, kind, v), v, payload))
    assert len(got) == ECHO and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


@BY_KIND
@BY_FAMILY
def test_udp_goes_to_the_server_port(lab: Lab, servers: dict[str, SsServer], kind: str, v: int) -> None:
    """A plugin node's datagrams reach ss-server's UDP relay on the node's port, and come back."""
    d = dialer(servers, kind, v)
    payloads = [b"ping", os.urandom(1400)]

    async def go() -> list[tuple[bytes, str, int]]:
        grams = await d.datagrams()
        out = []
        try:
            for p in payloads:
                await grams.send(p, target(v), ECHO_PORT)
                out.append(await asyncio.wait_for(grams.recv(), 3))
        finally:
            grams.close()
        return out

    assert in_router(lab, go()) == [(p, target(v), ECHO_PORT) for p in payloads]


@BY_KIND
def test_framed_relay(lab: Lab, servers: dict[str, SsServer], kind: str) -> None:
    """The relay's framed path over the plugin: shadowsocks' Codec layered on the plugin's, 1 MB down, 256 KB echoed."""
    d = dialer(servers, kind, 6)

    payload = pattern_bytes(ECHO)[::-1]
    # A bare websocket cannot carry the client's end (see sip003.open_v2ray_plugin): the relay would
    # wait for the server's idle timeout, so it is ended at once there.
    nomux = kind == "v2ray-ws-nomux"
    got, up, down = in_router(lab, through_framed_relay(d, target(6), ECHO_PORT, payload, ECHO, cancel=nomux))
    assert got == payload and (up, down) == (ECHO, ECHO)
    got, up, down = in_router(lab, through_framed_relay(d, target(6, 1), SOURCE_PORT, f"{MB}\n".encode(), MB,
                                                        cancel=nomux))
    assert got == pattern_bytes(MB) and down == MB


def test_server_first_read(lab: Lab, servers: dict[str, SsServer]) -> None:
    """A read before any write sends the address alone, wrapped as the plugin's first bytes: the answer comes."""
    d = dialer(servers, "obfs-tls", 4)

    async def go() -> bytes:
        stream: SsStream = await d.connect(target(4, 1), SOURCE_PORT)
        try:
            reader = asyncio.ensure_future(stream.read(1 << 16))
            await asyncio.sleep(0.2)
            await stream.write(b"1000\n")
            first = await reader
            return first + await read_to_end(stream)
        finally:
            stream.close()

    assert in_router(lab, go()) == pattern_bytes(1000)


# -- what a misconfigured client sees -------------------------------------------------------------------

def test_obfs_http_wrong_host(lab: Lab, servers: dict[str, SsServer]) -> None:
    """obfs-server checks the Host header: another obfs-host is handed to its failover, whose page is no 101."""
    server = servers["obfs-http"]
    node = server.node(4, "wrong-host", parse_plugin("obfs-local;obfs=http;obfs-host=other.lab.test"))
    with pytest.raises(DialError, match=r"^shadowsocks wrong-host \(203\.0\.113\.12:8460, simple-obfs http\): "
                                        r"simple-obfs http: the server answered 'HTTP/1\.1 200 OK', not 101 "
                                        r"Switching Protocols: wrong obfs-host"):
        in_router(lab, download(node.dialer(DIRECT, answer_timeout=5), 4, 1000))


def test_obfs_tls_against_http_server(lab: Lab, servers: dict[str, SsServer]) -> None:
    """A ClientHello is no HTTP request: the http obfs-server hands it to its failover, a web server that waits
    for a request it never gets; the answer timeout names the plugin's framing as a cause."""
    server = servers["obfs-http"]
    node = server.node(6, "tls-at-http", parse_plugin(f"obfs-local;obfs=tls;obfs-host={OBFS_HOST}"))
    with pytest.raises(DialError, match=r"^shadowsocks tls-at-http \(\[2001:db8:3::12\]:8460, simple-obfs tls\): no "
                                        r"answer within 1\.5s: .*did not take the simple-obfs tls framing"):
        in_router(lab, download(node.dialer(DIRECT, answer_timeout=1.5), 6, 1000))


def test_obfs_http_against_tls_server(lab: Lab, servers: dict[str, SsServer]) -> None:
    """With no failover, a request obfs-server does not take goes to ss-server, which stays silent:
    the answer timeout names the plugin's framing as a cause."""
    server = servers["obfs-tls"]
    node = server.node(4, "http-at-tls", parse_plugin(f"obfs-local;obfs=http;obfs-host={OBFS_HOST}"))
    with pytest.raises(DialError, match=r"no answer within 1\.5s: wrong password or method, or the plugin server "
                                        r"did not take the simple-obfs http framing \(wrong obfs-host or obfs mode"):
        in_router(lab, download(node.dialer(DIRECT, answer_timeout=1.5), 4, 1000))


def test_plain_client_against_plugin_server(lab: Lab, servers: dict[str, SsServer]) -> None:
    """A node without its plugin: obfs-server passes the bytes on as they are (simple-obfs falls back to
    plain shadowsocks), so the link's missing plugin goes unnoticed by the server and the data flows."""
    server = servers["obfs-tls"]
    node = server.node(4, "no-plugin")
    plain = type(node)(node.name, node.host, node.port, node.method, node.password, None)
    assert in_router(lab, download(plain.dialer(DIRECT, answer_timeout=5), 4, 10_000)) == pattern_bytes(10_000)


def test_v2ray_plugin_wrong_path(lab: Lab, servers: dict[str, SsServer]) -> None:
    """v2ray's websocket answers another path with 404: the dial fails at once, naming it."""
    for kind, v in (("v2ray-ws", 4), ("v2ray-ws-tls", 6)):
        server = servers[kind]
        assert server.client_plugin is not None
        wrong = parse_plugin(server.client_plugin.text().replace(WS_PATH, "/other"))
        node = server.node(v, "wrong-path", wrong)
        with pytest.raises(DialError, match=r"^shadowsocks wrong-path \(.*, v2ray-plugin websocket(\+tls)?\): "
                                            r"websocket: the server refused the upgrade: HTTP 404"):
            in_router(lab, download(node.dialer(DIRECT, ca_file=server.client_ca_file, answer_timeout=5), v, 1000))


def test_v2ray_plugin_tls_wrong_host(lab: Lab, servers: dict[str, SsServer]) -> None:
    """With tls, `host` is the SNI and the name the certificate must carry: another name fails the handshake."""
    server = servers["v2ray-ws-tls"]
    node = server.node(4, "wrong-host", parse_plugin(f"v2ray-plugin;tls;host=other.lab.test;path={WS_PATH}"))
    with pytest.raises(DialError, match=r"TLS handshake: certificate not accepted: .*other\.lab\.test"):
        in_router(lab, download(node.dialer(DIRECT, ca_file=server.client_ca_file, answer_timeout=5), 4, 1000))


@pytest.mark.parametrize(("kind", "client"), [
    ("v2ray-ws", f"v2ray-plugin;host={OBFS_HOST};path={WS_PATH};mux=0"),
    ("v2ray-ws-nomux", f"v2ray-plugin;host={OBFS_HOST};path={WS_PATH}"),
])
def test_v2ray_plugin_mux_mismatch(lab: Lab, servers: dict[str, SsServer], kind: str, client: str) -> None:
    """A server that expects mux.cool gets bare bytes, or one that expects bare bytes gets mux.cool: it drops
    them and stays silent, and the answer timeout names mux as the likely cause."""
    node = servers[kind].node(4, "mux-mismatch", parse_plugin(client))
    with pytest.raises(DialError, match=r"no answer within 1\.5s: .*did not take the v2ray-plugin websocket framing "
                                        r"\(mux=0 on one side only\?\)"):
        in_router(lab, download(node.dialer(DIRECT, answer_timeout=1.5), 4, 1000))
