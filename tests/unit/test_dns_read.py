"""Reading an upstream's answer: `wire.read_answer` (the common answer, only what is needed) against dnspython.

Whatever `read_answer` takes, the controller must make of it exactly what it makes when dnspython
reads the whole message; whatever dnspython rejects, `read_answer` must leave to it (None), so a
malformed answer is still counted and dropped.
"""

from __future__ import annotations

import struct
from unittest import mock

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from daetui.config.model import DnsConfig
from daetui.dns.controller import DnsController, question_bytes
from daetui.dns.upstream import UpstreamRoute
from daetui.dns.wire import answers_question, label_text, read_answer

QID = 4242


def controller() -> DnsController:
    cfg = DnsConfig(upstream={"u": "udp://127.0.0.1:53"}, request_fallback="u")
    return DnsController(cfg, route=lambda *_: UpstreamRoute("direct", "fallback"), feed=lambda *_: None)


C = controller()


def response(qname: str, qtype: str = "A", answer: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
             authority: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
             additional: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
             rcode: int = dns.rcode.NOERROR, edns: bool = True) -> bytes:
    """An upstream's answer to our query for (qname, qtype): records as (owner, ttl, type, rdata text)."""
    q = dns.message.make_query(qname, qtype, use_edns=0 if edns else False)
    q.id = QID
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    for section, records in ((r.answer, answer), (r.authority, authority), (r.additional, additional)):
        for owner, ttl, rtype, text in records:
            section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, text))
    return r.to_wire()


def raw(records: list[tuple[str, int, str, str]]) -> bytes:
    """Records rendered one by one, uncompressed, in this order (dnspython merges an rrset's records)."""
    out = b""
    for owner, ttl, rtype, text in records:
        rd = dns.rdata.from_text("IN", rtype, text)
        data = rd.to_wire()
        out += dns.name.from_text(owner).to_wire() + struct.pack("!HHIH", dns.rdatatype.from_text(rtype), 1, ttl,
                                                                  len(data)) + data
    return out


def handmade(qname: str, qtype: int, answer: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
             authority: list[tuple[str, int, str, str]] = (),  # type: ignore[assignment]
             opt: bytes | None = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0), flags: int = 0x8180) -> bytes:
    ar = 1 if opt is not None else 0
    return (struct.pack("!HHHHHH", QID, flags, 1, len(answer), len(authority), ar) + question_bytes(qname, qtype)
            + raw(answer) + raw(authority) + (opt or b""))


def read_both(data: bytes, qname: str, qtype: int) -> tuple[object, object]:
    """What `_read` makes of `data` with read_answer, and with dnspython alone ("error" when it raises)."""
    def run() -> object:
        try:
            return C._read(data, qname, qtype)
        except (dns.exception.DNSException, ValueError, struct.error):
            return "error"

    light = run()
    with mock.patch("daetui.dns.controller.read_answer", lambda _data: None):
        whole = run()
    return light, whole


def read_light(data: bytes, qtype: int) -> bool:
    """Does read_answer (and the controller after it) take `data` without dnspython?"""
    got = read_answer(data)
    return got is not None and C._read_records(got, qtype) is not None


A, AAAA, CNAME, NS, TXT, HTTPS = 1, 28, 5, 2, 16, 65
SOA = "example.test. hostmaster.example.test. 1 3600 600 86400 60"

