"""Cached DNS answered in the kernel: which of the controller's answers the LAN program may give itself.

With `dns.kernel_answers` on, the controller copies the answers it serves from its cache into the
kernel's `dns_answers` map (bpf/daetui.h), and the LAN program answers a repeated plain UDP query from
it in place (bpf/lan.c, dns_answer) without waking user space. Only what the controller itself would
send that query from its cache goes there, and only when the answer is every client's:

- the request and response rules look at nothing of the client (no `interface()`), the request rule
  chose a configured upstream (not `asis`, whose answer depends on the server the client addressed,
  nor `reject`), and the answer is a configured upstream's (shared scope, trusted);
- class IN, a type `ipversion_prefer` does not rewrite, NOERROR or NXDOMAIN, TTL > 0, at most
  DNS_MAX_TTLS records, no DNSSEC records, the reply with our OPT record within DNS_REPLY_MAX bytes
  (never truncated), a name of at most DNS_QNAME_MAX bytes.

Expiry and TTLs: an entry carries its expiry (the cache entry's, on CLOCK_MONOTONIC, which is
bpf_ktime_get_ns()) and the TTLs as stored; the kernel counts them down by the whole seconds since,
as the controller does (`wire.answer_from_template`), and never uses an entry past its expiry, so a
stale answer (optimistic_cache) is only ever served by the controller.

The epoch (dns_conf.epoch): bumped on every reload, cache flush, and whenever a name leaves the
control plane's NameBook before its deadline (the address book or the kernel's domain map full, or
an address with too many names). An entry of another epoch is never used. So an address the kernel
hands out always has its name in the kernel's domain map for domain() rules: the answer's names are
fed (`DnsController._feed`) until at least the entry's expiry, and the only other way they leave
bumps the epoch first.

The kernel's own counters (answered, and handed over by reason) are `stats()`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from daetui.abi.constants import ABI
from daetui.dns.cache import CacheEntry
from daetui.dns.wire import CLASS_IN, FLAG_RD, FLAG_TC, HEADER, OPT_RR, RCODE_NOERROR, RCODE_NXDOMAIN, Query

# RRSIG, NSEC, DNSKEY, NSEC3, NSEC3PARAM, DS, DLV: an answer carrying them is the controller's to give.
DNSSEC_TYPES = frozenset({46, 47, 48, 50, 51, 43, 32769})


class KernelDnsMap(Protocol):
    """What of the kernel program this needs (daetui.dataplane.program.KernelProgram has it)."""

    def set_dns_conf(self, enabled: bool, epoch: int) -> None: ...

    def put_dns_answer(self, qname: bytes, qtype: int, qclass: int, *, expires_ns: int, stored_ns: int, epoch: int,
                       flags: int, counts: tuple[int, int, int], rest: bytes, ttl_offsets: list[int],
                       ttls: list[int]) -> None: ...

    def clear_dns_answers(self) -> None: ...

    def dns_stats(self) -> dict[str, int]: ...


class KernelAnswers:
    """The controller's side of dns_answers: what goes in, and the epoch that retires it all."""

    def __init__(self, kernel: Callable[[], KernelDnsMap | None]) -> None:
        self._kernel = kernel
        self.enabled = False
        self.by_client = False       # the rules look at the client: nothing is filled
        self.epoch = 1
        self.filled = 0
        self._offered: dict[bytes, float] = {}   # cache key -> stored time of the entry put there (this epoch)
        self._written_off = False                # the kernel was last told "off"

    def configure(self, enabled: bool, by_client: bool) -> None:
        """A config (start or reload): whatever was filled before is retired."""
        self.enabled = enabled
        self.by_client = by_client
        self.bump()

    def bump(self) -> None:
        """Retire every entry: the kernel uses none filled before (reload, flush, a name lost early)."""
        self.epoch = (self.epoch + 1) & 0xFFFFFFFF or 1
        self._offered.clear()
        if not self.enabled and self._written_off:
            # Off, and the kernel told so: nothing there to retire, and no write per lost name (a CDN's many
            # names on one address lose one with each new name: a map write per query for nothing).
            return
        k = self._kernel()
        if k is not None:
            # The old entries stay until overwritten or evicted (an LRU): the epoch alone retires them, in
            # one write the kernel sees whole, with no window where an old one could still be used.
            k.set_dns_conf(self.enabled, self.epoch)
            self._written_off = not self.enabled

    def offer(self, e: CacheEntry, q: Query, now: float, everyones: bool, epoch: int | None = None) -> bool:
        """Put `e` (just served to `q`, fresh) into the kernel when it may answer any client; whether it did.

        `everyones`: the request rule chose a configured upstream (not asis or reject) and the type is
        not rewritten by ipversion_prefer -- what the controller alone knows of the query's path.
        `epoch`: the epoch it was served in, when the offer comes later: a bump since (a reload, a flush, a
        name lost) retired it, and it must not go in under the new one.
        """
        if not self.enabled or self.by_client or not everyones or not e.trusted or e.scope:
            return False
        if epoch is not None and epoch != self.epoch:
            return False
        if self._offered.get(e.key) == e.stored:
            return False   # already there, this epoch
        k = self._kernel()
        if k is None:
            return False
        parts = kernel_entry(e, q, now)
        if parts is None:
            return False
        qname, flags, counts, rest, offsets = parts
        k.put_dns_answer(qname, q.qtype, q.qclass, expires_ns=int(e.expires * 1e9), stored_ns=int(e.stored * 1e9),
                         epoch=self.epoch, flags=flags, counts=counts, rest=rest, ttl_offsets=offsets,
                         ttls=list(e.ttls))
        self._offered[e.key] = e.stored
        self.filled += 1
        return True

    def stats(self) -> dict[str, int]:
        k = self._kernel()
        return k.dns_stats() if k is not None else {}


KernelEntry = tuple[bytes, int, tuple[int, int, int], bytes, list[int]]


def kernel_entry(e: CacheEntry, q: Query, now: float) -> KernelEntry | None:
    """(lower-cased wire name, flags without RD, (an, ns, ar) counts, sections after the question, TTL offsets in
    them) of `e` for the kernel, or None when the kernel may not give it (see the module's docstring)."""
    if q.qclass != CLASS_IN or e.rcode not in (RCODE_NOERROR, RCODE_NXDOMAIN):
        return None
    if e.expires <= now or not e.ttls or min(e.ttls) <= 0 or len(e.ttls) > ABI.DNS_MAX_TTLS:
        return None   # stale, or TTL 0: the controller's alone
    t = e.template
    qend = q.question_end
    qname = q.key[:-4]
    if len(qname) > ABI.DNS_QNAME_MAX or len(t) < qend or t[HEADER:qend - 4].lower() != qname \
            or t[qend - 4:qend] != q.key[-4:]:
        return None
    if len(t) + len(OPT_RR) > ABI.DNS_REPLY_MAX or len(t) - qend > ABI.DNS_REST_MAX:
        return None   # would be truncated for some client
    flags, qd, an, ns, ar = struct.unpack_from("!HHHHH", t, 2)
    if qd != 1 or flags & FLAG_TC:
        return None
    offsets = [o - qend for o in e.offsets]
    if len(offsets) != len(e.ttls) or any(o < 4 or o + 4 > len(t) - qend for o in offsets):
        return None
    # Each record's type sits 4 bytes before its TTL (type, class, TTL).
    if any(struct.unpack_from("!H", t, o - 4)[0] in DNSSEC_TYPES for o in e.offsets):
        return None
    return qname, flags & ~FLAG_RD & 0xFFFF, (an, ns, ar), t[qend:], offsets
