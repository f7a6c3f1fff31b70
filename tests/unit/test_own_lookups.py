"""dae v2's sub()/node()/subnode() DNS rules acted on: daetui's own lookups of a node's or a subscription's
server go through the resolver the control plane installs (DnsService.resolve_own), with what the rules see."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from daetui.config.load import parse_config
from daetui.net.stream import DialError
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import Outbounds
from daetui.routing.dns_rules import LookupFacts

CONFIG = """
[node]
n1 = "socks5://n1.lab.invalid:{port}"
[subscription]
s1 = "https://subs.lab.invalid/list"
[group.g]
filter = ["name(n1)"]
policy = "fixed(0)"
[dns]
upstream = {{ up = "udp://192.0.2.53:53" }}
request = ["node(name: n1) -> up", "sub(s1) -> up", "fallback: asis"]
[routing]
fallback = "g"
"""


async def test_a_node_server_name_is_resolved_by_the_own_lookup_with_its_facts() -> None:
    accepted = asyncio.Event()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.set()
        w.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = parse_config(CONFIG.format(port=port))
    out = Outbounds(cfg, DirectDialer(mark=0))
    asked: list[tuple[str, LookupFacts]] = []

    async def resolve_own(host: str, facts: LookupFacts) -> str:
        asked.append((host, facts))
        return "127.0.0.1"

    out.resolve_own = resolve_own
    dialer, node = out.dialer("g")
    assert node == "n1"
    with pytest.raises(DialError):   # the listener is no socks5 server: the connection is what counts
        await dialer.connect("192.0.2.9", 80)
    await asyncio.wait_for(accepted.wait(), 5)
    host, facts = asked[0]
    assert (host, facts.kind, facts.name, facts.tag) == ("n1.lab.invalid", "node", "n1", "")
    assert facts.link.startswith(f"socks5://n1.lab.invalid:{port}")
    # The rules pick the upstream for exactly these facts.
    assert cfg.dns.compiled.request.internal_upstream(asked[0][1]) == "up"
    server.close()


async def test_a_subscription_server_name_is_resolved_when_fetched() -> None:
    cfg = parse_config(CONFIG.format(port=1))
    out = Outbounds(cfg, DirectDialer(mark=0))
    asked: list[LookupFacts] = []

    async def resolve_own(host: str, facts: LookupFacts) -> str:
        asked.append(facts)
        return "192.0.2.7"

    out.resolve_own = resolve_own   # installed after the subscriptions were made, as the control plane does
    assert await out._resolve_subscription("subs.lab.invalid", LookupFacts("sub", "s1",
                                                                           link="https://subs.lab.invalid/list")) \
        == "192.0.2.7"
    assert cfg.dns.compiled.request.internal_upstream(asked[0]) == "up"


UDP_CONFIG = """
[node]
ss1 = "ss://YWVzLTEyOC1nY206cGFzcw@ss1.lab.invalid:{port}#ss1"
hy1 = "hysteria2://pw@hy1.lab.invalid:{port}/?insecure=1#hy1"
tu1 = "tuic://6a8f3b7c-1d2e-4f5a-9b0c-1d2e3f4a5b6c:pw@tu1.lab.invalid:{port}?alpn=h3#tu1"
[group.g]
filter = ["name({name})"]
policy = "fixed(0)"
[dns]
upstream = {{ up = "udp://192.0.2.53:53" }}
request = ["node(name: ss1) -> up", "node(name: hy1) -> up", "node(name: tu1) -> up", "fallback: asis"]
[routing]
fallback = "g"
"""


@pytest.mark.parametrize("name", ["ss1", "hy1", "tu1"])
async def test_a_node_server_name_for_udp_and_quic_is_resolved_by_the_own_lookup(name: str) -> None:
    """A shadowsocks node's UDP relay and a hysteria2 or tuic node's QUIC go to the address node() rules gave."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Server(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            got.put_nowait(data)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Server, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    cfg = parse_config(UDP_CONFIG.format(port=port, name=name))
    out = Outbounds(cfg, DirectDialer(mark=0))
    asked: list[tuple[str, LookupFacts]] = []

    async def resolve_own(host: str, facts: LookupFacts) -> str:
        asked.append((host, facts))
        return "127.0.0.1"

    out.resolve_own = resolve_own
    dialer, node = out.dialer("g")
    assert node == name
    try:
        if name == "ss1":
            u = await dialer.datagrams()
            await u.send(b"ping", "192.0.2.9", 53)
            u.close()
            assert await asyncio.wait_for(got.get(), 5)
        else:
            # No QUIC server answers: the Initial packet arriving is what counts; the dial is then abandoned.
            dial = asyncio.ensure_future(dialer.connect("192.0.2.9", 80))
            try:
                assert await asyncio.wait_for(got.get(), 5)
            finally:
                dial.cancel()
                with contextlib.suppress(asyncio.CancelledError, DialError):
                    await dial
    finally:
        transport.close()
        getattr(dialer, "close", lambda: None)()
    assert [(h, f.kind, f.name) for h, f in asked][:1] == [(f"{name}.lab.invalid", "node", name)]
