"""Share links with ws and h2 transports for vmess, vless and trojan: parsed, written back, refused."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from daetui.outbound import trojan, vless, vmess
from daetui.outbound.transport import TCP, Transport

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def _vmess(**fields: str) -> str:
    obj = {"v": "2", "ps": "n", "add": "h.test", "port": "443", "id": UID, "aid": "0", **fields}
    return "vmess://" + base64.b64encode(json.dumps(obj).encode()).decode()


PARSE = {"vmess": vmess.parse_link, "vless": vless.parse_link, "trojan": trojan.parse_link}

# (link, the transport it names, sni, tls)
LINKS: list[tuple[str, Transport, str, bool]] = [
    (_vmess(net="ws", host="cdn.test", path="/ray?ed=2048", tls="tls", sni="sni.test"),
     Transport("ws", "/ray", "cdn.test", 2048), "sni.test", True),
    (_vmess(net="ws", host="cdn.test", path="/ray"), Transport("ws", "/ray", "cdn.test"), "", False),
    (_vmess(net="ws", path=""), Transport("ws", "/"), "", False),
    (_vmess(net="h2", host="a.test,b.test", path="/h2", tls="tls"),
     Transport("h2", "/h2", "a.test,b.test"), "a.test", True),
    (_vmess(net="http", host="a.test", path="/h2", tls="tls", sni="s.test"),
     Transport("h2", "/h2", "a.test"), "s.test", True),
    (_vmess(net="tcp", type="none", host="ignored.test", path="/ignored"), TCP, "", False),
    (f"vless://{UID}@h.test:443?encryption=none&security=tls&sni=s.test&type=ws&host=cdn.test"
     "&path=%2Fray%3Fed%3D2048#n", Transport("ws", "/ray", "cdn.test", 2048), "s.test", True),
    (f"vless://{UID}@h.test:80?type=ws&host=cdn.test&path=/ray&ed=1024#n",
     Transport("ws", "/ray", "cdn.test", 1024), "", False),
    (f"vless://{UID}@h.test:80?type=ws&path=%2Fray%3Fed%3D512%26eh%3DX-Early#n",
     Transport("ws", "/ray", "", 512, "X-Early"), "", False),
    (f"vless://{UID}@h.test:443?security=tls&type=h2&host=a.test&path=%2Fh2#n",
     Transport("h2", "/h2", "a.test"), "", True),
    (f"vless://{UID}@h.test:443?security=tls&type=http&path=%2Fh2#n", Transport("h2", "/h2"), "", True),
    ("trojan://pw@h.test:443?sni=s.test&type=ws&host=cdn.test&path=%2Ftj%3Fed%3D2048#n",
     Transport("ws", "/tj", "cdn.test", 2048), "s.test", True),
    ("trojan://pw@h.test:443?type=h2&host=a.test,b.test&path=%2Fh2#n",
     Transport("h2", "/h2", "a.test,b.test"), "", True),
    ("trojan://pw@h.test:443?type=ws&path=%2Fa%3Fq%3D1%26ed%3D64#n", Transport("ws", "/a?q=1", "", 64), "", True),
]


@pytest.mark.parametrize(("link", "transport", "sni", "tls"), LINKS)
def test_parse_and_back(link: str, transport: Transport, sni: str, tls: bool) -> None:
    """The link's transport as read; the node's own link parses back to the same node (and its link)."""
    parse = PARSE[link.split(":")[0]]
    node: Any = parse(link)
    assert node.transport == transport
    assert node.sni == sni
    assert getattr(node, "tls", True) == tls
    again = parse(node.link())
    assert again == node
    assert again.link() == node.link()


def test_link_keeps_early_data_in_the_path_as_xray_does() -> None:
    node = vless.parse_link(f"vless://{UID}@h.test:80?type=ws&path=/ray&ed=2048#n")
    assert "path=%2Fray%3Fed%3D2048" in node.link()
    node = vmess.parse_link(_vmess(net="ws", path="/ray?ed=2048"))
    obj = json.loads(base64.b64decode(node.link()[len("vmess://"):]))
    assert (obj["net"], obj["path"], obj["host"]) == ("ws", "/ray?ed=2048", "")


def test_tcp_links_are_unchanged() -> None:
    """A tcp node's link names no path, host or early data (trojan's no type at all)."""
    assert vless.VlessNode("n", "h.test", 443, UID).link() == \
        f"vless://{UID}@h.test:443?encryption=none&security=none&type=tcp#n"
    assert trojan.TrojanNode("n", "h.test", 443, "pw").link() == "trojan://pw@h.test:443#n"


REFUSED = [
    (_vmess(net="grpc", type="multi"), "type=multi is not supported: grpc mode multi (TunMulti)"),
    (_vmess(net="quic"), "net=quic is not supported: no quic transport"),
    (_vmess(net="kcp"), "net=kcp is not supported: no mkcp transport"),
    (_vmess(net="tcp", type="http"), "type=http (HTTP header obfuscation of tcp) is not supported (only none)"),
    (_vmess(net="h2", path="/h2"), "transport h2 needs tls"),
    (_vmess(net="ws", tls="reality"), "tls=reality is not supported: no REALITY client here"),
    (_vmess(net="splithttp"), "net=splithttp is not supported: no xhttp (splithttp) transport"),
    (f"vless://{UID}@h.test:443?type=grpc&serviceName=x&mode=multi", "mode=multi is not supported: grpc mode"),
    (f"vless://{UID}@h.test:443?type=mkcp", "type=mkcp is not supported: no mkcp transport"),
    (f"vless://{UID}@h.test:443?type=xhttp&path=/x", "type=xhttp is not supported: no xhttp transport"),
    (f"vless://{UID}@h.test:443?type=tcp&headerType=http", "headerType=http (HTTP header obfuscation of tcp)"),
    (f"vless://{UID}@h.test:443?security=reality&pbk=x&sid=1", "pbk='x' is not base64url"),
    (f"vless://{UID}@h.test:443?security=reality&pbk={'A' * 43}&type=ws&path=/x",
     "security=reality over type=ws is not supported (reality: tcp only)"),
    (f"vless://{UID}@h.test:443?security=tls&flow=xtls-rprx-vision", "flow=xtls-rprx-vision (XTLS) is not supported"),
    (f"vless://{UID}@h.test:443?type=h2&path=/h2", "transport h2 needs tls"),
    (f"vless://{UID}@h.test:443?type=ws&path=/x&ed=lots", "ed='lots' is not a number"),
    (f"vless://{UID}@h.test:443?type=ws&path=%2Fx%3Fed%3Dlots", "early data ed='lots' is not a number"),
    (f"vless://{UID}@h.test:443?security=tls&type=h2&path=%2Fx%3Fed%3D10", "early data (ed=) is a ws setting"),
    (f"vless://{UID}@h.test:443?type=wss", "type=wss is not supported (supported transports: tcp, ws, h2"),
    ("trojan://pw@h.test:443?type=grpc&serviceName=x&ed=8", "early data (ed=) is a ws setting, not grpc's"),
    ("trojan://pw@h.test:443?type=httpupgrade", "type=httpupgrade is not supported: no httpupgrade transport"),
    ("trojan://pw@h.test:443?security=reality", "security=reality is not supported: no REALITY"),
]


@pytest.mark.parametrize(("link", "reason"), REFUSED)
def test_refused_with_the_reason(link: str, reason: str) -> None:
    parse = PARSE[link.split(":")[0]]
    with pytest.raises(ValueError) as e:
        parse(link)
    assert reason in str(e.value)


def test_transport_checks_itself() -> None:
    with pytest.raises(ValueError, match="early data"):
        Transport("h2", "/x", early_data=10)
    with pytest.raises(ValueError, match="ws/h2/grpc settings"):
        Transport("tcp", "/x")
    with pytest.raises(ValueError, match="not supported"):
        Transport("quic")  # type: ignore[arg-type]
    assert Transport("h2", "/x", " a.test , b.test ").hosts == ("a.test", "b.test")
    assert Transport("ws", "/x?q=1", early_data=8).link_path == "/x?q=1&ed=8"
    assert Transport("ws", "", early_data=8, early_data_header="X-E").link_path == "/?ed=8&eh=X-E"
