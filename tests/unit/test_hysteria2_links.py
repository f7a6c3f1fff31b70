"""hysteria2:// and hy2:// share links, and clash's `type: hysteria2`, to nodes and back."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from daetui.outbound import hysteria2
from daetui.outbound._hy2_hop import parse_ports, pick_port
from daetui.outbound.hysteria2 import Hysteria2Node
from daetui.outbound.links import LinkError, link_problem, parse_link, with_allow_insecure
from daetui.outbound.subscription import clash_link

PIN = "ab" * 32


@pytest.mark.parametrize(("link", "wanted"), [
    ("hysteria2://letmein@example.com:8443/?sni=real.example.com#My%20Node",
     Hysteria2Node("My Node", "example.com", 8443, "letmein", sni="real.example.com")),
    # hy2:// is the same link; the port defaults to 443
    ("hy2://letmein@example.com", Hysteria2Node("", "example.com", 443, "letmein")),
    ("HY2://letmein@example.com/", Hysteria2Node("", "example.com", 443, "letmein")),
    # userpass authentication: "user:pass" is the authentication string, each half percent-decoded
    ("hysteria2://alice:p%40ss@[2001:DB8::1]:443/?insecure=1",
     Hysteria2Node("", "2001:db8::1", 443, "alice:p@ss", allow_insecure=True)),
    ("hysteria2://pw@203.0.113.5:443/?obfs=salamander&obfs-password=gawrgura&insecure=0",
     Hysteria2Node("", "203.0.113.5", 443, "pw", obfs="salamander", obfs_password="gawrgura")),
    (f"hysteria2://pw@h.test:443/?pinSHA256={':'.join(['AB'] * 32)}",
     Hysteria2Node("", "h.test", 443, "pw", pin_sha256=PIN)),
    # obfs-password without obfs means nothing; unknown parameters (up, down) are the client's tuning
    ("hysteria2://pw@h.test:443/?obfs-password=x&upmbps=100", Hysteria2Node("", "h.test", 443, "pw")),
    # port hopping: the spec's multi-port form (the first port is the node's port), and v2rayN's mport
    ("hysteria2://pw@h.test:443,5000-6000/", Hysteria2Node("", "h.test", 443, "pw", hop_ports="443,5000-6000")),
    ("hy2://pw@[2001:db8::1]:5000-6000", Hysteria2Node("", "2001:db8::1", 5000, "pw", hop_ports="5000-6000")),
    ("hysteria2://pw@h.test:443/?mport=20000-30000,40000",
     Hysteria2Node("", "h.test", 443, "pw", hop_ports="20000-30000,40000")),
])
def test_links_parse(link: str, wanted: Hysteria2Node) -> None:
    node = parse_link(link)
    assert node == wanted
    assert node.protocol == "hysteria2"
    assert parse_link(node.link()) == node
    assert hysteria2.parse_link(node.link()) == node


def test_link_prints_the_spec_form() -> None:
    node = Hysteria2Node("n 1", "2001:db8::1", 8443, "alice:p@ss/", sni="s.test", allow_insecure=True,
                         pin_sha256=PIN, obfs="salamander", obfs_password="k e y!")
    link = node.link()
    parts = urlsplit(link)
    assert link.startswith("hysteria2://alice:p%40ss%2F@[2001:db8::1]:8443/?")
    assert dict(parse_qsl(parts.query)) == {"obfs": "salamander", "obfs-password": "k e y!", "sni": "s.test",
                                           "insecure": "1", "pinSHA256": PIN}
    assert parts.fragment == "n%201"
    assert parse_link(link) == node
    assert "alice" not in repr(node) and "k e y" not in repr(node)  # secrets stay out of logs


@pytest.mark.parametrize(("link", "reason"), [
    ("hysteria2://pw@h.test:443,6000-5000/", "bad port range '6000-5000'"),
    ("hy2://pw@h.test:5000-70000", "bad port range '5000-70000'"),
    ("hysteria2://pw@h.test:443/?mport=5000-", "bad ports '5000-'"),
    ("hysteria2://pw@h.test:443,444/?mport=5000", "ports 443,444 and mport=5000: one of them"),
    ("hysteria2://pw@h.test:port/", "bad port 'port'"),
    ("hysteria2://pw@h.test:70000/", "port 70000 out of range"),
    ("hysteria2://h.test:443/", "no password"),
    ("hysteria2://pw@:443/", "no server host"),
    ("hysteria2://pw@h.test/?obfs=xplus", "obfs=xplus is not supported (only salamander)"),
    ("hysteria2://pw@h.test/?obfs=salamander", "obfs-password must be at least 4 bytes"),
    ("hysteria2://pw@h.test/?pinSHA256=abcd", "pinSHA256='abcd': expected the 64 hex digits"),
    ("hysteria2://pw@h.test/?insecure=maybe", "insecure='maybe': expected 1 or 0"),
])
def test_bad_links_say_why(link: str, reason: str) -> None:
    with pytest.raises(LinkError) as e:
        parse_link(link)
    assert reason in str(e.value)
    assert str(e.value).startswith("hysteria2://") or str(e.value).startswith("hy2://")
    assert link_problem(link) == str(e.value)


def test_global_allow_insecure_reaches_the_node() -> None:
    node = parse_link("hy2://pw@h.test:443")
    assert with_allow_insecure(node).allow_insecure is True


def test_chain_into_hysteria2_is_refused_at_dial() -> None:
    """QUIC needs the router's own UDP socket: a hysteria2 hop after another node fails with the reason."""
    import asyncio

    from daetui.net.stream import DialError

    class Via:
        name = "other node"

        async def connect(self, host: str, port: int) -> None:
            raise AssertionError("not used")

    d = parse_link("hy2://pw@203.0.113.5:443").dialer(Via())

    async def run() -> str:
        with pytest.raises(DialError) as e:
            await d.connect("192.0.2.1", 80)
        return str(e.value)

    assert "cannot follow another node in a chain" in asyncio.run(run())


