"""Secrets masked (daetui.redact): the shapes of proxy links and tokens, and the secrets of the config's links
wherever a message quotes them."""

from __future__ import annotations

import base64
import json

import pytest

from daetui.control.connections import ConnectionTable
from daetui.redact import link_secrets, redact, remember_link

PASSWORD = "Sup3r-S3cret-pw"
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SS = "ss://" + base64.urlsafe_b64encode(f"aes-256-gcm:{PASSWORD}".encode()).decode().rstrip("=") + \
     "@203.0.113.10:8388#my%20node"
VMESS = "vmess://" + base64.b64encode(json.dumps({"v": "2", "ps": "n", "add": "203.0.113.10", "port": "443",
                                                  "id": UUID}).encode()).decode()


@pytest.mark.parametrize("text, shown", [
    (SS, "ss://***@203.0.113.10:8388#my%20node"),
    (f"vless://{UUID}@203.0.113.10:443?security=tls&sni=a.example#v",
     "vless://***@203.0.113.10:443?security=***&sni=***#v"),
    (VMESS, "vmess://***"),
    (f"trojan://{PASSWORD}@[2001:db8::1]:443", "trojan://***@[2001:db8::1]:443"),
    (f"socks5://alice:{PASSWORD}@203.0.113.10:1080 refused", "socks5://***@203.0.113.10:1080 refused"),
    ("fetch https://sub.example.com/api/v1/sub?token=tK9f2LqZx81mWvP0 failed",
     "fetch https://sub.example.com/***?token=*** failed"),
    (f"id '{UUID[:-1]}' is not a UUID", "id '***' is not a UUID"),
    (f'{{"password": "{PASSWORD}", "method": "aes-256-gcm"}}', '{"password": "***", "method": "aes-256-gcm"}'),
    ("-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----", "***"),
    # What is no secret stays as it is.
    ("tcp 192.0.2.10:40000 -> 203.0.113.10:80 (www.example.com) by #3 dip(203.0.113.10) -> proxy [kernel]", None),
    ("http://cp.cloudflare.com", None),
    ("node s5: IPv4 check failed: connect to 203.0.113.10:1081: Connection refused", None),
])
def test_shapes_of_secrets_are_masked(text, shown):
    assert redact(text) == (text if shown is None else shown)


def test_the_secrets_of_a_remembered_link_are_masked_however_quoted():
    typo = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2x"
    remember_link(f"vless://{typo}@203.0.113.10:443#typo")
    remember_link(SS)
    remember_link("https://sub.example.com/link/Zq81abcdEF?flag=clash")
    assert redact(f"bad id {typo!r}") == "bad id '***'"
    assert redact(f"wrong password {PASSWORD} for aes-256-gcm") == "wrong password *** for aes-256-gcm"
    assert redact("token Zq81abcdEF expired") == "token *** expired"
    assert redact("subscribe to the list") == "subscribe to the list"   # words are not secrets
    remember_link("trojan://Another-Pass@203.0.113.10:443?sni=www.example.com&obfs-password=Obfs-Secret-1#t")
    assert redact("sniffed www.example.com, Obfs-Secret-1") == "sniffed www.example.com, ***"  # a name is no secret


def test_link_secrets_take_the_parts_apart():
    assert PASSWORD in link_secrets(SS) and "aes-256-gcm" not in link_secrets(SS)
    assert UUID in link_secrets(VMESS)
    socks = link_secrets(f"socks5://alice-admin:{PASSWORD}@203.0.113.10:1080")
    assert PASSWORD in socks and "alice-admin" not in socks   # a user name is shown, as an address is


def test_a_connection_error_keeps_no_secret():
    table = ConnectionTable()
    c = table.add(proto="tcp", src=("192.0.2.10", 1), dst=("203.0.113.10", 80), rule_index=None, rule="fallback",
                  outbound="proxy", stage="kernel")
    table.finish(c, f"dial trojan://{PASSWORD}@203.0.113.10:443 failed")
    assert table.snapshot()[0].error == "dial trojan://***@203.0.113.10:443 failed"


def test_the_shapes_are_found_wherever_the_unfiltered_scan_finds_them():
    """secret_spans tries each pattern only where its fixed part is: on texts built of the shapes' pieces (and
    of what is near them: a long s, which (?i) matches as an s; the Kelvin sign), it finds what trying every
    pattern on every text finds."""
    import random

    from daetui import redact as r

    def every_pattern(text: str) -> list[tuple[int, int]]:
        spans = r._known_spans(text)
        for m in r._URL.finditer(text):
            spans += r._url_spans(m)
        spans += [(m.start(), m.end()) for m in r._UUID.finditer(text)]
        spans += [(m.start(1), m.end(1)) for m in r._KEYED.finditer(text)]
        spans += [(m.start(), m.end()) for m in r._PEM.finditer(text)]
        return r.merge(spans)

    pieces = ["ss://", "vmess://eyJ", "trojan://pw@h:443", "https://x.y/sub?token=abc", "-", "\u017fecret=",
              "SECRET:", "password = x", "Passwd:", "PSK=", "UUID:", "private_\u212aey=", "obfs-password=",
              "-----BEGIN RSA PRIVATE KEY-----", "12345678-1234-1234-1234-123456789012",
              "deadbeef-dead-beef-dead-beefd",
              "\"", "'", ":", "=", " ", "abc", "/", "?", "&", "#", "\u0130", "uu\u0131d=", "pr\u0130vate_key="]
    rng = random.Random(15)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        assert r.secret_spans(text) == every_pattern(text), text
