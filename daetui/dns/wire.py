"""DNS messages on the wire, the few parts the hot path needs without a full parse.

A query from the LAN is read here (header, the one question, EDNS payload
size) with bounds checks on every byte; anything malformed raises
`WireError` carrying the rcode to answer with, or None to drop silently.
Answers served from the cache are templates whose TTL fields are patched
in place (`ttl_offsets`), so a cache hit never builds a message object.
Upstream answers are parsed fully by dnspython before they are trusted.
"""

from __future__ import annotations

import struct

HEADER = 12
MAX_NAME = 255
MAX_UDP = 512          # a client without EDNS takes at most this much over UDP (RFC 1035)
# What we advertise back, and the most we send over UDP whatever a client advertises: the DNS flag
# day's size (unbound's max-udp-size), which no Ethernet, PPPoE or tunnel path fragments (RFC 9715).
OUR_EDNS_PAYLOAD = 1232
TYPE_OPT = 41
TYPE_SOA = 6
TYPE_CNAME = 5
TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1

FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
OPT_RR = b"\x00" + struct.pack("!HHIH", TYPE_OPT, OUR_EDNS_PAYLOAD, 0, 0)


class WireError(ValueError):
    """A message that cannot be used; `rcode` is the answer to give (None: drop it)."""

    def __init__(self, message: str, rcode: int | None = RCODE_FORMERR) -> None:
        super().__init__(message)
        self.rcode = rcode


class Query:
    """What daetui reads of a client's query. The name as text is worked out only when asked for."""

    __slots__ = ("_qname", "edns_payload", "flags", "id", "key", "qclass", "qtype", "question_end", "wire")

    def __init__(self, wire: bytes, qid: int, flags: int, qtype: int, qclass: int, question_end: int,
                 edns_payload: int) -> None:
        self.wire = wire
        self.id = qid
        self.flags = flags
        self.qtype = qtype
        self.qclass = qclass
        self.question_end = question_end    # offset just past the question
        self.edns_payload = edns_payload    # 0 without EDNS, else the client's UDP size (at least 512)
        self._qname: str | None = None
        # The cache key: the question's name (lower case), type and class, as bytes. Type and class
        # are numbers: not case-folded.
        end = question_end - 4
        self.key = wire[HEADER:end].lower() + wire[end:question_end]

    @property
    def qname(self) -> str:
        """Lower case, no trailing dot ("" for the root)."""
        if self._qname is None:
            self._qname = label_text(_name_end(self.wire, HEADER, allow_pointers=False)[1])
        return self._qname

    @property
    def question(self) -> bytes:
        return self.wire[HEADER:self.question_end]

    def max_udp(self) -> int:
        """The largest UDP reply this client gets: what it advertises (RFC 6891), at most what we do."""
        return min(max(MAX_UDP, self.edns_payload), OUR_EDNS_PAYLOAD) if self.edns_payload else MAX_UDP


def _name_end(wire: bytes, off: int, allow_pointers: bool) -> tuple[int, list[bytes]]:
    """Skip a name at `off`: (offset after it, its labels); raises WireError."""
    labels: list[bytes] = []
    total = 0
    n = len(wire)
    for _ in range(128):  # at most 127 labels fit in 255 bytes
        if off >= n:
            raise WireError("name runs past the end")
        length = wire[off]
        if length == 0:
            return off + 1, labels
        if length & 0xC0 == 0xC0:
            if not allow_pointers:
                raise WireError("compression pointer in a question")
            if off + 1 >= n:
                raise WireError("pointer runs past the end")
            return off + 2, labels
        if length & 0xC0:
            raise WireError("unknown label type")
        total += length + 1
        if total > MAX_NAME:
            raise WireError("name longer than 255 bytes")
        if off + 1 + length > n:
            raise WireError("label runs past the end")
        labels.append(wire[off + 1:off + 1 + length])
        off += 1 + length
    raise WireError("too many labels")


def label_text(labels: list[bytes]) -> str:
    """The name as text, lower case; bytes outside printable ASCII escaped as dnspython does."""
    out = []
    for lab in labels:
        if all(0x21 <= b <= 0x7E and b not in (0x2E, 0x5C) for b in lab):
            out.append(lab.decode("ascii").lower())
        else:
            out.append("".join(chr(b).lower() if 0x21 <= b <= 0x7E and b not in (0x2E, 0x5C)
                               else f"\\{b:03d}" for b in lab))
    return ".".join(out)


def parse_query(wire: bytes) -> Query:
    """A client's query, checked; raises WireError (rcode None: not even a header to answer)."""
    if len(wire) < HEADER:
        raise WireError("shorter than a DNS header", None)
    qid, flags, qd, an, ns, ar = _H.unpack_from(wire)
    if flags & FLAG_QR:
        raise WireError("a response, not a query", None)  # never answer a response: no loops
    if flags & OPCODE_MASK:
        raise WireError("opcode other than QUERY", RCODE_NOTIMP)
    if qd != 1:
        raise WireError(f"{qd} questions (one expected)")
    if an or ns:
        raise WireError("a query with answer or authority records")
    end, _labels = _name_end(wire, HEADER, allow_pointers=False)
    if end + 4 > len(wire):
        raise WireError("question runs past the end")
    qtype, qclass = struct.unpack_from("!HH", wire, end)
    end += 4
    payload = 0
    off = end
    for _ in range(min(ar, 4)):
        off, _labels = _name_end(wire, off, allow_pointers=True)
        if off + 10 > len(wire):
            raise WireError("additional record runs past the end")
        rtype, rclass, _ttl, rdlen = _RR.unpack_from(wire, off)
        off += 10 + rdlen
        if off > len(wire):
            raise WireError("additional record data runs past the end")
        if rtype == TYPE_OPT:
            payload = max(MAX_UDP, rclass)
    if ar > 4:
        raise WireError(f"{ar} additional records")
    return Query(wire, qid, flags, qtype, qclass, end, payload)


