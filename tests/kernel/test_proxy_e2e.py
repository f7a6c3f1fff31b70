"""Every protocol end to end: a LAN client's flow, routed by the kernel to a group, dialled through a real server.

One daemon, one group holding a node of each kind (danted, tinyproxy, v2ray's
https/trojan/vless/vmess inbounds, trojan-gfw, ss-server); each case pins
its node from the control plane and checks that the client's bytes reach
the wan's servers intact — TCP both ways, and UDP where the protocol has it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from helpers import http_get, lan_connect, newest_conn, plane_in_lab, udp_exchange, wait_for

from daetui.lab.dnspeers import LabCA
from daetui.lab.servers import pattern_bytes
from daetui.lab.topology import ADDR, ECHO_PORT, HTTP_PORT
from daetui.outbound import http_proxy, socks5, trojan, vless, vmess
from testkit.configs import LAB_CHECKS
from testkit.peers.shadowsocks import SsServer
from testkit.peers.socks_http import Danted, Tinyproxy, V2rayHttps
from testkit.peers.trojan import TrojanGfw
from testkit.peers.v2ray import V2ray, trojan_inbound, vless_inbound, vmess_inbound

pytestmark = [pytest.mark.kernel, pytest.mark.peer]

HOST4 = ADDR.hosts4[0]      # the wan server the client talks to
V2, SS, SOCKS = ADDR.hosts4[0], ADDR.hosts4[2], ADDR.hosts4[1]
UID = "b831381d-6324-4d53-ad4f-8cda48b30811"
PASSWORD = "e2e trojan password"
TLS_NAME = "e2e.lab.test"
PORTS = {"trojan": 10201, "vless": 10202, "vless-tls": 10203, "vmess": 10204, "vmess-tls": 10205, "gfw": 10210,
         "socks5": 1085, "http": 8890, "https": 8445, "ss": 8399}
# The protocols that carry UDP (v2ray 4.34 and trojan-gfw cut datagrams over ~2 KiB: small ones here).
UDP = {"socks5", "ss", "trojan", "gfw", "vless", "vmess"}


@pytest.fixture(scope="module")
def daemon(lab, tmp_path_factory) -> Iterator[object]:
    with ExitStack() as stack:
        ca = stack.enter_context(LabCA(TLS_NAME, (V2, SOCKS)))
        peers = [
            V2ray(lab, [trojan_inbound(PORTS["trojan"], PASSWORD), vless_inbound(PORTS["vless"], UID),
                        vless_inbound(PORTS["vless-tls"], UID, tls=True), vmess_inbound(PORTS["vmess"], UID),
                        vmess_inbound(PORTS["vmess-tls"], UID, tls=True)], ca),
            TrojanGfw(lab, ca, [PASSWORD], address=V2, port=PORTS["gfw"], remote=(HOST4, HTTP_PORT)),
            Danted(lab, port=PORTS["socks5"]),
            Tinyproxy(lab, port=PORTS["http"]),
            V2rayHttps(lab, ca, port=PORTS["https"]),
            SsServer(lab, "aes-256-gcm", "e2e ss password", port=PORTS["ss"]),
        ]
        for p in peers:
            stack.callback(p.stop)
            p.start()
        nodes = {
            "socks5": socks5.Socks5Node("socks5", SOCKS, PORTS["socks5"]),
            "http": http_proxy.HttpNode("http", SOCKS, PORTS["http"]),
            "https": http_proxy.HttpNode("https", SOCKS, PORTS["https"], tls=True, sni=TLS_NAME),
            "ss": peers[5].node(4, "ss"),
            "trojan": trojan.TrojanNode("trojan", V2, PORTS["trojan"], PASSWORD, sni=TLS_NAME),
            "gfw": trojan.TrojanNode("gfw", V2, PORTS["gfw"], PASSWORD, sni=TLS_NAME),
            "vless": vless.VlessNode("vless", V2, PORTS["vless"], UID),
            "vless-tls": vless.VlessNode("vless-tls", V2, PORTS["vless-tls"], UID, tls=True, sni=TLS_NAME),
            "vmess": vmess.VmessNode("vmess", V2, PORTS["vmess"], UID, "aes-128-gcm"),
            "vmess-tls": vmess.VmessNode("vmess-tls", V2, PORTS["vmess-tls"], UID, "chacha20-poly1305", tls=True,
                                         sni=TLS_NAME),
        }
        node_lines = "\n".join(f'"{name}" = "{n.link()}"' for name, n in nodes.items())
        cfg = f"""
[global]
lan_interface = ["lan0"]
dial_mode = "ip"
allow_insecure = true   # the lab's CA is not the system's; the dialers' own tests check verification
check_interval = "10m"
{LAB_CHECKS}

[node]
{node_lines}

[group.proxy]
policy = "fixed(0)"

[routing]
rules = ["dip({HOST4}) -> proxy"]
fallback = "direct"
"""
        runner = stack.enter_context(plane_in_lab(lab, cfg, tmp_path_factory.mktemp("e2e")))
        yield runner


def echo_exact(lab, host: str, payload: bytes, timeout: float = 20.0) -> bytes:
    """Send `payload` to the echo server and read as many bytes back (no half-close: not every server keeps it)."""
    s = lan_connect(lab, host, ECHO_PORT, timeout)
    try:
        s.sendall(payload)
        got = bytearray()
        while len(got) < len(payload):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        return bytes(got)
    finally:
        s.close()


def download(lab, host: str, n: int) -> bytes:
    return http_get(lab, host, f"/bytes/{n}", timeout=20.0)


last_conn = newest_conn


@pytest.mark.parametrize("name", list(PORTS))
def test_lan_flow_through_each_protocol(lab, daemon, name: str) -> None:
    runner = daemon
    runner.call(lambda: runner.plane.pin_node("proxy", name))
    body = download(lab, HOST4, 1 << 20)
    assert body == pattern_bytes(1 << 20), (name, len(body))
    assert last_conn(runner, (HOST4, HTTP_PORT), "tcp").node == name
    payload = os.urandom(256 * 1024)
    assert echo_exact(lab, HOST4, payload) == payload
    # Counts as they pass (in one process) or within 0.5 s (a relay worker reports them): waited for.
    conn = wait_for(lambda: (c := last_conn(runner, (HOST4, ECHO_PORT), "tcp")).up == len(payload) and c)
    assert conn.node == name and conn.up == len(payload)
    # How the bytes went: spliced where the proxy's stream is the destination's own bytes, framed
    # on the loop's transports for the rest (their framing run as codecs: TLS, shadowsocks, vless's
    # header, vmess's chunks).
    plain = "splice" if runner.plane.pipeline.use_splice else "copy"
    assert conn.relay == {"socks5": plain, "http": plain}.get(name, "framed")
    if name in UDP:
        datagrams = [os.urandom(n) for n in (1, 700, 1400)]
        for d in datagrams:
            assert udp_exchange(lab, HOST4, d, timeout=3) == [d], name
        assert last_conn(runner, (HOST4, ECHO_PORT), "udp").node == name


def test_a_protocol_without_udp_says_so(lab, daemon) -> None:
    runner = daemon
    runner.call(lambda: runner.plane.pin_node("proxy", "http"))
    assert udp_exchange(lab, HOST4, b"nobody carries this", timeout=1) == []
    conn = last_conn(runner, (HOST4, ECHO_PORT), "udp")
    assert conn.node == "http" and conn.error and "UDP" in conn.error
