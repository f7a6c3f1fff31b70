"""Which scheme goes where: socks:// as SOCKS5, socks4/socks4a to their module, schemes with no client
here refused with the reason at parse, and link_problem() -- the config loader's "is this link usable?"."""

from __future__ import annotations

import importlib.util
import types

import pytest

from daetui.outbound import links
from daetui.outbound.links import UNSUPPORTED, LinkError, link_problem, parse_link, refusal


@pytest.mark.parametrize("scheme", sorted(UNSUPPORTED))
def test_schemes_without_a_client_are_refused_naming_the_protocol(scheme: str) -> None:
    link = f"{scheme}://secret@203.0.113.9:443?sni=a.example#n"
    with pytest.raises(LinkError) as e:
        parse_link(link)
    assert str(e.value) == refusal(scheme)
    assert UNSUPPORTED[scheme] in str(e.value) and str(e.value).startswith(f"{scheme}://")
    assert link_problem(link) == str(e.value)
    assert link_problem(scheme.upper() + link[len(scheme):]) == str(e.value)  # schemes are case-blind


def test_a_chain_with_a_refused_hop_is_refused_for_it() -> None:
    reason = link_problem("socks5://203.0.113.1:1080 -> juicity://pw@203.0.113.2:443")
    assert reason is not None and "Juicity" in reason


@pytest.mark.parametrize(("link", "wanted"), [
    ("socks://user:pass@127.0.0.1:1080#SOCKS%20Proxy", ("SOCKS Proxy", "127.0.0.1", 1080, "user", "pass")),
    # v2rayN writes the credentials as base64 of user:pass
    ("socks://dXNlcjpwYXNz@[2001:db8::1]:1081#v6", ("v6", "2001:db8::1", 1081, "user", "pass")),
    ("SOCKS://203.0.113.1:1080", ("203.0.113.1:1080", "203.0.113.1", 1080, "", "")),
])
def test_socks_is_socks5(link: str, wanted: tuple[object, ...]) -> None:
    node = parse_link(link)
    assert node.protocol == "socks5"
    assert (node.name, node.host, node.port, node.username, node.password) == wanted
    assert node.link().startswith("socks5://") and parse_link(node.link()) == node


@pytest.mark.parametrize("link", ["socks://user:pass@127.0.0.1", "socks://[2001:db8::1]", "socks://a.example#n"])
def test_socks_without_a_port_is_refused(link: str) -> None:
    assert link_problem(link) == "socks:// link without a port"


@pytest.mark.parametrize("scheme", ["socks4", "socks4a"])
def test_socks4_goes_to_its_module(scheme: str) -> None:
    problem = link_problem(f"{scheme}://203.0.113.1:1080")
    if importlib.util.find_spec("daetui.outbound.socks4") is None:
        assert problem == f"{scheme}:// nodes are not supported by this version of daetui yet"
    else:
        assert problem is None
        assert type(parse_link(f"{scheme}://203.0.113.1:1080")).__module__ == "daetui.outbound.socks4"


def test_unknown_scheme_lists_the_known_ones() -> None:
    reason = link_problem("gopher://203.0.113.1:70")
    assert reason is not None and reason.startswith("unknown scheme 'gopher://'")
    assert "socks://" in reason and "vmess://" in reason
    assert link_problem("no scheme at all") is not None


def test_link_problem_is_none_for_a_usable_link() -> None:
    assert link_problem("ss://YWVzLTEyOC1nY206cGFzcw@198.51.100.7:8388#n") is None


def test_link_problem_never_raises_on_a_module_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(link: str, name: str = "") -> object:
        raise RuntimeError("boom")

    fake = types.ModuleType("daetui_fake_socks5")
    fake.parse_link = broken  # type: ignore[attr-defined]
    monkeypatch.setattr(links.importlib, "import_module", lambda name: fake)
    assert link_problem("socks5://203.0.113.1:1080") == "socks5:// link not understood (RuntimeError: boom)"
