"""clash / mihomo YAML subscriptions: each proxy turned into the share link daetui parses, or refused with why.

The YAML below is written here, modelled on mihomo's documented proxy fields
(wiki.metacubex.one/config/proxies/: ss, vmess, vless, trojan, socks, http,
and the shared "transport" and "tls" pages) and on the config layout mihomo's
docs/config.yaml shows (ports, dns, proxies, proxy-groups, rules). Addresses
are documentation ranges; passwords and UUIDs are made up.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
import yaml

from daetui import redact
from daetui.outbound.links import LinkError, parse_link
from daetui.outbound.subscription import MAX_YAML_NODES, _sip008_link, clash_link, load_yaml, parse_subscription

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"

CONFIG = f"""\
mixed-port: 7890
allow-lan: false
mode: rule
log-level: info
dns:
  enable: true
  nameserver: [223.5.5.5, "https://doh.pub/dns-query"]

proxies:
  - name: "HK 01 | ss"
    type: ss
    server: 203.0.113.10
    port: 8388
    cipher: chacha20-ietf-poly1305
    password: "lab;pass:word"
    udp: true
    udp-over-tcp: false
    ip-version: ipv4

  - name: "JP 02 | ss obfs"
    type: ss
    server: ss.example.com
    port: 443
    cipher: aes-256-gcm
    password: lab-secret
    plugin: obfs
    plugin-opts:
      mode: tls
      host: bing.com

  - name: "US 03 | ss v2ray-plugin"
    type: ss
    server: "2001:db8::20"
    port: 443
    cipher: aes-128-gcm
    password: lab-secret
    plugin: v2ray-plugin
    plugin-opts:
      mode: websocket
      tls: true
      skip-cert-verify: false
      host: cdn.example.com
      path: "/ray"
      mux: true

  - name: "SG 04 | vmess"
    type: vmess
    server: 198.51.100.4
    port: 10086
    uuid: {UID}
    alterId: 0
    cipher: auto
    udp: true

  - name: "SG 05 | vmess ws tls"
    type: vmess
    server: vm.example.com
    port: 443
    uuid: {UID}
    alterId: 0
    cipher: aes-128-gcm
    tls: true
    servername: edge.example.com
    skip-cert-verify: true
    network: ws
    ws-opts:
      path: /vmess
      headers:
        Host: edge.example.com

  - name: "DE 06 | vless tls"
    type: vless
    server: 198.51.100.6
    port: 443
    uuid: {UID}
    tls: true
    servername: vl.example.com
    alpn: [h2, http/1.1]
    client-fingerprint: chrome
    network: tcp

  - name: "DE 07 | vless h2"
    type: vless
    server: vl.example.com
    port: 443
    uuid: {UID}
    tls: true
    network: h2
    h2-opts:
      host: [vl.example.com]
      path: /h2

  - name: "FR 08 | trojan"
    type: trojan
    server: tj.example.com
    port: 443
    password: "tj pass#1"
    sni: front.example.com
    alpn: [h2]
    skip-cert-verify: false
    udp: true

  - name: "FR 09 | trojan ws"
    type: trojan
    server: tj.example.com
    port: 443
    password: secret
    network: ws
    ws-opts:
      path: /tj
      headers: {{Host: tj.example.com}}

  - name: "LAN socks"
    type: socks5
    server: 192.0.2.7
    port: 1080
    username: alice
    password: "s3cr:t"

  - name: "LAN http"
    type: http
    server: 192.0.2.8
    port: 8443
    username: bob
    password: pw
    tls: true
    sni: proxy.example.com
    skip-cert-verify: true

  - name: "KR 10 | hysteria2"
    type: hysteria2
    server: 203.0.113.30
    port: 443
    password: hy
  - {{name: "KR 11 | tuic", type: tuic, server: 203.0.113.31, port: 443, uuid: {UID}, password: p}}
  - {{name: "old ssr", type: ssr, server: 203.0.113.32, port: 443, cipher: aes-128-cfb, password: p,
      obfs: plain, protocol: origin}}
  - {{name: "wg", type: wireguard, server: 203.0.113.33, port: 51820, private-key: x, public-key: y}}
  - {{name: "DIRECT-ish", type: direct}}
  - {{name: "mystery", type: mystery, server: 203.0.113.34, port: 1}}

