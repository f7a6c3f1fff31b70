"""Share links and subscriptions from the real-world corpus, judged by what dae does with them.

The corpus (../shared/realworld beside the project, SOURCES.md there) holds
links from specs, dae's tests and other parsers' tests, each with dae's
verdict and the fields a parser must give. Here:

- a link dae accepts is parsed by daetui with the `expect` fields equal, or
  refused for a thing daetui has no client for (a "no-server" thing, read
  from the link by this test on its own: ShadowTLS v1/v2 or an unknown SIP003 plugin,
  gRPC's multi mode, REALITY that cannot be dialled (over another transport than
  tcp, with `pqv`, or a key that is not one), the XTLS vision flow), the reason
  naming that thing; a link with such a thing is never accepted (shadowsocks
  2022, the stream ciphers, Hysteria2, TUIC, gRPC and REALITY have clients now,
  each tested against mihomo or ss-server in tests/kernel/test_proxy_*.py);
- a link dae rejects is rejected (unless the corpus says accepting it is a
  harmless leniency);
- every link daetui accepts round-trips: parse, link(), parse gives an equal node;
- every subscription gives the nodes dae makes (SIP008 `dae_nodes`) or the
  nodes of the listed links, the refused ones reported with their reason.

The corpus is read where it is and never copied; without it these skip.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from daetui import redact
from daetui.outbound.links import LinkError, parse_link
from daetui.outbound.subscription import parse_subscription

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "realworld"


def _load(name: str) -> list[dict[str, Any]]:
    path = CORPUS / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


LINKS = _load("links.json")
BY_ID = {case["id"]: case for case in LINKS}
SUBSCRIPTIONS = _load("subscriptions.json")
ABSENT = pytest.param(None, marks=pytest.mark.skip(reason=f"the real-world corpus is not at {CORPUS}"))

@pytest.fixture(autouse=True)
def _forget_remembered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # parse_subscription remembers every link's secrets process-wide, so that logs mask them; the corpus's
    # (the word "example" is a password there) must not mask the text of tests that run later.
    monkeypatch.setattr(redact, "_known", dict(redact._known))
    monkeypatch.setattr(redact, "_by_prefix", dict(redact._by_prefix))



def _cases(cases: list[dict[str, Any]], key: str) -> list[Any]:
    return [pytest.param(c, id=c[key]) for c in cases] or [ABSENT]


# -- what a link asks for that daetui has no client for --------------------------------------------

# Stream ciphers no server here speaks (ss-server 3.3.5 serves every other one, and so does daetui).
STREAM_CIPHERS = {"rc4", "des-cfb", "table"}
# SIP003 plugins daetui runs (ShadowTLS v3; its v1 and v2 are refused, and no corpus link asks for them).
KNOWN_PLUGINS = {"obfs-local", "simple-obfs", "v2ray-plugin", "shadow-tls", "shadowtls", "sstls"}
NO_CLIENT_SCHEMES: dict[str, str] = {}  # hysteria2, hy2 and tuic have clients now


def _b64(text: str) -> str:
    s = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


def _ss_parts(body: str) -> tuple[str, str]:
    """(method, plugin name) of an ss:// link's body, read independently of daetui's parser."""
    body = body.partition("#")[0]
    if "@" not in body.partition("?")[0]:
        body = _b64(body.partition("?")[0]) + ("?" + body.partition("?")[2] if "?" in body else "")
    body, _, query = body.partition("?")
    plugin = parse_qs(query).get("plugin", [""])[0].split(";")[0]
    userinfo = unquote(body.rstrip("/").rpartition("@")[0])
    if ":" not in userinfo:
        userinfo = _b64(userinfo)
    return userinfo.partition(":")[0].lower(), plugin


def ss_things(method: str, plugin: str) -> list[str]:
    """What of a shadowsocks node (its method, its SIP003 plugin) daetui has no client for."""
    things = []
    if method in STREAM_CIPHERS:
        things.append("stream cipher")
    if plugin and plugin not in KNOWN_PLUGINS:
        things.append(plugin.lower())
    return things


def _reality_dialable(scheme: str, transport: str, params: dict[str, str]) -> bool:
    """vless over tcp with a real X25519 public key and short id, no post-quantum check: what daetui dials."""
    pbk, sid = params.get("pbk", ""), params.get("sid", "")
    try:
        key = base64.urlsafe_b64decode(pbk + "=" * (-len(pbk) % 4))
    except (binascii.Error, ValueError):
        key = b""
    return (scheme == "vless" and transport.lower() in ("", "tcp") and "pqv" not in params and len(key) == 32
            and len(sid) <= 16 and len(sid) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in sid))


