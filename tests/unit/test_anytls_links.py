"""anytls:// links (anytls-go docs/uri_scheme.md) and clash's `type: anytls`, to nodes and back."""

from __future__ import annotations

import pytest

from daetui.outbound import anytls, links
from daetui.outbound.subscription import clash_link


def test_the_specs_examples() -> None:
    a = anytls.parse_link("anytls://letmein@example.com/?sni=real.example.com")
    assert (a.host, a.port, a.password, a.sni, a.allow_insecure) == ("example.com", 443, "letmein",
                                                                      "real.example.com", False)
    b = anytls.parse_link("anytls://letmein@example.com/?sni=127.0.0.1&insecure=1")
    assert b.sni == "127.0.0.1" and b.allow_insecure
    c = anytls.parse_link("anytls://0fdf77d7-d4ba-455e-9ed9-a98dd6d5489a@[2409:8a71:6a00:1953::615]:8964/?insecure=1")
    assert (c.host, c.port, c.password) == ("2409:8a71:6a00:1953::615", 8964, "0fdf77d7-d4ba-455e-9ed9-a98dd6d5489a")


@pytest.mark.parametrize("link", [
    "anytls://pw@203.0.113.5:443/#plain",
    "anytls://p%40ss%3Aw%2Fd@[2001:db8::5]:8443/?sni=a.example&insecure=1#v6%20node",
    "anytls://pw@h.example:443/?alpn=h2%2Chttp%2F1.1&idleSessionTimeout=90&minIdleSession=2#tuned",
])
def test_links_round_trip(link: str) -> None:
    node = anytls.parse_link(link)
    assert anytls.parse_link(node.link()) == node
    assert node.link() == link


def test_fields_and_the_names_others_use() -> None:
    node = anytls.parse_link("anytls://p%40ss@h.example:1/?peer=s.example&allowInsecure=true&alpn=h2#n", "given")
    assert (node.password, node.sni, node.allow_insecure, node.alpn, node.name) == ("p@ss", "s.example", True,
                                                                                     ("h2",), "given")
    assert "p@ss" not in repr(node)


@pytest.mark.parametrize("link, problem", [
    ("anytls://h.example:443", "no password"),
    ("anytls://pw@:443", "no server host"),
    ("anytls://pw@h.example:99999", "bad host or port"),
    ("anytls://pw@h.example:port/", "bad host or port"),
    ("anytls://pw@h.example/?insecure=maybe", "expected 1 or 0"),
    ("anytls://pw@h.example/?idleSessionTimeout=soon", "take numbers"),
    ("anytls://pw@h.example/?minIdleSession=1000", "minIdleSession"),
    ("trojan://pw@h.example:443", "not an anytls"),
])
def test_bad_links_say_why(link: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        anytls.parse_link(link)


def test_links_knows_the_scheme() -> None:
    node = links.parse_link("anytls://pw@203.0.113.5:443/?sni=x.example#n")
    assert isinstance(node, anytls.AnyTlsNode) and node.protocol == "anytls"
    assert links.link_problem("anytls://pw@203.0.113.5/") is None
    assert links.refusal("anytls") is None


def test_clash_type_anytls() -> None:
    link, name = clash_link({"name": "any", "type": "anytls", "server": "203.0.113.5", "port": 443, "password": "p/w",
                             "client-fingerprint": "chrome", "udp": True, "idle-session-check-interval": 30,
                             "idle-session-timeout": 60, "min-idle-session": 1, "sni": "s.example",
                             "alpn": ["h2", "http/1.1"], "skip-cert-verify": True})
    node = anytls.parse_link(link, name)
    assert (node.host, node.port, node.password, node.sni, node.allow_insecure, node.alpn) == (
        "203.0.113.5", 443, "p/w", "s.example", True, ("h2", "http/1.1"))
    assert (node.idle_timeout, node.min_idle, node.name) == (60, 1, "any")
    with pytest.raises(ValueError, match="fingerprint"):
        clash_link({"name": "x", "type": "anytls", "server": "h", "port": 1, "password": "p", "fingerprint": "ab"})
