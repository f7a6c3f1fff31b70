"""The DNS controller's pure parts: the wire reader, the cache, the rules, the name book, the config."""

from __future__ import annotations

import ipaddress
import math
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daetui.config.errors import ConfigError
from daetui.config.load import parse_config
from daetui.control.names import NameBook
from daetui.dns.cache import CacheEntry, DnsCache
from daetui.dns.wire import (
    FLAG_TC,
    WireError,
    answer_from_template,
    error_for,
    parse_query,
    ttl_offsets,
)
from daetui.routing.dns_rules import DnsFacts


def q_wire(name: str = "WwW.Example.test", rdtype: str = "A", edns: bool = True, qid: int = 7) -> bytes:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    q.id = qid
    return q.to_wire()


def test_parse_query_reads_the_question_and_edns():
    q = parse_query(q_wire())
    assert (q.id, q.qname, q.qtype, q.qclass) == (7, "www.example.test", 1, 1)
    assert q.edns_payload >= 512
    assert q.key == parse_query(q_wire("www.EXAMPLE.test")).key  # case does not split the cache
    assert q.key != parse_query(q_wire(rdtype="AAAA")).key
    # Type 65 is "A" in ASCII: lower-casing the key must not turn it into 97.
    assert parse_query(q_wire(rdtype="HTTPS")).key != parse_query(q_wire(rdtype="TYPE97")).key
    assert parse_query(q_wire(edns=False)).max_udp() == 512


@pytest.mark.parametrize("wire, rcode", [
    (b"", None),
    (struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0), None),   # a response: never answered
    (struct.pack("!HHHHHH", 1, 5 << 11, 1, 0, 0, 0), 4),     # UPDATE: NOTIMP
    (struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0), 1),
    (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", 1),
    (struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", 1),
])
def test_malformed_queries_raise_with_the_rcode_to_answer(wire, rcode):
    with pytest.raises(WireError) as e:
        parse_query(wire)
    assert e.value.rcode == rcode
    reply = error_for(wire, rcode) if rcode is not None else None
    if reply is not None:
        assert struct.unpack("!HH", reply[:4])[1] & 0xF == rcode


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_wireerror(data):
    try:
        q = parse_query(data)
    except WireError:
        return
    assert q.question_end <= len(data)


def _answer(ttl: int = 300, n: int = 1) -> bytes:
    q = dns.message.from_wire(q_wire("www.example.test"))
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.test.", ttl, "IN", "A",
                                        *[f"203.0.113.{10 + i}" for i in range(n)]))
    r.use_edns(False)
    r.id = 0
    return r.to_wire()


def test_template_answers_count_ttl_down_and_take_the_clients_id_and_case():
    template = _answer(300)
    offsets = ttl_offsets(template)
    assert len(offsets) == 1
    q = parse_query(q_wire("WWW.example.TEST", qid=4242))
    out = dns.message.from_wire(answer_from_template(template, offsets, [300], 100, q))
    assert out.id == 4242 and out.answer[0].ttl == 200
    assert out.question[0].name.to_text() == "WWW.example.TEST."
    assert out.edns >= 0  # the client spoke EDNS, so does the answer
    gone = dns.message.from_wire(answer_from_template(template, offsets, [300], 400, q))
    assert gone.answer[0].ttl == 0  # never negative


def test_a_template_too_big_for_the_clients_udp_is_truncated():
    big = _answer(300, n=40)
    q = parse_query(q_wire(edns=False))
    offs = ttl_offsets(big)
    out = answer_from_template(big, offs, [300] * len(offs), 0, q)
    assert len(out) <= 512 and struct.unpack("!H", out[2:4])[0] & FLAG_TC
    whole = answer_from_template(big, offs, [300] * len(offs), 0, q, udp=False)
    assert len(dns.message.from_wire(whole).answer[0]) == 40


def _entry(key: bytes, expires: float) -> CacheEntry:
    return CacheEntry(key, key.decode(), 1, b"", [], [], 0.0, expires, "u", 0, False)


def test_cache_expires_and_evicts_least_recently_used():
    c = DnsCache(max_entries=2)
    c.put(_entry(b"a", 10))
    c.put(_entry(b"b", 10))
    assert c.get(b"a", 1) is not None  # a is now the most recent
    evicted = c.put(_entry(b"c", 10))
    assert [e.key for e in evicted] == [b"b"]
    assert c.get(b"a", 11) is None  # expired
    assert (c.hits, c.misses) == (1, 1)
    assert len(c.sweep(20)) == 1 and len(c) == 0