# -- clash YAML ------------------------------------------------------------------------------------

def test_clash_hysteria2_becomes_its_link() -> None:
    proxy = {"name": "JP hy2", "type": "hysteria2", "server": "2001:db8::7", "port": 8443, "password": "p:w@",
             "obfs": "salamander", "obfs-password": "gawrgura", "sni": "s.test", "skip-cert-verify": True,
             "fingerprint": PIN, "up": "30 Mbps", "down": "200 Mbps", "alpn": ["h3"]}
    link, name = clash_link(proxy)
    assert name == "JP hy2"
    assert parse_link(link, name) == Hysteria2Node("JP hy2", "2001:db8::7", 8443, "p:w@", sni="s.test",
                                                   allow_insecure=True, pin_sha256=PIN, obfs="salamander",
                                                   obfs_password="gawrgura")


def test_clash_ports_are_port_hopping() -> None:
    proxy = {"name": "h", "type": "hysteria2", "server": "h.test", "port": 443, "password": "p",
             "ports": "443,5000-6000", "hop-interval": 10}
    node = parse_link(clash_link(proxy)[0])
    assert (node.port, node.hop_ports) == (443, "443,5000-6000")


def test_port_ranges() -> None:
    assert parse_ports("443, 5000-6000") == ((443, 443), (5000, 6000))
    ranges = ((443, 443), (5000, 5002))
    seen = {pick_port(ranges) for _ in range(400)}
    assert seen == {443, 5000, 5001, 5002}
    with pytest.raises(ValueError, match="more than 64"):
        parse_ports(",".join(str(p) for p in range(1000, 1100)))


@pytest.mark.parametrize(("extra", "reason"), [
    ({"ca-str": "-----BEGIN CERTIFICATE-----"}, "ca / ca-str"),
    ({"alpn": ["h2"]}, "alpn h2 is not supported"),
])
def test_clash_fields_no_link_can_say_refuse_it(extra: dict[str, object], reason: str) -> None:
    proxy = {"name": "h", "type": "hysteria2", "server": "192.0.2.1", "port": 443, "password": "p", **extra}
    with pytest.raises(ValueError, match=reason):
        clash_link(proxy)