proxy-groups:
  - name: PROXY
    type: select
    proxies: ["HK 01 | ss", "JP 02 | ss obfs", DIRECT]
  - name: auto
    type: url-test
    url: https://cp.cloudflare.com/generate_204
    interval: 300
    proxies: ["HK 01 | ss", "SG 04 | vmess"]

rules:
  - DOMAIN-SUFFIX,example.cn,DIRECT
  - GEOIP,CN,DIRECT
  - MATCH,PROXY
"""
PROXIES: list[dict[str, Any]] = yaml.safe_load(CONFIG)["proxies"]
REFUSED_TYPES = {
    "old ssr": "ShadowsocksR",
    "wg": "WireGuard",
    "DIRECT-ish": "built-in outbound",
    "mystery": "unknown proxy type 'mystery'",
}

@pytest.fixture(autouse=True)
def _forget_remembered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # parse_subscription remembers every link's secrets process-wide, so that logs mask them; the corpus's
    # (the word "example" is a password there) must not mask the text of tests that run later.
    monkeypatch.setattr(redact, "_known", dict(redact._known))
    monkeypatch.setattr(redact, "_by_prefix", dict(redact._by_prefix))



def _query(link: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(link).query, keep_blank_values=True))


def _parse(link: str) -> tuple[Any, str | None]:
    try:
        return parse_link(link), None
    except LinkError as e:
        return None, str(e)


# -- the whole config ---------------------------------------------------------------------------------

def test_every_proxy_becomes_a_node_or_an_error_with_its_name() -> None:
    parsed = parse_subscription(CONFIG, "sub")
    assert parsed.format == "clash"
    assert len(parsed.nodes) + len(parsed.errors) == len(PROXIES)
    for name, reason in REFUSED_TYPES.items():
        number = next(i for i, p in enumerate(PROXIES, 1) if p["name"] == name)
        assert any(e.startswith(f"proxy {number} ({name}): ") and reason in e for e in parsed.errors), name


def test_one_parser_decides_each_proxy_is_what_parse_link_makes_of_its_link() -> None:
    parsed = parse_subscription(CONFIG, "sub")
    nodes = dict(parsed.nodes)
    for number, proxy in enumerate(PROXIES, 1):
        if proxy["name"] in REFUSED_TYPES:
            continue
        link, name = clash_link(proxy)
        assert name == proxy["name"]
        node, reason = _parse(link)
        if node is None:
            assert f"proxy {number} ({name}): {reason}" in parsed.errors
        else:
            assert nodes[name] == parse_link(link, name)


def test_plain_nodes_have_the_fields_the_yaml_gives() -> None:
    nodes = dict(parse_subscription(CONFIG, "sub").nodes)
    ss = nodes["HK 01 | ss"]
    assert (ss.protocol, ss.host, ss.port, ss.method, ss.password) == (
        "ss", "203.0.113.10", 8388, "chacha20-ietf-poly1305", "lab;pass:word")
    vm = nodes["SG 04 | vmess"]
    assert (vm.protocol, vm.host, vm.port, vm.uuid, vm.security, vm.tls) == (
        "vmess", "198.51.100.4", 10086, UID, "auto", False)
    vl = nodes["DE 06 | vless tls"]
    assert (vl.protocol, vl.host, vl.port, vl.uuid, vl.tls, vl.sni, vl.alpn) == (
        "vless", "198.51.100.6", 443, UID, True, "vl.example.com", ("h2", "http/1.1"))
    tj = nodes["FR 08 | trojan"]
    assert (tj.protocol, tj.host, tj.password, tj.sni, tj.alpn, tj.allow_insecure) == (
        "trojan", "tj.example.com", "tj pass#1", "front.example.com", ("h2",), False)
    s5 = nodes["LAN socks"]
    assert (s5.protocol, s5.host, s5.port, s5.username, s5.password) == ("socks5", "192.0.2.7", 1080, "alice", "s3cr:t")
    h = nodes["LAN http"]
    assert (h.protocol, h.host, h.port, h.username, h.password, h.sni, h.allow_insecure) == (
        "https", "192.0.2.8", 8443, "bob", "pw", "proxy.example.com", True)


def test_transports_and_plugins_reach_the_nodes() -> None:
    nodes = dict(parse_subscription(CONFIG, "sub").nodes)
    vm = nodes["SG 05 | vmess ws tls"]
    assert (vm.tls, vm.sni, vm.allow_insecure, vm.security) == (True, "edge.example.com", True, "aes-128-gcm")
    assert (vm.transport.kind, vm.transport.path, vm.transport.host) == ("ws", "/vmess", "edge.example.com")
    h2 = nodes["DE 07 | vless h2"].transport
    assert (h2.kind, h2.path, h2.host) == ("h2", "/h2", "vl.example.com")
    ws = nodes["FR 09 | trojan ws"].transport
    assert (ws.kind, ws.path, ws.host) == ("ws", "/tj", "tj.example.com")
    obfs = nodes["JP 02 | ss obfs"].plugin
    assert (obfs.name, obfs.get("obfs"), obfs.get("obfs-host")) == ("obfs-local", "tls", "bing.com")
    v2 = nodes["US 03 | ss v2ray-plugin"]
    assert (v2.host, v2.plugin.name, v2.plugin.flag("tls"), v2.plugin.get("host"), v2.plugin.get("path")) == (
        "2001:db8::20", "v2ray-plugin", True, "cdn.example.com", "/ray")


# -- the links made -------------------------------------------------------------------------------------

def test_ss_plugins_become_sip002_plugin_parameters() -> None:
    obfs = clash_link(PROXIES[1])[0]
    assert _query(obfs)["plugin"] == "obfs-local;obfs=tls;obfs-host=bing.com"
    v2 = clash_link(PROXIES[2])[0]
    assert v2.startswith("ss://") and "@[2001:db8::20]:443/?plugin=" in v2
    # mux and skip-cert-verify have no v2ray-plugin option: the client's business, left out.
    assert _query(v2)["plugin"] == "v2ray-plugin;mode=websocket;tls;host=cdn.example.com;path=/ray"


def test_sip003_option_values_are_escaped() -> None:
    proxy = {"name": "x", "type": "ss", "server": "192.0.2.1", "port": 1, "cipher": "aes-128-gcm", "password": "p",
             "plugin": "obfs", "plugin-opts": {"mode": "http", "host": "a;b=c\\d"}}
    assert _query(clash_link(proxy)[0])["plugin"] == r"obfs-local;obfs=http;obfs-host=a\;b\=c\\d"


def test_ss2022_userinfo_is_plain_percent_encoded() -> None:
    proxy = {"name": "x", "type": "ss", "server": "192.0.2.1", "port": 1, "cipher": "2022-blake3-aes-128-gcm",
             "password": "AAAAAAAAAAAAAAAAAAAAAA=="}
    link = clash_link(proxy)[0]
    assert link.startswith("ss://2022-blake3-aes-128-gcm:AAAAAAAAAAAAAAAAAAAAAA%3D%3D@192.0.2.1:1")


def test_vmess_becomes_v2rayn_json() -> None:
    link = clash_link(PROXIES[4])[0]
    obj = json.loads(base64.b64decode(link[len("vmess://"):]))
    assert {k: obj[k] for k in ("ps", "add", "port", "id", "aid", "scy", "net", "host", "path", "tls", "sni",
                                 "allowInsecure")} == {
        "ps": "SG 05 | vmess ws tls", "add": "vm.example.com", "port": "443", "id": UID, "aid": "0",
        "scy": "aes-128-gcm", "net": "ws", "host": "edge.example.com", "path": "/vmess", "tls": "tls",
        "sni": "edge.example.com", "allowInsecure": "1"}


@pytest.mark.parametrize(("proxy", "wanted"), [
    ({"network": "ws", "ws-opts": {"path": "/w", "headers": {"host": "h.example"}}},
     {"type": "ws", "path": "/w", "host": "h.example"}),
    # clash's older spelling, before ws-opts
    ({"network": "ws", "ws-path": "/old", "ws-headers": {"Host": "o.example"}},
     {"type": "ws", "path": "/old", "host": "o.example"}),
    ({"network": "ws", "ws-opts": {"path": "/u", "v2ray-http-upgrade": True}}, {"type": "httpupgrade", "path": "/u"}),
    ({"network": "ws", "ws-opts": {"path": "/e", "max-early-data": 2048,
                                   "early-data-header-name": "Sec-WebSocket-Protocol"}},
     {"type": "ws", "path": "/e?ed=2048&eh=Sec-WebSocket-Protocol"}),
    ({"network": "h2", "h2-opts": {"host": ["a.example", "b.example"], "path": "/h"}},
     {"type": "http", "host": "a.example,b.example", "path": "/h"}),
    ({"network": "grpc", "grpc-opts": {"grpc-service-name": "svc"}}, {"type": "grpc", "serviceName": "svc"}),
    ({"network": "http", "http-opts": {"path": ["/", "/v"], "headers": {"Host": ["x.example"]}}},
     {"type": "tcp", "headerType": "http", "path": "/,/v", "host": "x.example"}),
    ({"tls": True, "flow": "xtls-rprx-vision", "reality-opts": {"public-key": "pk", "short-id": "ab"}},
     {"security": "reality", "flow": "xtls-rprx-vision", "pbk": "pk", "sid": "ab"}),
])
def test_vless_transport_and_tls_fields_become_link_parameters(proxy: dict[str, Any], wanted: dict[str, str]) -> None:
    base = {"name": "v", "type": "vless", "server": "192.0.2.1", "port": 443, "uuid": UID}
    params = _query(clash_link({**base, **proxy})[0])
    assert {k: params.get(k) for k in wanted} == wanted


def test_trojan_is_always_tls_and_keeps_its_password() -> None:
    link = clash_link(PROXIES[8])[0]
    assert unquote(urlsplit(link).username or "") == "secret"
    assert _query(link) == {"security": "tls", "type": "ws", "host": "tj.example.com", "path": "/tj"}


@pytest.mark.parametrize(("extra", "reason"), [
    ({"dialer-proxy": "other"}, "dialer-proxy 'other'"),
    ({"ech-opts": {"enable": True}}, "Encrypted Client Hello"),
    ({"ss-opts": {"enabled": True, "method": "aes-128-gcm", "password": "x"}}, "trojan-go"),
])
def test_fields_no_link_can_say_refuse_the_proxy(extra: dict[str, Any], reason: str) -> None:
    proxy = {"name": "t", "type": "trojan", "server": "192.0.2.1", "port": 443, "password": "p", **extra}
    with pytest.raises(ValueError, match=reason):
        clash_link(proxy)


def test_http_proxy_headers_refuse_it_and_socks5_over_tls_is_left_to_its_parser() -> None:
    with pytest.raises(ValueError, match="headers"):
        clash_link({"name": "h", "type": "http", "server": "192.0.2.1", "port": 80, "headers": {"X-T": "1"}})
    link = clash_link({"name": "s", "type": "socks5", "server": "192.0.2.1", "port": 1080, "tls": True})[0]
    assert _parse(link)[0] is None  # socks5:// takes no parameters: refused with that reason


@pytest.mark.parametrize(("proxy", "reason"), [
    ({"type": "ss", "port": 1, "cipher": "aes-128-gcm", "password": "p"}, "no server"),
    ({"type": "ss", "server": "192.0.2.1", "port": 70000, "cipher": "aes-128-gcm", "password": "p"}, "bad port"),
    ({"type": "ss", "server": "192.0.2.1", "port": "x", "cipher": "aes-128-gcm", "password": "p"}, "bad port"),
    ({"type": "ss", "server": "192.0.2.1", "port": 1}, "no cipher or password"),
    ({"server": "192.0.2.1", "port": 1}, "no type"),
    ({"type": "vmess", "server": "192.0.2.1", "port": 1, "uuid": UID, "network": "grpc", "grpc-opts": "svc"},
     "grpc-opts is not a mapping"),
])
def test_broken_entries_say_why(proxy: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        clash_link({"name": "n", **proxy})


def test_port_as_text_and_names_made_unique() -> None:
    text = ("proxies:\n"
            "  - {name: same, type: socks5, server: 192.0.2.1, port: '1080'}\n"
            "  - {name: same, type: socks5, server: 192.0.2.2, port: 1080}\n"
            "  - {name: 42, type: socks5, server: 192.0.2.3, port: 1080}\n"
            "  - not a mapping\n")
    parsed = parse_subscription(text, "sub", taken={"42"})
    assert [n for n, _ in parsed.nodes] == ["same", "same (2)", "42 (2)"]
    assert parsed.errors == ["proxy 4: not a mapping"]


# -- the YAML itself -------------------------------------------------------------------------------------

def test_anchors_and_merge_keys_are_read() -> None:
    # Config writers share fields with anchors and `<<:` merge keys.
    text = ("common: &common {type: trojan, port: 443, password: p, sni: s.example}\n"
            "proxies:\n"
            "  - {<<: *common, name: a, server: 192.0.2.1}\n"
            "  - {<<: *common, name: b, server: 192.0.2.2}\n")
    parsed = parse_subscription(text, "sub")
    assert parsed.errors == []
    assert [(n, node.host, node.sni) for n, node in parsed.nodes] == [
        ("a", "192.0.2.1", "s.example"), ("b", "192.0.2.2", "s.example")]


def test_an_alias_bomb_is_refused_quickly() -> None:
    # "billion laughs": ten levels of ten aliases each, a few hundred bytes that expand to 10^10 nodes.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "\n".join(lines) + "\nproxies: *a9\n"
    start = time.monotonic()
    parsed = parse_subscription(text, "sub")
    assert time.monotonic() - start < 5
    assert parsed.nodes == []
    assert parsed.errors == [f"bad clash YAML: more than {MAX_YAML_NODES} YAML nodes once its aliases are expanded"]


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ValueError, match="YAML nodes"):
        load_yaml("proxies: &p [*p]\n")


def test_deep_nesting_is_refused_not_a_crash() -> None:
    with pytest.raises(ValueError):
        load_yaml("proxies: " + "[" * 20000 + "]" * 20000 + "\n")


def test_bad_yaml_says_where() -> None:
    parsed = parse_subscription("proxies:\n  - {name: a, type: ss\n  - b\n", "sub")
    assert parsed.nodes == [] and len(parsed.errors) == 1
    assert parsed.errors[0].startswith("bad clash YAML: ") and "(line " in parsed.errors[0]


def test_providers_only_says_to_subscribe_to_them() -> None:
    text = "proxy-providers:\n  p1:\n    type: http\n    url: https://sub.example.com/p1\n"
    parsed = parse_subscription(text, "sub")
    assert parsed.nodes == []
    assert parsed.errors == ["clash YAML without a `proxies:` list (its proxy-providers are URLs of their own: "
                             "subscribe to those)"]


# -- SIP008 plugins ---------------------------------------------------------------------------------------

def test_sip008_plugin_goes_into_the_ss_link() -> None:
    doc = {"version": 1, "servers": [
        {"remarks": "p", "server": "192.0.2.9", "server_port": 8388, "password": "pw", "method": "aes-128-gcm",
         "plugin": "obfs-local", "plugin_opts": "obfs=http;obfs-host=www.example.com"},
        {"remarks": "q", "server": "192.0.2.9", "server_port": 8389, "password": "pw", "method": "aes-128-gcm",
         "plugin": "", "plugin_opts": ""}]}
    parsed = parse_subscription(json.dumps(doc), "sub")
    assert parsed.format == "sip008"
    link = _sip008_link(doc["servers"][0])[0]
    assert _query(link)["plugin"] == "obfs-local;obfs=http;obfs-host=www.example.com"
    assert "plugin" not in _query(_sip008_link(doc["servers"][1])[0])
    # The node (or the refusal) is what the ss:// parser makes of that link.
    node, reason = _parse(link)
    if node is None:
        assert any(e.startswith("server 1: ") and reason in e for e in parsed.errors)
    else:
        assert dict(parsed.nodes)["p"] == parse_link(link, "p")
