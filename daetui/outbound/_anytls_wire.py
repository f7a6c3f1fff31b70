"""AnyTLS on the wire: the password request, session frames, the padding scheme, and UDP-over-TCP v2.

After TLS the client sends, once per connection (anytls-go docs/protocol.md),

    sha256(password) (32 bytes)  padding0 length (u16 BE)  padding0

and then both sides speak frames:

    command (u8)  streamId (u32 BE)  data length (u16 BE)  data

A frame's data is at most 65535 bytes: a stream's bytes longer than that go
in several PSH frames (`psh_frames`).

The padding scheme (`PaddingScheme`) says how the client's first writes of a
session are cut and padded: `stop=N` writes are shaped, and for write k the
rule `k=a-b,c,a-b,...` gives the sizes of the TLS writes it becomes (a random
size in each range), `c` meaning "stop here if nothing is left". Bytes still
left after the sizes are sent as they are; a size the data does not fill is
filled with a cmdWaste frame. The server may send a scheme of its own
(cmdUpdatePaddingScheme) for the sessions that follow; the client tells it
which one it has by its md5 in cmdSettings.

UDP goes in a stream to `sp.v2.udp-over-tcp.arpa` (sing's UoT v2): a request
`isConnect (u8)  SOCKS address`, then, with isConnect 0, every datagram as
`address  length (u16 BE)  data`, where the address is sing's own layout
(type 0 IPv4, 1 IPv6, 2 a length byte and a domain; then the port) -- not SOCKS's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import struct
from dataclasses import dataclass, field

from daetui.net.address import ip_of
from daetui.net.stream import DialError
from daetui.outbound._address import socks_address

# Commands (protocol version 1, then 2).
WASTE = 0              # padding: read and dropped
SYN = 1                # the client opens a stream
PSH = 2                # a stream's bytes
FIN = 3                # a stream ends (both ways: anytls has no half-close)
SETTINGS = 4           # the client's settings, first in every session
ALERT = 5              # the server's last words before it ends the session
UPDATE_PADDING = 6     # the server's padding scheme, for the client's next sessions
SYNACK = 7             # v2: the server opened (no data) or could not open (data: why) a stream
HEART_REQUEST = 8      # v2: keep-alive; answered with HEART_RESPONSE
HEART_RESPONSE = 9
SERVER_SETTINGS = 10   # v2: the server's settings (its version), in answer to SETTINGS

NAMES = {WASTE: "waste", SYN: "syn", PSH: "psh", FIN: "fin", SETTINGS: "settings", ALERT: "alert",
         UPDATE_PADDING: "update-padding-scheme", SYNACK: "synack", HEART_REQUEST: "heart-request",
         HEART_RESPONSE: "heart-response", SERVER_SETTINGS: "server-settings"}

HEADER = struct.Struct("!BIH")
MAX_DATA = 0xFFFF            # what the u16 length field carries
PROTOCOL_VERSION = 2

DEFAULT_PADDING = b"""stop=8
0=30-30
1=100-400
2=400-500,c,500-1000,c,500-1000,c,500-1000,c,500-1000
3=9-9,500-1000
4=500-1000
5=500-1000
6=500-1000
7=500-1000"""

CHECK = -1             # a padding rule's `c`
MAX_STOP = 1024        # a server's scheme shaping more writes than this is refused (bounded work per session)
MAX_RULE_SIZES = 64    # sizes in one rule, likewise

UOT_MAGIC = "sp.v2.udp-over-tcp.arpa"
UOT_TYPES = (0, 2, 1)  # sing's (IPv4, domain, IPv6) type bytes
MAX_DATAGRAM = MAX_DATA


# -- frames -------------------------------------------------------------------------------------

def frame(command: int, sid: int, data: bytes | bytearray | memoryview = b"") -> bytes:
    """One frame; DialError when `data` is longer than a frame carries."""
    if len(data) > MAX_DATA:
        raise DialError(f"anytls: {len(data)} bytes do not fit one frame (at most {MAX_DATA})")
    return HEADER.pack(command, sid, len(data)) + bytes(data)


def psh_frames(sid: int, data: bytes | bytearray | memoryview, size: int = MAX_DATA) -> bytes:
    """A stream's bytes as PSH frames of at most `size` bytes each."""
    view = memoryview(data)
    return b"".join(frame(PSH, sid, view[i:i + size]) for i in range(0, len(view), size))


