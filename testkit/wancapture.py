"""What leaves the router on an interface: an AF_PACKET capture, read on a thread, bounded.

    with Capture(lab.router, "wan0") as cap:
        ...                                   # traffic
    assert cap.count(src=ADDR.client4) == 0   # nothing left with the client's own address

Only the IP header and ports are kept (no payload); fragments and IPv6 extension
headers are kept with ports 0. A run keeps at most `max_packets` records and ends
at `max_seconds` whatever happens, so a flood cannot grow it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType

from daetui.net.netns import netns

ETH_P_ALL = 0x0003
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PACKET_OUTGOING = 4


@dataclass(frozen=True)
class Packet:
    """One captured IP packet's header."""

    src: str
    dst: str
    proto: int
    sport: int
    dport: int
    outgoing: bool


def parse(frame: bytes, outgoing: bool) -> Packet | None:
    """The IP header and ports of an Ethernet frame, or None if it is not IP."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETH_P_IP and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        src, dst = (str(ipaddress.IPv4Address(frame[26:30])), str(ipaddress.IPv4Address(frame[30:34])))
        frag = struct.unpack_from("!H", frame, 20)[0] & 0x1FFF
        off = 14 + ihl
    elif ethertype == ETH_P_IPV6 and len(frame) >= 54:
        proto = frame[20]
        src, dst = str(ipaddress.IPv6Address(frame[22:38])), str(ipaddress.IPv6Address(frame[38:54]))
        frag = 0
        off = 54
    else:
        return None
    sport = dport = 0
    if proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP) and not frag and len(frame) >= off + 4:
        sport, dport = struct.unpack_from("!HH", frame, off)
    return Packet(src, dst, proto, sport, dport, outgoing)


class Capture:
    """Capture `ifname` in namespace `ns` from __enter__ to __exit__ (or `stop()`)."""

    def __init__(self, ns: str, ifname: str, max_packets: int = 500_000, max_seconds: float = 600.0,
                 only_dst: str | None = None) -> None:
        self.ns, self.ifname = ns, ifname
        self.only_dst = only_dst  # keep only the packets to this address (a flood to others is just counted)
        self.seen = 0             # IP packets seen, kept or not
        self.max_packets, self.max_seconds = max_packets, max_seconds
        self.packets: list[Packet] = []
        self.dropped = 0        # beyond max_packets
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"capture-{ifname}", daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("the capture did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        try:
            with netns(self.ns):
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.bind((self.ifname, ETH_P_ALL))
            sock.settimeout(0.2)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        deadline = threading.Event()
        timer = threading.Timer(self.max_seconds, deadline.set)
        timer.start()
        try:
            while not self._stop.is_set() and not deadline.is_set():
                try:
                    frame, addr = sock.recvfrom(128)  # headers only
                except TimeoutError:
                    continue
                p = parse(frame, addr[2] == PACKET_OUTGOING)
                if p is None:
                    continue
                self.seen += 1
                if self.only_dst is not None and p.dst != self.only_dst:
                    continue
                if len(self.packets) >= self.max_packets:
                    self.dropped += 1
                    continue
                self.packets.append(p)
        finally:
            timer.cancel()
            sock.close()

    def count(self, src: str | None = None, dst: str | None = None, dport: int | None = None,
              outgoing: bool | None = True) -> int:
        """Packets matching every given field (by default only those the router sent out)."""
        return sum(1 for p in list(self.packets)
                   if (src is None or p.src == src) and (dst is None or p.dst == dst)
                   and (dport is None or p.dport == dport) and (outgoing is None or p.outgoing == outgoing))
