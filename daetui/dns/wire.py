"""DNS messages on the wire, the few parts the hot path needs without a full parse.

A query from the LAN is read here (header, the one question, EDNS payload
size) with bounds checks on every byte; anything malformed raises
`WireError` carrying the rcode to answer with, or None to drop silently.
Answers served from the cache are templates whose TTL fields are patched
in place (`ttl_offsets`), so a cache hit never builds a message object.

An upstream's answer is read by `read_answer` when it holds only the records
a cache miss usually brings (A, AAAA, CNAME, NS, SOA of class IN, and an OPT
without options as its last record): every byte of it is checked as strictly
as dnspython checks it (names, compression pointers, record lengths, rdata,
trailing bytes). Anything else, malformed or merely unusual, it leaves to
dnspython (None), which reads it whole or rejects it.
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
TYPE_NS = 2
TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1

FLAG_QR = 0x8000
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800
RCODE_MASK = 0x000F

RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5

_H = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_LABEL_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")  # written as they are by label_text
_SOA_MINIMUM = struct.Struct("!16xI")
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
    joined = b".".join(labels)
    if joined.translate(None, _LABEL_PLAIN) == b"." * (len(labels) - 1):  # the usual name: nothing to escape
        return joined.decode("ascii").lower()
    out = []
    for lab in labels:
        if not lab.translate(None, _LABEL_PLAIN):
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


def query_wire(qid: int, question: bytes) -> bytes:
    """Our query to an upstream for `question` (name, type, class as bytes): ID `qid`, RD, EDNS of our size."""
    return _H.pack(qid, FLAG_RD, 1, 0, 0, 1) + question + OPT_RR


def answers_question(data: bytes, qid: int, question: bytes) -> bool:
    """Is `data` a response to our query `qid` for `question`?"""
    if len(data) < HEADER + len(question):
        return False
    rid, flags, qd = struct.unpack_from("!HHH", data)
    if rid != qid or not flags & FLAG_QR or qd != 1:
        return False
    n = len(question) - 4
    got = data[HEADER:HEADER + len(question)]
    return got[:n].lower() == question[:n].lower() and got[n:] == question[n:]


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


# -- upstream answers ------------------------------------------------------------------------------

MAX_POINTER_HOPS = 16  # dnspython's MAX_COMPRESSION_POINTER_CHAIN
MAX_SIGNED_TTL = 0x7FFFFFFF  # a larger TTL counts as 0 (RFC 2181 8; dnspython's reading too)
ROOT = b"\x00"
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in b'"().;\\@$')  # what dnspython writes unescaped


class _Unread(Exception):
    """Not for read_answer: dnspython reads it (or rejects it)."""


class AnswerRecords:
    """What the controller needs of an upstream's answer (`read_answer`). Names are lower case, in wire form."""

    __slots__ = ("offsets", "question", "rcode", "rrsets", "soa", "template")

    def __init__(self, rcode: int, question: bytes, rrsets: dict[tuple[bytes, int], tuple[int, dict[bytes, None]]],
                 soa: tuple[int, int] | None, template: bytes, offsets: list[int]) -> None:
        self.rcode = rcode            # with the OPT record's extended bits
        self.question = question      # the question's name
        # The answer section by (owner, type): the least TTL, and the rdatas in order, each once (A, AAAA: the
        # address; CNAME, NS: the target name). CNAME is a singleton: its last record is kept (as dnspython).
        self.rrsets = rrsets
        self.soa = soa                # the authority section's first SOA: (its least TTL, its minimum), or None
        self.template = template      # as `as_template` makes it
        self.offsets = offsets        # as `ttl_offsets(template)` finds them


def _name(wire: bytes, off: int, end: int) -> tuple[int, bytes]:
    """A name at `off`, compressed or not, read no further than `end`: (offset after it, its wire form, lower case).

    dnspython's rules: a pointer points before the part that points to it and what it points to ends
    before that part; at most MAX_POINTER_HOPS of them; 255 bytes at most.
    """
    out = []
    total = 1
    start = biggest = off
    after = -1
    hops = 0
    while True:
        if off >= end:
            raise _Unread
        n = wire[off]
        if n == 0:
            break
        if n < 64:
            if off + 1 + n > end:
                raise _Unread
            out.append(wire[off:off + 1 + n])
            total += n + 1
            off += 1 + n
        elif n >= 0xC0:
            if off + 2 > end:
                raise _Unread
            ptr = (n & 0x3F) << 8 | wire[off + 1]
            if after < 0:
                after = off + 2
            hops += 1
            if ptr >= biggest or hops > MAX_POINTER_HOPS:
                raise _Unread
            end = start  # what it points to must end before the part that points to it
            biggest = start = off = ptr
        else:
            raise _Unread
    if total > MAX_NAME:
        raise _Unread
    return (after if after >= 0 else off + 1), b"".join(out).lower() + ROOT


