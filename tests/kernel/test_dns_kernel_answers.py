"""Cached DNS answered in the kernel (dns.kernel_answers), in the lab against unbound.

A repeated plain query from the LAN client is answered by the LAN program itself: the controller's
query counter stays still while the kernel's answered counter moves, and the reply is the one the
controller gave (same records and flags, the client's ID and question, TTLs not above the
controller's), with checksums a capture on the client's link verifies. Every query the kernel must
not answer reaches the controller, which answers it, and the kernel counts why.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.rdatatype
import pytest
from helpers import lan_socket, plane_in_lab, wait_for

from daetui.config.load import parse_config
from daetui.control.plane import ControlPlane
from daetui.control.runner import ControlPlaneThread
from daetui.lab.topology import ADDR, LAN_MAC, ROUTER_LAN_MAC, Lab
from daetui.net.netns import netns
from testkit.configs import dns_config
from testkit.peers.dnsmasq import dns_peers

pytestmark = pytest.mark.kernel

UNBOUND4, _ = ADDR.dns4
UNBOUND6, _ = ADDR.dns6

BODY = f"""
[dns]
upstream = {{ ub = "udp://{UNBOUND4}:53" }}
request = [{{request}}"fallback: ub"]
fixed_domain_ttl = {{ "api.example.test" = 1 }}
kernel_answers = true
[routing]
fallback = "direct"
"""


def config(request: str = "") -> str:
    return dns_config(BODY.replace("{request}", request))


@pytest.fixture(scope="module")
def plane(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlaneThread]:
    with dns_peers(lab), plane_in_lab(lab, config(), tmp_path_factory.mktemp("run")) as runner:
        yield runner


def kstats(runner: ControlPlaneThread) -> dict[str, int]:
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    return runner.call(lambda: plane.dataplane.program.dns_stats())


def queries(runner: ControlPlaneThread) -> int:
    plane: ControlPlane = runner.plane  # type: ignore[assignment]
    return runner.call(lambda: plane.dns.controller.c.queries)


def ask(lab: Lab, server: str, wire: bytes, timeout: float = 2.0) -> bytes | None:
    """`wire` over UDP from the LAN client to server:53; the reply, or None."""
    s = lan_socket(lab, server, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(wire, (server, 53))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None
    finally:
        s.close()


def query(name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def captured_reply(cap: socket.socket, sport: int) -> bytes:
    """The frame of the reply to the client's port `sport`, as it arrived on the client's link."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            frame = cap.recv(65535)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        eth = struct.unpack_from("!H", frame, 12)[0]
        if eth not in (0x0800, 0x86DD):
            continue
        v4 = eth == 0x0800
        l4 = 14 + (20 if v4 else 40)
        if frame[14 + (9 if v4 else 6)] == 17 and struct.unpack_from("!HH", frame, l4) == (53, sport):
            return frame
    raise AssertionError("no reply captured")


def assert_checksums(frame: bytes) -> None:
    """The IPv4 header's and the UDP checksums are right (they sum to 0xffff with the pseudo-header)."""
    assert frame[0:6] == bytes.fromhex(LAN_MAC.replace(":", "")), "to the client's MAC"
    assert frame[6:12] == bytes.fromhex(ROUTER_LAN_MAC.replace(":", "")), "from the router's"
    if struct.unpack_from("!H", frame, 12)[0] == 0x0800:
        ip = frame[14:34]
        assert checksum(ip) == 0xFFFF
        udp = frame[34:14 + struct.unpack_from("!H", ip, 2)[0]]
        pseudo = ip[12:20] + struct.pack("!HH", 17, len(udp))
    else:
        ip = frame[14:54]
        udp = frame[54:54 + struct.unpack_from("!H", ip, 4)[0]]
        pseudo = ip[8:40] + struct.pack("!IxxxB", len(udp), 17)
    assert struct.unpack_from("!H", udp, 4)[0] == len(udp)
    assert checksum(pseudo + udp) == 0xFFFF


def by_kernel(lab: Lab, runner: ControlPlaneThread, server: str, q: dns.message.Message,
              capture: bool = False) -> dns.message.Message:
    """`q` answered by the kernel: the controller's counter still, the kernel's answered one up by one."""
    before, n = kstats(runner), queries(runner)
    if capture:
        with netns(lab.lan):
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        cap.bind((ADDR.client_ifname, 0))
        cap.setblocking(False)
    s = lan_socket(lab, server, socket.SOCK_DGRAM)
    try:
        s.settimeout(2)
        s.sendto(q.to_wire(), (server, 53))
        wire = s.recv(65535)
        sport = s.getsockname()[1]
    finally:
        s.close()
    if capture:
        try:
            assert_checksums(captured_reply(cap, sport))
        finally:
            cap.close()
    after = kstats(runner)
    assert after["ANSWERED"] == before["ANSWERED"] + 1, (before, after)
    assert queries(runner) == n, "the controller saw it"
    return dns.message.from_wire(wire)