def ttl_offsets(wire: bytes) -> list[int]:
    """Offsets of the TTL of every record but OPT, in a well-formed message."""
    _qid, _flags, qd, an, ns, ar = _H.unpack_from(wire)
    off = HEADER
    for _ in range(qd):
        off, _ = _name_end(wire, off, allow_pointers=True)
        off += 4
    out = []
    for _ in range(an + ns + ar):
        off, _ = _name_end(wire, off, allow_pointers=True)
        if off + 10 > len(wire):
            raise WireError("record runs past the end")
        rtype = struct.unpack_from("!H", wire, off)[0]
        if rtype != TYPE_OPT:
            out.append(off + 4)
        off += 10 + struct.unpack_from("!H", wire, off + 8)[0]
        if off > len(wire):
            raise WireError("record data runs past the end")
    return out


def as_template(wire: bytes) -> bytes | None:
    """An upstream's (already validated) answer as a cache template: ID zero, its OPT record cut.

    None when the OPT record is not the message's last record (then the caller renders one).
    """
    _qid, flags, qd, an, ns, ar = _H.unpack_from(wire)
    off = HEADER
    for _ in range(qd):
        off, _ = _name_end(wire, off, allow_pointers=True)
        off += 4
    opt_at = None
    for i in range(an + ns + ar):
        start = off
        off, _ = _name_end(wire, off, allow_pointers=True)
        rtype = struct.unpack_from("!H", wire, off)[0]
        off += 10 + struct.unpack_from("!H", wire, off + 8)[0]
        if rtype == TYPE_OPT:
            if i != an + ns + ar - 1:
                return None
            opt_at = start
    body = wire[HEADER:opt_at] if opt_at is not None else wire[HEADER:off]
    return _H.pack(0, flags, qd, an, ns, ar - (opt_at is not None)) + body


def answer_from_template(template: bytes, offsets: list[int], ttls: list[int], elapsed: int,
                         query: Query, udp: bool = True) -> bytes:
    """A cached answer for `query`: its ID, RD bit and question bytes; TTLs counted down by `elapsed`."""
    out = bytearray(template)
    flags = (struct.unpack_from("!H", template, 2)[0] & ~FLAG_RD) | (query.flags & FLAG_RD)
    struct.pack_into("!HH", out, 0, query.id, flags)
    q = query.question
    out[HEADER:HEADER + len(q)] = q  # the client's own spelling (0x20 case randomisation)
    for off, ttl in zip(offsets, ttls, strict=True):
        struct.pack_into("!I", out, off, max(0, ttl - elapsed))
    return finish(out, query, udp)


def finish(out: bytearray, query: Query, udp: bool = True) -> bytes:
    """Add our OPT record when the client spoke EDNS; truncate (TC) what does not fit its UDP size."""
    if query.edns_payload:
        out += OPT_RR
        struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] + 1)
    if udp and len(out) > query.max_udp():
        return truncated(query)
    return bytes(out)


def truncated(query: Query) -> bytes:
    """Header and question only, TC set: the client asks again over TCP."""
    flags = FLAG_QR | FLAG_RA | FLAG_TC | (query.flags & FLAG_RD)
    out = bytearray(_H.pack(query.id, flags, 1, 0, 0, 1 if query.edns_payload else 0))
    out += query.question
    if query.edns_payload:
        out += OPT_RR
    return bytes(out)


def reply(query: Query, rcode: int, answers: bytes = b"", n_answers: int = 0, udp: bool = True) -> bytes:
    """A reply made here (errors, reject): the query's question, `rcode`, optional answer records."""
    flags = FLAG_QR | FLAG_RA | (query.flags & FLAG_RD) | rcode
    out = bytearray(_H.pack(query.id, flags, 1, n_answers, 0, 0))
    out += query.question
    out += answers
    return finish(out, query, udp)


def error_for(wire: bytes, rcode: int) -> bytes | None:
    """An error reply to a message we could not fully read, when its header allows one."""
    if len(wire) < HEADER:
        return None
    qid, flags = struct.unpack_from("!HH", wire)
    if flags & FLAG_QR:
        return None
    # Echo the question when it can be read; FORMERR may go without one.
    try:
        end, _ = _name_end(wire, HEADER, allow_pointers=False)
        question = wire[HEADER:end + 4] if end + 4 <= len(wire) and _H.unpack_from(wire)[2] == 1 else b""
    except WireError:
        question = b""
    out = _H.pack(qid, FLAG_QR | FLAG_RA | (flags & FLAG_RD) | (flags & OPCODE_MASK) | rcode,
                  1 if question else 0, 0, 0, 0)
    return out + question
