"""The channel between the main process and a relay worker (workerwire.py), and what travels on it.

A worker dials through the node objects the main process sends it pickled:
every kind of node must arrive equal and give a dialer there.
"""

from __future__ import annotations

import asyncio
import pickle
import socket

import pytest

from daetui.control.workerwire import MAX_MESSAGE, Channel
from daetui.outbound.direct import DirectDialer
from daetui.outbound.links import parse_link

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"
LINKS = [
    "ss://YWVzLTEyOC1nY206cGFzcw@198.51.100.7:8388#hk1",
    "ss://2022-blake3-aes-128-gcm:AAAAAAAAAAAAAAAAAAAAAA%3D%3D@192.0.2.1:1",
    "ss://YWVzLTEyOC1nY206dGVzdA@192.168.100.1:8888/?plugin=obfs-local%3Bobfs%3Dhttp#Example2",
    "ss://YWVzLTI1Ni1nY206cHc@[2001:db8::1]:443/?plugin=v2ray-plugin%3Btls%3Bhost%3Dws.example%3Bpath%3D%2Fws#v6",
    "socks5://user:pass@127.0.0.1:1080",
    "socks4://h.example:1080#a%20b",
    "https://alice:lab-secret@203.0.113.11:8443?sni=proxy.lab.test#tls",
    "trojan://pw@h.test:443?sni=s.test&type=grpc&serviceName=%2Fcustom%2FTun#t",
    "trojan://pw@h.test:443?sni=s.test&type=ws&host=cdn.test&path=%2Ftj%3Fed%3D2048#n",
    f"vless://{UID}@h.test:443?security=reality&pbk=3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK08&sid=0123abcd&sni=www.example.com",
    f"vless://{UID}@h.test:443?encryption=none&security=tls&sni=s.test&type=grpc&serviceName=my.Svc&mode=gun#v",
    "vmess://eyJ2IjogIjIiLCAicHMiOiAibm9kZTEiLCAiYWRkIjogInZtLmV4YW1wbGUuY29tIiwgInBvcnQiOiAiNDQzIiwgImlkIjogImI4Mz"
    "EzODFkLTYzMjQtNGQ1My1hZDRmLThjZGE0OGIzMDgxMSIsICJhaWQiOiAiMCIsICJuZXQiOiAidGNwIiwgInR5cGUiOiAibm9uZSIsICJ0bHMi"
    "OiAidGxzIn0=",
    "hysteria2://pw@203.0.113.5:443/?obfs=salamander&obfs-password=gawrgura&insecure=0",
    f"tuic://{UID}:pw@203.0.113.12:443?sni=t.example.com",
    "anytls://pw@h.example:443/?alpn=h2%2Chttp%2F1.1&idleSessionTimeout=90&minIdleSession=2#tuned",
    "socks5://203.0.113.11:1080 -> ss://YWVzLTEyOC1nY206cGFzcw@198.51.100.7:8388",
]


@pytest.mark.parametrize("link", LINKS)
def test_every_kind_of_node_reaches_a_worker_equal_and_dials_there(link):  # type: ignore[no-untyped-def]
    node = parse_link(link, "n")
    back = pickle.loads(pickle.dumps(node, protocol=pickle.HIGHEST_PROTOCOL))
    assert back == node and type(back) is type(node)
    assert back.dialer(DirectDialer(mark=0)) is not None


async def _pair() -> tuple[Channel, Channel, list, list, asyncio.Event]:  # type: ignore[type-arg]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got_a: list = []   # type: ignore[type-arg]
    got_b: list = []   # type: ignore[type-arg]
    lost = asyncio.Event()
    ca = await Channel.open(a, got_a.append, lambda exc: lost.set())
    cb = await Channel.open(b, got_b.append, lambda exc: None)
    return ca, cb, got_a, got_b, lost


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_messages_arrive_whole_in_order_both_ways_whatever_their_size() -> None:
    ca, cb, got_a, got_b, _ = await _pair()
    big = ("node", b"\x00" * (3 << 20))
    sent = [("open", i, ("192.0.2.10", 40000 + i), ("203.0.113.10", 443)) for i in range(2000)]
    for i, m in enumerate(sent):
        ca.send(m)
        if i == 1000:
            ca.send(big)
    cb.send(("plan", 1, 7, "dial", None, "203.0.113.10", 443, None, False))
    await _until(lambda: len(got_b) == 2001 and len(got_a) == 1)
    assert got_b[:1001] == sent[:1001] and got_b[1001] == big and got_b[1002:] == sent[1001:]
    assert got_a == [("plan", 1, 7, "dial", None, "203.0.113.10", 443, None, False)]
    ca.close()
    cb.close()


async def test_the_other_end_closing_is_told_and_sending_after_it_is_dropped() -> None:
    ca, cb, _, got_b, lost = await _pair()
    cb.close()
    await asyncio.wait_for(lost.wait(), 5)
    assert ca.closed
    ca.send(("done", 1, 0, 0, "copy", None))   # no error: the worker is gone, so is its flow
    assert got_b == []


async def test_a_length_over_the_bound_closes_the_channel_unread() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    got: list = []   # type: ignore[type-arg]
    lost = asyncio.Event()
    await Channel.open(a, got.append, lambda exc: lost.set())
    b.sendall((MAX_MESSAGE + 1).to_bytes(4, "big") + b"x" * 100)
    await asyncio.wait_for(lost.wait(), 5)
    assert got == []
    b.close()
