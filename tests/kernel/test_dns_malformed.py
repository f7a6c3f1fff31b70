"""Bad DNS in, good DNS out: malformed queries and lying upstreams cost nothing but themselves.

Malformed queries from the LAN (UDP and TCP) are dropped or answered
FORMERR/NOTIMP and counted; an upstream that sends garbage, a cut answer,
the wrong ID or question, or nothing at all, is counted and followed by the
next upstream, or by SERVFAIL within a bounded time when there is none.
After all of it the controller still answers correctly, and nothing bad
reached the cache.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest
from helpers import addresses, lan_connect, lan_query, lan_socket, plane_in_lab, snapshot, upstream_rows, wan_udp

from daetui.lab.topology import ADDR
from testkit.configs import ONE_UPSTREAM, dns_config
from testkit.peers.dnsmasq import dns_peers

pytestmark = pytest.mark.kernel

UNBOUND4 = ADDR.dns4[0]
LIAR = ADDR.hosts4[2]  # a "DNS server" of this test's own, in the wan namespace


@pytest.fixture(scope="module")
def peers(lab):
    with dns_peers(lab) as p:
        yield p


class Liar:
    """A UDP DNS server that answers each query in the way `mode` says."""

    def __init__(self, lab) -> None:
        self.sock = wan_udp(lab, LIAR, 53)
        self.sock.settimeout(0.2)
        self.mode = "silent"
        self.seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            self.seen += 1
            q = dns.message.from_wire(data)
            good = dns.message.make_response(q)
            good.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "198.51.100.99"))
            wire = good.to_wire()
            if self.mode == "silent":
                continue
            if self.mode == "garbage":
                # Its header and question are right; what follows is noise.
                qend = 12 + len(q.question[0].name.to_wire()) + 4
                out = wire[:6] + b"\x00\x05" + wire[8:qend] + bytes((i * 91) & 0xFF for i in range(200))
            elif self.mode == "cut":
                out = wire[:-3]  # the last record runs past the end
            elif self.mode == "wrong-id":
                out = struct.pack("!H", (q.id + 1) & 0xFFFF) + wire[2:]
            elif self.mode == "wrong-question":
                other = dns.message.make_response(dns.message.make_query("other.example.test", "A", id=q.id))
                out = other.to_wire()
            else:
                out = wire
            self.sock.sendto(out, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def liar(lab):
    lie = Liar(lab)
    yield lie
    lie.close()


def raw_udp(lab, payload: bytes, server: str = UNBOUND4, timeout: float = 0.5) -> bytes | None:
    s = lan_socket(lab, server, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(payload, (server, 53))
        return s.recv(4096)
    except TimeoutError:
        return None
    finally:
        s.close()


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


QNAME = b"\x03www\x07example\x04test\x00"
TAIL = b"\x00\x01\x00\x01"
MALFORMED = {
    "empty": b"",
    "one byte": b"\x12",
    "header only": header(),
    "a response": header(flags=0x8180) + QNAME + TAIL,
    "opcode update": header(flags=5 << 11) + QNAME + TAIL,
    "two questions": header(qd=2) + QNAME + TAIL + QNAME + TAIL,
    "no question": header(qd=0),
    "label type 01": header() + b"\x40" + b"a" * 64 + b"\x00" + TAIL,
    "name over 255 bytes": header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00" + TAIL,
    "pointer in question": header() + b"\xc0\x0c" + TAIL,
    "label past the end": header() + b"\x20abc",
    "no type and class": header() + QNAME,
    "answer in a query": header(an=1) + QNAME + TAIL,
    "additional past the end": header(ar=1) + QNAME + TAIL + b"\x00\x00\x29",
    "noise": bytes((i * 37) & 0xFF for i in range(300)),
}


def test_malformed_queries_are_counted_and_answered_only_with_errors(lab, peers, tmp_path: Path):
    cfg = dns_config(ONE_UPSTREAM)
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        for what, payload in MALFORMED.items():
            r = raw_udp(lab, payload)
            if r is not None:
                qid, flags = struct.unpack("!HH", r[:4])
                assert flags & 0x8000 and flags & 0xF in (dns.rcode.FORMERR, dns.rcode.NOTIMP), what
                assert qid == struct.unpack("!H", payload[:2])[0], what
        assert raw_udp(lab, MALFORMED["a response"]) is None  # never answer an answer
        assert struct.unpack("!H", raw_udp(lab, MALFORMED["opcode update"])[2:4])[0] & 0xF == dns.rcode.NOTIMP
        assert raw_udp(lab, MALFORMED["two questions"])[3] & 0xF == dns.rcode.FORMERR
        # Over TCP: a bad message ends the connection; the next connection is served.
        s = lan_connect(lab, UNBOUND4, 53, timeout=3)
        bad = MALFORMED["name over 255 bytes"]
        s.sendall(struct.pack("!H", len(bad)) + bad)
        got = s.recv(4096)
        assert got == b"" or got[5] & 0xF == dns.rcode.FORMERR
        s.close()
        # A length prefix promising more than comes, then silence: closed, not waited on forever.
        s = lan_connect(lab, UNBOUND4, 53, timeout=15)
        s.sendall(b"\x10\x00" + b"abc")
        t0 = time.monotonic()
        assert s.recv(4096) == b""
        assert time.monotonic() - t0 < 12
        s.close()

        counters = snapshot(runner).dns.counters
        assert counters.malformed >= len(MALFORMED) + 1
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["203.0.113.10"]
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test", tcp=True)) == ["203.0.113.10"]
        assert [r.name for r in snapshot(runner).dns.cache] == ["www.example.test"]


def test_lying_upstream_is_passed_over_and_counted(lab, peers, liar, tmp_path: Path):
    cfg = dns_config(f"""