def parse_frame(buf: bytes | bytearray | memoryview) -> tuple[int, int, bytes, int] | None:
    """(command, stream id, data, bytes used) of the frame at the start of `buf`; None while it is incomplete.

    Any command is returned, known or not (the session skips what it does not know: the length says
    how much). A frame is never longer than its header and 65535 bytes, so a reader holds at most that.
    """
    if len(buf) < HEADER.size:
        return None
    command, sid, length = HEADER.unpack_from(buf)
    end = HEADER.size + length
    if len(buf) < end:
        return None
    return command, sid, bytes(buf[HEADER.size:end]), end


# -- the first bytes and the settings -----------------------------------------------------------

def password_hash(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


def auth_request(password: str, padding0: int) -> bytes:
    """What the client sends right after the TLS handshake: the password's hash and padding0."""
    if not 0 <= padding0 <= MAX_DATA:
        raise DialError(f"anytls: padding0 of {padding0} bytes")
    return password_hash(password) + struct.pack("!H", padding0) + bytes(padding0)


def settings_text(values: dict[str, str]) -> bytes:
    """Settings as the protocol writes them: `key=value` lines."""
    return "\n".join(f"{k}={v}" for k, v in values.items()).encode()


def parse_settings(data: bytes) -> dict[str, str]:
    """`key=value` lines to a dict (lines without `=` skipped, as anytls-go does)."""
    out = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def client_settings(client: str, padding_md5: str) -> bytes:
    """The data of the client's cmdSettings."""
    return settings_text({"v": str(PROTOCOL_VERSION), "client": client, "padding-md5": padding_md5})


# -- padding ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PaddingScheme:
    """A parsed padding scheme: `stop` and, per write number, the sizes (ranges and CHECKs) it becomes."""

    raw: bytes
    stop: int
    rules: dict[int, tuple[tuple[int, int], ...]] = field(repr=False)

    @property
    def md5(self) -> str:
        """The scheme's md5 in lower-case hex, as cmdSettings carries it."""
        return hashlib.md5(self.raw).hexdigest()

    def sizes(self, packet: int) -> list[int]:
        """The sizes write number `packet` is cut into (CHECK for `c`), each picked in its range; [] for none."""
        out = []
        for low, high in self.rules.get(packet, ()):
            if low == CHECK:
                out.append(CHECK)
            else:
                out.append(low if low == high else low + secrets.randbelow(high - low))
        return out


def parse_padding(raw: bytes) -> PaddingScheme:
    """A padding scheme's text parsed as anytls-go parses it; ValueError when it is unusable.

    Ranges that are not numbers, or not positive, are skipped as anytls-go skips them; sizes over
    65535 and schemes shaping more than MAX_STOP writes are refused, as no frame or bounded session
    could follow them.
    """
    values = parse_settings(raw)
    try:
        stop = int(values["stop"])
    except (KeyError, ValueError):
        raise ValueError("padding scheme without a number for stop=") from None
    if not 0 <= stop <= MAX_STOP:
        raise ValueError(f"padding scheme stop={stop}: 0 to {MAX_STOP} writes are shaped here")
    rules: dict[int, tuple[tuple[int, int], ...]] = {}
    for key, text in values.items():
        if not key.isdigit() or int(key) >= stop:
            continue
        sizes: list[tuple[int, int]] = []
        for part in text.split(","):
            part = part.strip()
            if part == "c":
                sizes.append((CHECK, CHECK))
                continue
            low_text, sep, high_text = part.partition("-")
            try:
                low, high = sorted((int(low_text), int(high_text)))
            except ValueError:
                continue
            if not sep or low <= 0:
                continue
            if high > MAX_DATA:
                raise ValueError(f"padding scheme {key}={text}: sizes up to {MAX_DATA}")
            sizes.append((low, high))
        if len(sizes) > MAX_RULE_SIZES:
            raise ValueError(f"padding scheme {key}=: more than {MAX_RULE_SIZES} sizes")
        rules[int(key)] = tuple(sizes)
    return PaddingScheme(bytes(raw), stop, rules)


DEFAULT_SCHEME = parse_padding(DEFAULT_PADDING)


def waste(size: int) -> bytes:
    """A cmdWaste frame of `size` bytes in all (header included; at least the header)."""
    return frame(WASTE, 0, bytes(max(0, size - HEADER.size)))


def shape(data: bytes, sizes: list[int]) -> list[bytes]:
    """The TLS writes one write of `data` becomes under a rule's sizes (anytls-go's writeConn).

    Each size takes that much of the data; a size the rest does not fill sends the rest with a
    cmdWaste frame filling up to it (when there is room for one); a size with nothing left is all
    waste; CHECK stops when nothing is left. What is left after the sizes goes as it is.
    """
    out = []
    rest = memoryview(data)
    for size in sizes:
        if size == CHECK:
            if not rest:
                break
            continue
        if len(rest) > size:
            out.append(bytes(rest[:size]))
            rest = rest[size:]
        elif rest:
            fill = size - len(rest) - HEADER.size
            out.append(bytes(rest) + (waste(fill + HEADER.size) if fill > 0 else b""))
            rest = rest[len(rest):]
        else:
            out.append(frame(WASTE, 0, bytes(size)))
    if rest:
        out.append(bytes(rest))
    return out


# -- UDP over TCP (sing's UoT v2) -----------------------------------------------------------------

def uot_request() -> bytes:
    """The UoT v2 request of an association to any destination (isConnect 0: every packet names its own).

    Its address is not used for non-connect associations; mihomo reads it as the association's
    first destination for its rules, and its own legacy path uses 0.0.0.0:0 alike.
    """
    return b"\x00" + socks_address("0.0.0.0", 0)


def uot_address(host: str, port: int) -> bytes:
    """host and port in sing's UoT address layout."""
    try:
        ip = ip_of(host.strip("[]"))
    except ValueError:
        name = host.rstrip(".").encode("idna") if not host.isascii() else host.rstrip(".").encode()
        if not 0 < len(name) <= 255:
            raise DialError(f"domain name of {len(name)} bytes: 1 to 255 fit the address field") from None
        return bytes((UOT_TYPES[1], len(name))) + name + struct.pack("!H", port)
    return bytes((UOT_TYPES[0] if ip.version == 4 else UOT_TYPES[2],)) + ip.packed + struct.pack("!H", port)


def uot_packet(data: bytes, host: str, port: int) -> bytes:
    """One datagram in a non-connect UoT stream."""
    if len(data) > MAX_DATAGRAM:
        raise DialError(f"datagram of {len(data)} bytes: too large for UDP over TCP")
    return uot_address(host, port) + struct.pack("!H", len(data)) + data


def parse_uot_packet(buf: bytes | bytearray | memoryview) -> tuple[bytes, str, int, int] | None:
    """(data, host, port, bytes used) of the datagram at the start of `buf`; None while it is incomplete.

    DialError on an unknown address type.
    """
    if not buf:
        return None
    kind = buf[0]
    if kind == UOT_TYPES[0]:
        end = 5
        host = str(ipaddress.IPv4Address(bytes(buf[1:end]))) if len(buf) >= end else ""
    elif kind == UOT_TYPES[2]:
        end = 17
        host = str(ipaddress.IPv6Address(bytes(buf[1:end]))) if len(buf) >= end else ""
    elif kind == UOT_TYPES[1]:
        if len(buf) < 2:
            return None
        end = 2 + buf[1]
        host = bytes(buf[2:end]).decode("ascii", "replace")
    else:
        raise DialError(f"anytls: UDP packet with unknown address type {kind}")
    if len(buf) < end + 4:
        return None
    port, length = struct.unpack_from("!HH", buf, end)
    start = end + 4
    if len(buf) < start + length:
        return None
    return bytes(buf[start:start + length]), host, port, start + length