# (qname, qtype, answer): read without dnspython.
COMMON = {
    "a": ("www.example.test", A, response("www.example.test", "A", [("www.example.test.", 300, "A", "192.0.2.1")])),
    "no edns": ("www.example.test", A, response("www.example.test", "A", [("www.example.test.", 30, "A", "192.0.2.1")],
                                                 edns=False)),
    "aaaa": ("v6.example.test", AAAA, response("v6.example.test", "AAAA", [
        ("v6.example.test.", 120, "AAAA", "2001:db8::1"), ("v6.example.test.", 60, "AAAA", "::ffff:192.0.2.9")])),
    "cname chain, compressed, ns and glue": ("www.example.test", A, response(
        "www.example.test", "A",
        [("www.example.test.", 600, "CNAME", "cdn.example.net."),
         ("cdn.example.net.", 500, "CNAME", "edge.example.net."),
         ("edge.example.net.", 40, "A", "198.51.100.1"), ("edge.example.net.", 40, "A", "198.51.100.2")],
        authority=[("example.net.", 3600, "NS", "ns1.example.net.")],
        additional=[("ns1.example.net.", 3600, "A", "203.0.113.53"),
                    ("ns1.example.net.", 3600, "AAAA", "2001:db8::53")])),
    "nxdomain": ("nope.example.test", A, response("nope.example.test", "A",
                                                  authority=[("example.test.", 900, "SOA", SOA)],
                                                  rcode=dns.rcode.NXDOMAIN)),
    "nodata": ("www.example.test", AAAA, response("www.example.test", "AAAA",
                                                  authority=[("example.test.", 30, "SOA", SOA)])),
    "https nodata": ("www.example.test", HTTPS, response("www.example.test", "HTTPS",
                                                        authority=[("example.test.", 30, "SOA", SOA)])),
    "servfail": ("www.example.test", A, response("www.example.test", "A", rcode=dns.rcode.SERVFAIL)),
    "extended rcode": ("www.example.test", A, response("www.example.test", "A", rcode=dns.rcode.BADVERS)),
    "mixed case": ("www.example.test", A, response("WwW.ExAmple.TEST", "A", [
        ("WWW.example.TEST.", 300, "CNAME", "Edge.Example.NET."), ("edge.EXAMPLE.net.", 300, "A", "192.0.2.7")])),
    # Handmade, in orders dnspython does not write: duplicates, singletons twice, a TTL past 2^31, a loop.
    "duplicates and a huge ttl": ("www.example.test", A, handmade("www.example.test", A, [
        ("www.example.test.", 300, "A", "192.0.2.1"), ("www.example.test.", 2**31 + 5, "A", "192.0.2.2"),
        ("www.example.test.", 100, "A", "192.0.2.1")])),
    "two cnames for one name": ("www.example.test", A, handmade("www.example.test", A, [
        ("www.example.test.", 300, "CNAME", "first.example.test."), ("first.example.test.", 300, "A", "192.0.2.1"),
        ("www.example.test.", 200, "CNAME", "second.example.test."), ("second.example.test.", 300, "A", "192.0.2.2")])),
    "two soas": ("nope.example.test", A, handmade("nope.example.test", A, authority=[
        ("example.test.", 900, "SOA", SOA), ("other.test.", 5, "SOA", SOA.replace(" 60", " 7")),
        ("example.test.", 700, "SOA", SOA.replace(" 60", " 800"))], flags=0x8183)),
    "a cname loop": ("a.example.test", A, handmade("a.example.test", A, [
        ("a.example.test.", 300, "CNAME", "b.example.test."), ("b.example.test.", 300, "CNAME", "a.example.test."),
        ("b.example.test.", 300, "A", "192.0.2.1")])),
    "odd bytes in a cname": ("www.example.test", A, handmade("www.example.test", A, [
        ("www.example.test.", 300, "CNAME", r"we\@ird\(na\)me\$\;\"x\255\000.example.test."),
        (r"we\@ird\(na\)me\$\;\"x\255\000.example.test.", 300, "A", "192.0.2.1")])),
    "the root": (".", A, response(".", "A", authority=[(".", 86400, "SOA", SOA)])),
}


@pytest.mark.parametrize("case", COMMON)
def test_the_common_answers_are_read_without_dnspython_as_dnspython_reads_them(case: str):
    qname, qtype, data = COMMON[case]
    assert read_light(data, qtype), case
    light, whole = read_both(data, qname, qtype)
    assert whole != "error" and light == whole


def test_what_the_controller_makes_of_a_cname_chain():
    qname, qtype, data = COMMON["cname chain, compressed, ns and glue"]
    got = C._read(data, qname, qtype)
    assert [str(ip) for ip in got.ips] == ["198.51.100.1", "198.51.100.2"] == list(got.texts)
    assert got.names == ("www.example.test", "cdn.example.net", "edge.example.net")
    assert got.lifetime == 40 and got.ttls == [600, 500, 40, 40, 3600, 3600, 3600]
    assert not got.negative and dns.message.from_wire(got.template).edns == -1


def _with_option() -> bytes:
    r = dns.message.make_response(dns.message.make_query("www.example.test", "A"))
    r.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"0123456789abcdef")])
    return r.to_wire()


