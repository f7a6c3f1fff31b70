"""What the controller puts into the kernel's DNS answers, and what retires them (dns/kernel_answers.py).

The kernel side (the reply it builds, what it hands over) is tested in the lab:
tests/kernel/test_dns_kernel_answers.py.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import dns.message
import dns.rrset

from daetui.control.names import MAX_NAMES_PER_ADDRESS, NameBook
from daetui.dns.cache import CacheEntry
from daetui.dns.kernel_answers import KernelAnswers, kernel_entry
from daetui.dns.wire import as_template, parse_query, ttl_offsets


class FakeMap:
    """The kernel program's DNS side, in memory."""

    def __init__(self) -> None:
        self.conf: tuple[bool, int] = (False, 0)
        self.entries: dict[tuple[bytes, int, int], dict[str, Any]] = {}

    def set_dns_conf(self, enabled: bool, epoch: int) -> None:
        self.conf = (enabled, epoch)
        self.conf_writes = getattr(self, "conf_writes", 0) + 1

    def put_dns_answer(self, qname: bytes, qtype: int, qclass: int, **kw: Any) -> None:
        self.entries[(qname, qtype, qclass)] = kw

    def clear_dns_answers(self) -> None:
        self.entries.clear()

    def dns_stats(self) -> dict[str, int]:
        return {}


def answer(name: str = "www.example.test", rdtype: str = "A", records: list[str] | None = None,
           ttl: int = 300, extra_type: str | None = None) -> tuple[CacheEntry, Any]:
    q = dns.message.make_query(name, rdtype)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", rdtype, *(records or ["203.0.113.10"])))
    if extra_type is not None:
        r.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", extra_type,
                                            "A 13 2 300 20300101000000 20200101000000 1 example.test. AAAA"))
    template = as_template(r.to_wire())
    assert template is not None
    offsets = ttl_offsets(template)
    query = parse_query(q.to_wire())
    e = CacheEntry(query.key, name, query.qtype, template, offsets, [ttl] * len(offsets), 100.0, 100.0 + ttl, "u", 0,
                   False, (ipaddress.ip_address("203.0.113.10"),))
    return e, query


def test_an_answer_goes_in_as_the_controller_would_send_it():
    e, q = answer()
    parts = kernel_entry(e, q, 101.0)
    assert parts is not None
    qname, flags, counts, rest, offsets = parts
    assert qname == b"\x03www\x07example\x04test\x00"
    assert counts == (1, 0, 0)
    assert rest == e.template[q.question_end:]
    assert [struct.unpack_from("!I", rest, o)[0] for o in offsets] == [300]
    assert not flags & 0x0100 and flags & 0x8000


def test_what_never_goes_in():
    e, q = answer()
    assert kernel_entry(e, q, e.expires) is None                       # stale (optimistic_cache is the controller's)
    e0, q0 = answer(ttl=0)
    assert kernel_entry(e0, q0, 100.0) is None                         # TTL 0
    sig, qs = answer(extra_type="RRSIG")
    assert kernel_entry(sig, qs, 101.0) is None                        # DNSSEC records
    many, qm = answer(records=[f"203.0.113.{i}" for i in range(17)])
    assert kernel_entry(many, qm, 101.0) is None                       # more records than TTL slots
    big, qb = answer(rdtype="TXT", records=['"' + "x" * 250 + '"', '"' + "y" * 250 + '"'])
    assert kernel_entry(big, qb, 101.0) is None                        # past 512 bytes with our OPT
    long_name = ".".join(["a" * 60, "b" * 60, "c" * 10]) + ".test"
    ln, ql = answer(long_name)
    assert kernel_entry(ln, ql, 101.0) is None                         # a name past DNS_QNAME_MAX


