"""A node's protocol, as the console shows it, is set where the node's state is built: the share link's scheme."""

from __future__ import annotations

import base64
import json
from typing import get_args

import pytest

from daetui.config.load import parse_config
from daetui.outbound.direct import DirectDialer
from daetui.outbound.links import MODULES
from daetui.outbound.manager import Outbounds
from daetui.outbound.state import NodeProtocol

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"
VMESS = "vmess://" + base64.b64encode(json.dumps(
    {"v": 2, "ps": "vm", "add": "203.0.113.5", "port": 443, "id": UID, "aid": 0, "net": "tcp"}).encode()).decode()
NODES = {
    "s5": ("socks5://203.0.113.11:1080", "socks5"),
    "h": ("http://203.0.113.11:3128", "http"),
    "hs": ("https://203.0.113.11:443", "https"),
    "ss": ("ss://YWVzLTEyOC1nY206cGFzcw@198.51.100.7:8388", "ss"),
    "tj": ("trojan://secret@203.0.113.5:443", "trojan"),
    "vl": (f"vless://{UID}@203.0.113.10:80", "vless"),
    "vm": (VMESS, "vmess"),
    "tu": (f"tuic://{UID}:pw@203.0.113.12:443?sni=t.example.com", "tuic"),
    "any": ("anytls://pw@203.0.113.5/?sni=a.example", "anytls"),
    "two": ("socks5://203.0.113.11:1080 -> ss://YWVzLTEyOC1nY206cGFzcw@198.51.100.7:8388", "chain"),
}


def test_every_share_link_scheme_is_a_protocol_the_console_knows() -> None:
    assert set(MODULES) <= set(get_args(NodeProtocol))


@pytest.mark.parametrize("name", NODES)
def test_a_node_state_carries_its_links_protocol(name: str) -> None:
    nodes = "".join(f'{n} = "{link}"\n' for n, (link, _) in NODES.items())
    config = parse_config(f'[global]\nlan_interface = ["lan0"]\n[node]\n{nodes}', "t.toml")
    _, states = Outbounds(config, DirectDialer(mark=0)).state()
    state = next(s for s in states if s.name == name)
    assert state.protocol == NODES[name][1]