def read_answer(wire: bytes) -> AnswerRecords | None:
    """An upstream's answer (one question, its ID and question already checked), or None: leave it to dnspython."""
    try:
        return _read_answer(wire)
    except (_Unread, struct.error):
        return None


def _read_answer(wire: bytes) -> AnswerRecords:
    size = len(wire)
    if size < HEADER:
        raise _Unread
    _qid, flags, qd, an, ns, ar = _H.unpack_from(wire)
    if flags & OPCODE_MASK or qd != 1:
        raise _Unread  # another opcode is another kind of message to dnspython
    off, question = _name(wire, HEADER, size)
    off += 4
    if off > size:
        raise _Unread
    rrsets: dict[tuple[bytes, int], tuple[int, dict[bytes, None]]] = {}
    soa: tuple[bytes, int, int] | None = None   # owner, least TTL, minimum
    offsets = []
    opt_at = -1
    ext_rcode = 0
    last = an + ns + ar - 1
    for i in range(an + ns + ar):
        start = off
        off, owner = _name(wire, off, size)
        if off + 10 > size:
            raise _Unread
        rtype, rclass, ttl, rdlen = _RR.unpack_from(wire, off)
        rdata = off + 10
        off = rdata + rdlen
        if off > size:
            raise _Unread
        if rtype == TYPE_OPT:
            # EDNS: once, last (the template drops it), in the additional section, owned by the root; no options.
            if i != last or i < an + ns or owner != ROOT or rdlen:
                raise _Unread
            opt_at = start
            ext_rcode = (ttl >> 20) & 0xFF0
            continue
        if rclass != CLASS_IN:
            raise _Unread
        offsets.append(rdata - 6)
        if rtype in (TYPE_A, TYPE_AAAA):
            if rdlen != (4 if rtype == TYPE_A else 16):
                raise _Unread
            value = wire[rdata:off]
        elif rtype in (TYPE_CNAME, TYPE_NS):
            end, value = _name(wire, rdata, off)
            if end != off:
                raise _Unread
        elif rtype == TYPE_SOA:
            end, _mname = _name(wire, rdata, off)
            end, _rname = _name(wire, end, off)
            if end + 20 != off:
                raise _Unread
            if an <= i < an + ns:
                ttl = 0 if ttl > MAX_SIGNED_TTL else ttl
                if soa is None:
                    soa = (owner, ttl, _SOA_MINIMUM.unpack_from(wire, end)[0])
                elif soa[0] == owner:  # a singleton: the last record's minimum, the least TTL of all
                    soa = (owner, min(soa[1], ttl), _SOA_MINIMUM.unpack_from(wire, end)[0])
            value = b""
        else:
            raise _Unread
        if i < an:
            ttl = 0 if ttl > MAX_SIGNED_TTL else ttl
            key = (owner, rtype)
            had = rrsets.get(key)
            if had is None:
                rrsets[key] = (ttl, {value: None})
            else:
                if rtype in (TYPE_CNAME, TYPE_SOA):  # singletons: the last record stands
                    had[1].clear()
                had[1][value] = None
                if ttl < had[0]:
                    rrsets[key] = (ttl, had[1])
    if off != size:
        raise _Unread  # trailing bytes
    if opt_at >= 0:
        template = _H.pack(0, flags, qd, an, ns, ar - 1) + wire[HEADER:opt_at]
    else:
        template = _H.pack(0, flags, qd, an, ns, ar) + wire[HEADER:]
    return AnswerRecords(ext_rcode | (flags & RCODE_MASK), question, rrsets,
                         (soa[1], soa[2]) if soa is not None else None, template, offsets)


def name_text(name: bytes) -> str:
    """A name in wire form (uncompressed) as dnspython writes it without its final dot ("." for the root)."""
    if name == ROOT:
        return "."
    out = []
    off = 0
    while name[off]:
        lab = name[off + 1:off + 1 + name[off]]
        off += 1 + name[off]
        if not lab.translate(None, _PLAIN):
            out.append(lab.decode("ascii"))
        else:
            out.append("".join(chr(b) if b in _PLAIN else (f"\\{chr(b)}" if 0x20 < b < 0x7F else f"\\{b:03d}")
                               for b in lab))
    return ".".join(out)