def test_offer_fills_once_an_epoch_and_bumps_retire():
    fake = FakeMap()
    k = KernelAnswers(lambda: fake)
    k.configure(True, by_client=False)
    assert fake.conf == (True, k.epoch)
    e, q = answer()
    assert k.offer(e, q, 101.0, everyones=True)
    assert fake.entries[(q.key[:-4], 1, 1)]["epoch"] == k.epoch
    assert not k.offer(e, q, 101.0, everyones=True)                    # already there
    epoch = k.epoch
    k.bump()
    assert k.epoch == epoch + 1 and fake.conf == (True, epoch + 1)
    assert k.offer(e, q, 101.0, everyones=True)                        # again, under the new epoch
    assert not k.offer(e, q, 101.0, everyones=False)                   # asis, reject, ipversion_prefer
    k.configure(True, by_client=True)                                  # interface() rules
    assert not k.offer(e, q, 101.0, everyones=True)
    k.configure(False, by_client=False)
    assert fake.conf[0] is False and not k.offer(e, q, 101.0, everyones=True)
    scoped, qs = answer()
    scoped.scope = "asis 192.0.2.9:53"
    k.configure(True, by_client=False)
    assert not k.offer(scoped, qs, 101.0, everyones=True)


def test_names_leaving_early_are_counted():
    book = NameBook(max_addresses=2)
    a = [ipaddress.ip_address(f"203.0.113.{i}") for i in range(3)]
    book.learn(a[0], "x.test", 10.0)
    book.learn(a[1], "x.test", 10.0)
    assert book.lost == 0
    book.learn(a[2], "x.test", 10.0)                                    # a[0] out: the book is full
    assert book.lost == 1
    for i in range(MAX_NAMES_PER_ADDRESS + 1):
        book.learn(a[2], f"n{i}.test", 10.0)
    assert book.lost >= 2                                              # a name out: too many on one address
    assert book.expire(11.0) and book.lost >= 2                        # by deadline: not counted


def test_kernel_sync_retires_kernel_answers_when_a_name_leaves_early():
    from daetui.config.model import RuleSet
    from daetui.control.kernel_sync import KernelSync

    sync = KernelSync(None, NameBook(max_addresses=1), None, RuleSet((), "direct", ()), "reject")  # type: ignore[arg-type]
    bumps: list[int] = []
    sync.names_lost = lambda: bumps.append(1)
    a, b = ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("203.0.113.2")
    sync.feed(("x.test",), (a,), 10.0)
    sync.feed(("x.test",), (a,), 20.0)        # renewed: nothing lost
    assert bumps == []
    sync.feed(("y.test",), (b,), 10.0)        # a out (the book holds one address): its answers must go
    assert bumps == [1]
    sync.expire(30.0)                          # by deadline: the kernel's entries expired with it
    assert bumps == [1]


def test_while_off_a_lost_name_writes_nothing_to_the_kernel():
    """Each new name of a CDN's shared address loses an old one (a bump): with kernel answers off, once the
    kernel was told so, that costs no map write; turned on, the kernel hears of every bump again."""
    fake = FakeMap()
    k = KernelAnswers(lambda: fake)
    k.configure(False, by_client=False)
    assert fake.conf == (False, k.epoch) and fake.conf_writes == 1
    for _ in range(3):
        k.bump()
    assert fake.conf_writes == 1
    k.configure(True, by_client=False)
    k.bump()
    assert fake.conf == (True, k.epoch) and fake.conf_writes == 3
    k.configure(False, by_client=False)
    assert fake.conf == (False, k.epoch) and fake.conf_writes == 4


def test_an_offer_made_before_a_bump_is_not_filled_under_the_new_epoch():
    """The controller offers an answer once its reply is on the way (call_soon): a reload, flush or lost name
    in between retired what it was served under, so it does not go in stamped with the new epoch."""
    fake = FakeMap()
    k = KernelAnswers(lambda: fake)
    k.configure(True, by_client=False)
    e, q = answer()
    served_in = k.epoch
    k.bump()
    assert not k.offer(e, q, 101.0, everyones=True, epoch=served_in)
    assert fake.entries == {}
    assert k.offer(e, q, 101.0, everyones=True, epoch=k.epoch)