# (qname, qtype, answer): read by dnspython, as before.
OTHER = {
    "a txt answer": ("t.example.test", TXT,
                     response("t.example.test", "TXT", [("t.example.test.", 60, "TXT", '"hello"')])),
    "a cname asked for": ("www.example.test", CNAME, response("www.example.test", "CNAME", [
        ("www.example.test.", 60, "CNAME", "x.example.test.")])),
    "an ns asked for": ("example.test", NS, response("example.test", "NS", [("example.test.", 60, "NS", "ns.test.")])),
    "an edns option": ("www.example.test", A, _with_option()),
    "a record after the opt one": ("www.example.test", A, response("www.example.test", "A")[:10] + b"\x00\x02"
                                   + response("www.example.test", "A")[12:] + raw([("x.test.", 60, "A", "192.0.2.3")])),
    # An A record of class 2 (CSNET): dnspython knows no such A, and reads it as opaque data.
    "an a record of another class": ("www.example.test", A, handmade("www.example.test", A, opt=None)[:7] + b"\x01"
                                     + handmade("www.example.test", A, opt=None)[8:]
                                     + b"\xc0\x0c\x00\x01\x00\x02\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"),
}


@pytest.mark.parametrize("case", OTHER)
def test_anything_else_is_left_to_dnspython(case: str):
    qname, qtype, data = OTHER[case]
    assert not read_light(data, qtype), case
    light, whole = read_both(data, qname, qtype)
    assert light == whole


def test_an_address_record_of_another_class_names_no_address():
    qname, qtype, data = OTHER["an a record of another class"]
    got = C._read(data, qname, qtype)  # it raised AttributeError (not a DNS error: no SERVFAIL, a logged traceback)
    assert got.ips == () and got.texts == ("\\# 4 c0000201",)


def _malformed() -> list[tuple[str, bytes]]:
    _, _, good = COMMON["a"]
    head = handmade("www.example.test", A, [("www.example.test.", 300, "A", "192.0.2.1")], opt=None)
    q_end = 12 + len(question_bytes("www.example.test", A))
    rec = head[q_end:]
    return [
        ("trailing junk", good + b"\x00"),
        ("a short address", head[:-6] + b"\x00\x03" + b"\xc0\x00\x02"),
        ("a forward pointer", head[:q_end] + b"\xc0\xff" + rec[18:]),
        ("a pointer to itself", head[:q_end] + struct.pack("!H", 0xC000 | q_end) + rec[18:]),
        ("a pointer into the header", head[:q_end] + b"\xc0\x02" + rec[18:]),
        ("a bad label type", head[:q_end] + b"\x80" + rec[1:]),
        ("an opt in the answer section", struct.pack("!HHHHHH", QID, 0x8180, 1, 1, 0, 0) + head[12:q_end]
         + b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)),
        ("two opt records", good[:10] + b"\x00\x02" + good[12:] + good[-11:]),
        ("an opt not owned by the root", good[:-11] + b"\x01x\x00" + good[-10:]),
        ("a cname running past its data", handmade("www.example.test", A, [
            ("www.example.test.", 300, "CNAME", "x.example.test.")], opt=None)[:-1]),
        ("more records than there are", good[:6] + b"\x00\x05" + good[8:]),
    ]


@pytest.mark.parametrize("case,data", _malformed())
def test_malformed_answers_are_left_to_dnspython_which_rejects_them(case: str, data: bytes):
    assert read_answer(data) is None, case
    assert read_both(data, "www.example.test", A) == ("error", "error")


def test_every_cut_of_an_answer_reads_as_dnspython_reads_it():
    qname, qtype, data = COMMON["cname chain, compressed, ns and glue"]
    for n in range(len(data)):
        light, whole = read_both(data[:n], qname, qtype)
        assert light == whole, n


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(sorted(COMMON)), st.data())
def test_any_change_to_an_answer_reads_as_dnspython_reads_it(case: str, data: st.DataObject):
    qname, qtype, good = COMMON[case]
    wire = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.sampled_from([0, 1, 0xC0, 0x3F, 0x40, 0xFF, wire[at] ^ 1, wire[at] + 1 & 0xFF]))
    wire = bytes(wire[:data.draw(st.integers(len(wire) - 3, len(wire)))])
    # Only an answer to our question gets this far (Upstream checks ID and question first).
    assume(answers_question(wire, QID, question_bytes(qname, qtype)))
    light, whole = read_both(wire, qname, qtype)
    assert light == whole


def _label_text_before(labels: list[bytes]) -> str:
    out = []
    for lab in labels:
        out.append("".join(chr(b).lower() if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) else f"\\{b:03d}"
                           for b in lab))
    return ".".join(out)


@given(st.lists(st.one_of(st.binary(min_size=1, max_size=63),
                          st.text("abcXYZ019-_.\\@", min_size=1, max_size=20).map(str.encode)), max_size=6))
def test_label_text_writes_a_name_as_it_did(labels: list[bytes]):
    assert label_text(labels) == _label_text_before(labels)