def no_client_things(link: str) -> list[str]:
    """The words a refusal of this link must contain (any one): the things it asks for that have no client."""
    scheme, _, body = link.partition("://")
    scheme = scheme.lower()
    if scheme in NO_CLIENT_SCHEMES:
        return [NO_CLIENT_SCHEMES[scheme]]
    if scheme == "ss":
        return ss_things(*_ss_parts(body))
    if scheme in ("vless", "trojan"):
        params = {k: v[-1] for k, v in parse_qs(body.partition("#")[0].partition("?")[2]).items()}
        transport, security, flow = params.get("type", ""), params.get("security", ""), params.get("flow", "")
        mode = params.get("mode", "")
    elif scheme == "vmess":
        try:
            doc = json.loads(_b64(body.partition("#")[0]) or "{}")
        except ValueError:
            return []
        transport, security, flow = str(doc.get("net", "")), str(doc.get("tls", "")), ""
        mode = str(doc.get("type", "")) if transport.lower() in ("grpc", "gun") else ""
        params = {}
    else:
        return []
    things = []
    if transport.lower() in ("grpc", "gun") and mode.lower() not in ("", "gun", "none"):
        things.append("mode=" + mode.lower())  # gun is dialled (tested against mihomo); multi is not
    if security.lower() == "reality" and not _reality_dialable(scheme, transport, params):
        things.append("reality")
    if "vision" in flow.lower():
        things.append("vision")
    return things


def assert_refused_for(things: list[str], reason: str, what: str) -> None:
    """The refusal names one of the no-client things (and there is one)."""
    assert things, f"{what}: refused, but it asks for nothing daetui lacks a client for: {reason}"
    assert any(t in reason.lower() for t in things), f"{what}: refusal does not name {' or '.join(things)}: {reason}"


# -- links -------------------------------------------------------------------------------------------

def _field(node: Any, key: str) -> Any:
    assert hasattr(node, key), f"{type(node).__name__} has no {key!r}"
    value = getattr(node, key)
    return list(value) if isinstance(value, tuple) else value


def _parse(link: str) -> tuple[Any, str | None]:
    try:
        return parse_link(link), None
    except LinkError as e:
        return None, str(e)


@pytest.mark.parametrize("case", _cases(LINKS, "id"))
def test_link_as_dae_reads_it(case: dict[str, Any]) -> None:
    node, reason = _parse(case["link"])
    things = no_client_things(case["link"])
    if node is not None:
        assert not things, f"accepted a link asking for {things}, which daetui has no client for"
    if case["dae"] == "accept":
        if node is None:
            assert reason is not None
            assert_refused_for(things, reason, "dae accepts it")
            return
        wanted = case.get("expect") or {}
        got = {key: _field(node, key) for key in wanted}
        assert got == wanted
    elif case["dae"] == "reject" and not case.get("lenient_ok"):
        assert node is None, f"dae rejects it ({case.get('note', '')}); daetui made {node!r}"


@pytest.mark.parametrize("case", _cases(LINKS, "id"))
def test_accepted_link_round_trips(case: dict[str, Any]) -> None:
    node, reason = _parse(case["link"])
    if node is None:
        pytest.skip(f"refused: {reason}")
    again = parse_link(node.link())
    assert again == node
    assert again.link() == node.link()


# -- subscriptions -----------------------------------------------------------------------------------

_SUFFIX = re.compile(r" \(\d+\)$")


def _base_name(name: str) -> str:
    return _SUFFIX.sub("", name)  # a name met twice gets " (2)" from parse_subscription


@pytest.mark.parametrize("sub", _cases(SUBSCRIPTIONS, "file"))
def test_subscription_gives_the_nodes_dae_makes(sub: dict[str, Any]) -> None:
    parsed = parse_subscription((CORPUS / sub["file"]).read_bytes(), "rw")
    got = [node for _, node in parsed.nodes]
    if "links" in sub:
        wanted, refusals = [], []
        for link_id in sub["links"]:
            link = BY_ID[link_id]["link"]
            node, reason = _parse(link)
            if node is None:
                assert reason is not None
                assert_refused_for(no_client_things(link), reason, link_id)
                refusals.append(reason)
            else:
                wanted.append(node)
        assert parsed.format in ("links", "base64")
        assert [dataclass_name(n) for n in got] == [dataclass_name(n) for n in wanted]
        assert got == wanted
        assert len(parsed.errors) == len(refusals), parsed.errors
        for reason, error in zip(refusals, parsed.errors, strict=True):
            assert reason in error
        return
    assert parsed.format == "sip008"
    servers = json.loads((CORPUS / sub["file"]).read_text(encoding="utf-8"))["servers"]
    made = [_base_name(n.name) for n in got]
    refused = 0
    for server, name in zip(servers, sub["dae_nodes"], strict=True):
        things = ss_things(str(server.get("method", "")).lower(), str(server.get("plugin") or ""))
        if not things:
            assert name in made, f"server {name!r} not made: {parsed.errors}"
            made.remove(name)
            continue
        # Refused: its error (in server order) names what daetui has no client for.
        assert refused < len(parsed.errors), f"server {name!r} asks for {things} but was made"
        assert_refused_for(things, parsed.errors[refused], f"server {name!r}")
        refused += 1
    assert made == []
    assert len(parsed.errors) == refused, parsed.errors


def dataclass_name(node: Any) -> str:
    """The node's name, for a readable first difference before the full comparison."""
    return str(getattr(node, "name", ""))