[dns]
upstream = {{ liar = "udp://{LIAR}:53", ub = "udp://{UNBOUND4}:53" }}
upstream_timeout = "1s"
request = ["fallback: liar"]
[routing]
fallback = "direct"
""")
    names = {"garbage": "www.example.test", "cut": "api.example.test", "wrong-id": "alias.example.test",
             "wrong-question": "cn.lab.test", "silent": "dns.lab.test"}
    want = {"www.example.test": ["203.0.113.10"], "api.example.test": ["203.0.113.11"],
            "alias.example.test": ["203.0.113.10"], "cn.lab.test": ["203.0.113.11"],
            "dns.lab.test": ["203.0.113.53"]}
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        for mode, name in names.items():
            liar.mode = mode
            t0 = time.monotonic()
            r = lan_query(lab, UNBOUND4, name)
            took = time.monotonic() - t0
            # The liar's answer never reaches the client: the next upstream's does.
            assert addresses(r) == want[name], mode
            assert took < 4.0, (mode, took)  # one upstream_timeout, then ub
        ups = upstream_rows(runner)
        assert ups["liar"].errors == 5 and ups["liar"].queries == 5
        assert ups["liar"].timeouts >= 3  # silent, wrong id and wrong question end in the timeout
        assert ups["liar"].mismatched == 2  # wrong id, wrong question
        assert snapshot(runner).dns.counters.bad_answers == 2  # garbage and cut
        assert all("198.51.100.99" not in r.answers for r in snapshot(runner).dns.cache)
        liar.mode = "good"
        assert addresses(lan_query(lab, UNBOUND4, "short.example.test")) == ["198.51.100.99"]


def test_no_upstream_answers_servfail_in_bounded_time(lab, peers, liar, tmp_path: Path):
    cfg = dns_config(f"""
[dns]
upstream = {{ liar = "udp://{LIAR}:53" }}
upstream_timeout = "1s"
request = ["fallback: liar"]
[routing]
fallback = "direct"
""")
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        liar.mode = "silent"
        t0 = time.monotonic()
        r = lan_query(lab, UNBOUND4, "www.example.test")
        took = time.monotonic() - t0
        assert r.rcode() == dns.rcode.SERVFAIL
        assert 0.9 < took < 4.0, took  # upstream_timeout, then SERVFAIL
        assert snapshot(runner).dns.counters.servfail == 1
        assert not snapshot(runner).dns.cache  # a failure is not cached
        liar.mode = "good"
        assert addresses(lan_query(lab, UNBOUND4, "www.example.test")) == ["198.51.100.99"]