def test_name_book_deadlines():
    book = NameBook(max_addresses=2)
    a, b, c = (ipaddress.ip_address(f"203.0.113.{i}") for i in (1, 2, 3))
    assert book.learn(a, "x.example.test", 10) == (True, [])
    assert book.learn(a, "x.example.test", 20) == (False, [])  # renewed, nothing new for the kernel
    book.learn(a, "y.example.test", 5)
    book.learn(b, "z.example.test", math.inf)
    changed, emptied = book.expire(6)
    assert (changed, emptied) == ([a], [])
    assert book.names(a) == ["x.example.test"]
    changed, emptied = book.expire(21)
    assert emptied == [a] and book.names(b) == ["z.example.test"]
    book.learn(a, "x", 100)
    _, dropped = book.learn(c, "w", 100)
    assert dropped == [b]  # bounded like the kernel's map: the least recently named goes


def _dns_cfg(body: str) -> str:
    return f"[dns]\n{body}\n[routing]\nfallback = \"direct\"\n"


def test_dns_rules_compile_and_choose():
    cfg = parse_config(_dns_cfg("""
upstream = { a = "udp://192.0.2.53", b = "tls://dns.example.test" }
request = ["qname(suffix: ads.test) -> reject", "qtype(aaaa) && !qname(full: v6.test) -> b", "fallback: a"]
response = ["upstream(a) && ip(10.0.0.0/8) -> b", "fallback: accept"]
"""), "c.toml")
    rules = cfg.dns.compiled
    assert rules.request.choose(DnsFacts("x.ads.test", 1)).target == "reject"
    assert rules.request.choose(DnsFacts("v4.test", 28)).target == "b"
    assert rules.request.choose(DnsFacts("v6.test", 28)).target == "a"
    r = rules.response.choose(DnsFacts("x", 1, ips=(ipaddress.ip_address("10.1.2.3"),), upstream="a"))
    assert (r.target, r.index) == ("b", 0)
    assert rules.response.choose(DnsFacts("x", 1, ips=(), upstream="a")).target == "accept"


@pytest.mark.parametrize("body, where, says", [
    ('upstream = { a = "ftp://192.0.2.53" }', "3:", "unknown scheme 'ftp'"),
    ('upstream = { a = "doq://192.0.2.53" }', "3:", "write quic://"),
    ('upstream = { a = "udp://192.0.2.53" }\nrequest = ["qname(x.test) -> nowhere"]', "4:", "unknown target 'nowhere'"),
    ('upstream = { a = "udp://192.0.2.53" }\nrequest = ["qtype(bogus) -> a"]', "4:", "not a query type"),
    ('upstream = { a = "udp://192.0.2.53" }\nresponse = ["upstream(zz) -> accept"]', "4:", "unknown upstream 'zz'"),
    ('request = ["fallback: nowhere"]', "3:", "unknown target 'nowhere'"),
    ('cache_size = 0', "3:", "positive"),
])
def test_dns_config_errors_name_the_place(body, where, says):
    with pytest.raises(ConfigError) as e:
        parse_config("# dns\n" + _dns_cfg(body), "c.toml")
    text = str(e.value)
    assert f"c.toml:{where}" in text and says in text, text


def test_dns_flags_of_a_reject_reply():
    # reject: NOERROR, no answer, as dae answers it.
    from daetui.dns.wire import reply

    q = parse_query(q_wire())
    m = dns.message.from_wire(reply(q, 0))
    assert m.rcode() == dns.rcode.NOERROR and not m.answer and m.flags & dns.flags.QR


def test_an_upstream_answer_becomes_a_template_without_its_opt_record():
    from daetui.dns.wire import as_template

    q = dns.message.from_wire(q_wire("www.example.test"))
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.test.", 60, "IN", "A", "203.0.113.10"))
    r.use_edns(0, payload=1232)
    r.id = 999
    t = as_template(r.to_wire())
    m = dns.message.from_wire(t)
    assert m.id == 0 and m.edns == -1 and m.answer[0].ttl == 60
    r.id = 0
    r.use_edns(False)
    assert t == r.to_wire()  # the same bytes dnspython renders without EDNS