def by_controller(lab: Lab, runner: ControlPlaneThread, server: str, wire: bytes, reason: str | None,
                  reply: bool = True) -> bytes | None:
    """`wire` handed to the controller (its counter up by one, the kernel's answered one still), counted as `reason`."""
    before, n = kstats(runner), queries(runner)
    got = ask(lab, server, wire)
    assert (got is not None) == reply
    wait_for(lambda: queries(runner) == n + 1, timeout=3)
    after = kstats(runner)
    assert after["ANSWERED"] == before["ANSWERED"], "the kernel answered it"
    if reason is not None:
        assert after[reason] == before[reason] + 1, (reason, before, after)
    return got


def same_answer(kernel: dns.message.Message, controller: dns.message.Message, q: dns.message.Message) -> None:
    assert kernel.id == q.id
    assert kernel.question[0].name.to_text() == q.question[0].name.to_text()   # the client's spelling
    assert str(kernel.question[0].name) == str(q.question[0].name)
    assert kernel.flags == (controller.flags & ~dns.flags.RD) | (q.flags & dns.flags.RD)
    assert kernel.rcode() == controller.rcode()
    for mine, theirs in ((kernel.answer, controller.answer), (kernel.authority, controller.authority)):
        assert [(r.name, r.rdtype, sorted(rd.to_text() for rd in r)) for r in mine] == \
               [(r.name, r.rdtype, sorted(rd.to_text() for rd in r)) for r in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert a.ttl <= b.ttl
    assert (kernel.edns >= 0) == (q.edns >= 0)


def test_a_repeated_query_is_answered_by_the_kernel(plane: ControlPlaneThread, lab: Lab):
    first = dns.message.from_wire(by_controller(lab, plane, UNBOUND4, query("www.example.test").to_wire(), "MISS"))
    # Another ID, the name in other letters (0x20), EDNS: the kernel's reply, checksums checked on the wire.
    q = query("WwW.Example.TEST", use_edns=0)
    got = by_kernel(lab, plane, UNBOUND4, q, capture=True)
    same_answer(got, first, q)
    assert [rd.address for r in got.answer for rd in r] == [ADDR.hosts4[0]]
    # Without EDNS: no OPT record; an alias (CNAME chain, compression pointers past the question).
    q = query("www.example.test", use_edns=False)
    same_answer(by_kernel(lab, plane, UNBOUND4, q), first, q)
    ctl = dns.message.from_wire(by_controller(lab, plane, UNBOUND4, query("alias.example.test").to_wire(), None))
    q = query("ALIAS.example.test")
    same_answer(by_kernel(lab, plane, UNBOUND4, q), ctl, q)


def test_ipv6_client_is_answered_by_the_kernel(plane: ControlPlaneThread, lab: Lab):
    ctl = dns.message.from_wire(by_controller(lab, plane, UNBOUND6, query("www.example.test", "AAAA").to_wire(),
                                              None))
    q = query("www.example.test", "AAAA")
    got = by_kernel(lab, plane, UNBOUND6, q, capture=True)
    same_answer(got, ctl, q)
    assert [rd.address for r in got.answer for rd in r] == [ADDR.hosts6[0]]
    # Over IPv6 for an IPv4 answer too, and a negative answer (no such name: NXDOMAIN with its SOA).
    ask(lab, UNBOUND6, query("www.example.test").to_wire())
    q = query("www.example.test")
    by_kernel(lab, plane, UNBOUND6, q, capture=True)
    nx = dns.message.from_wire(by_controller(lab, plane, UNBOUND6, query("nope.example.test").to_wire(), None))
    assert nx.rcode() == dns.rcode.NXDOMAIN
    q = query("nope.example.test")
    same_answer(by_kernel(lab, plane, UNBOUND6, q), nx, q)


def _edit(wire: bytes, **fields: int) -> bytes:
    qid, flags, qd, an, ns, ar = struct.unpack_from("!6H", wire)
    values = {"flags": flags, "an": an, "ns": ns, "ar": ar, **fields}
    return struct.pack("!6H", qid, values["flags"], qd, values["an"], values["ns"], values["ar"]) + wire[12:]


def test_what_the_kernel_must_not_answer_goes_to_the_controller(plane: ControlPlaneThread, lab: Lab):
    ask(lab, UNBOUND4, query("www.example.test").to_wire())
    by_kernel(lab, plane, UNBOUND4, query("www.example.test"))
    plain = query("www.example.test", use_edns=False).to_wire()
    ecs = query("www.example.test", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    cookie = query("www.example.test", use_edns=0, options=[dns.edns.GenericOption(10, b"\x01" * 8)])
    cases = [
        ("TC bit", _edit(plain, flags=0x0300), "NOT_PLAIN", True),
        ("ECS", ecs.to_wire(), "EDNS", True),
        ("cookie", cookie.to_wire(), "EDNS", True),
        ("DO bit", query("www.example.test", want_dnssec=True).to_wire(), "EDNS", True),
        ("EDNS version 1", query("www.example.test", use_edns=1).to_wire(), "EDNS", True),
        ("trailing bytes", plain + b"\0\0\0", "TRAILING", True),
        ("class CH", plain[:-2] + b"\x00\x03", "MISS", True),
        ("a type never filled", query("www.example.test", "MX").to_wire(), "MISS", True),
        # The controller turns these away (FORMERR); the kernel only counts them.
        ("an answer record", _edit(plain, an=1), "NOT_PLAIN", True),
        ("an authority record", _edit(plain, ns=1), "NOT_PLAIN", True),
        ("a compressed name", plain[:12] + b"\xc0\x0c" + plain[-4:], "NAME", True),
        ("a name past the end", plain[:20], "NAME", True),
        ("a header only", plain[:12], "NAME", True),
        ("shorter than a header", plain[:6], "TRUNCATED", False),
    ]
    for what, wire, reason, reply in cases:
        try:
            by_controller(lab, plane, UNBOUND4, wire, reason, reply)
        except AssertionError as e:
            raise AssertionError(f"{what}: {e}") from e
    # A UDP length past the end of the frame (no socket makes one): counted, passed on, nothing breaks.
    before = kstats(plane)
    dns_msg = plain
    udp = struct.pack("!HHHH", 40000, 53, 8 + len(dns_msg) + 40, 0) + dns_msg
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(ADDR.client4), socket.inet_aton(UNBOUND4))
    ip = ip[:10] + struct.pack("!H", 0xFFFF ^ checksum(ip)) + ip[12:]
    with netns(lab.lan):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((ADDR.client_ifname, 0))
        mac = lambda m: bytes.fromhex(m.replace(":", ""))  # noqa: E731
        s.send(mac(ROUTER_LAN_MAC) + mac(LAN_MAC) + b"\x08\x00" + ip + udp)
    finally:
        s.close()
    wait_for(lambda: kstats(plane)["TRUNCATED"] == before["TRUNCATED"] + 1, timeout=3)
    by_kernel(lab, plane, UNBOUND4, query("www.example.test"))   # still answering


def test_expired_reloaded_flushed_and_client_dependent_answers_go_to_the_controller(plane: ControlPlaneThread,
                                                                                   lab: Lab):
    runner = plane
    p: ControlPlane = runner.plane  # type: ignore[assignment]
    # Expiry: api.example.test is kept 1 s (fixed_domain_ttl); past it the kernel never answers.
    by_controller(lab, runner, UNBOUND4, query("api.example.test").to_wire(), None)
    got = by_kernel(lab, runner, UNBOUND4, query("api.example.test"))
    assert all(r.ttl <= 1 for r in got.answer)
    time.sleep(1.1)
    by_controller(lab, runner, UNBOUND4, query("api.example.test").to_wire(), "EXPIRED")
    # A flush retires every answer (the epoch).
    ask(lab, UNBOUND4, query("www.example.test").to_wire())
    by_kernel(lab, runner, UNBOUND4, query("www.example.test"))
    runner.call(p.dns.controller.flush)
    by_controller(lab, runner, UNBOUND4, query("www.example.test").to_wire(), "EPOCH")
    by_kernel(lab, runner, UNBOUND4, query("www.example.test"))
    # A reload too: the name's rule changed (another request rule for it).
    new = config('"qname(full: www.example.test) -> ub", ')
    assert runner.submit(p.reload(parse_config(new, "test.toml"))).result(60).ok
    by_controller(lab, runner, UNBOUND4, query("www.example.test").to_wire(), "EPOCH")
    by_kernel(lab, runner, UNBOUND4, query("www.example.test"))
    # Rules that look at the client: its answer may differ from another's, so the kernel gives none.
    new = config('"interface(lan: lan0) && qname(full: www.example.test) -> ub", ')
    assert runner.submit(p.reload(parse_config(new, "test.toml"))).result(60).ok
    for _ in range(2):
        by_controller(lab, runner, UNBOUND4, query("www.example.test").to_wire(), "EPOCH")
    # asis (the server the client asked): never the kernel's either.
    new = config('"qname(full: www.example.test) -> asis", ')
    assert runner.submit(p.reload(parse_config(new, "test.toml"))).result(60).ok
    for _ in range(2):
        by_controller(lab, runner, UNBOUND4, query("www.example.test").to_wire(), "EPOCH")
    # Back to rules that are everyone's: answered again.
    assert runner.submit(p.reload(parse_config(config(), "test.toml"))).result(60).ok
    by_controller(lab, runner, UNBOUND4, query("www.example.test").to_wire(), "EPOCH")
    by_kernel(lab, runner, UNBOUND4, query("www.example.test"))
