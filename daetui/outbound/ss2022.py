"""Shadowsocks 2022 (SIP022: https://github.com/Shadowsocks-NET/shadowsocks-specs/blob/main/2022-1-shadowsocks-2022-edition.md).

Methods 2022-blake3-aes-128-gcm, 2022-blake3-aes-256-gcm, 2022-blake3-chacha20-poly1305. The
password is the key itself, base64 (16 or 32 bytes); `iPSK:...:uPSK` names the identity keys of
relays in front of the user's server (extensible identity headers, AES methods only).

TCP, client to server: salt, one identity header per iPSK, then
  AEAD(type 0, timestamp u64, length u16 of the next chunk)           (a fixed 11-byte header)
  AEAD(address, padding length u16, padding, first payload)            (the variable header)
then chunks as in AEAD-2019 (AEAD(length) + AEAD(payload), up to 0xFFFF bytes), all under the
session subkey BLAKE3-derive("shadowsocks 2022 session subkey", uPSK + salt), nonces counting.
Server to client: salt, AEAD(type 1, timestamp, the request's salt, length u16) + AEAD(first
payload), then chunks. A reply whose salt is not ours or whose time is off by more than 30 s is
refused (the replay protection the protocol rests on).

UDP (AES methods): AES-ECB(PSK, session id u64 + packet id u64), identity headers, then
AEAD(type, timestamp, [client session id,] padding length, padding, address, payload) under
the subkey of (uPSK + session id) with the separate header's last 12 bytes as nonce. ChaCha20:
a 24-byte nonce and XChaCha20-Poly1305(PSK) over the whole (pycryptodomex: `cryptography` has
no XChaCha20).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from daetui.outbound.shadowsocks import TAG_SIZE, AuthError, Opener, Sealer, decode_address

MAX_PAYLOAD = 0xFFFF
MAX_TIME_DIFF = 30  # seconds either way (the spec's bound)
MAX_PADDING = 900
TYPE_CLIENT, TYPE_SERVER = 0, 1
SESSION_INFO = "shadowsocks 2022 session subkey"
IDENTITY_INFO = "shadowsocks 2022 identity subkey"
# Server sessions a UDP association remembers (their packet ids, for replay checks): bounded.
MAX_SERVER_SESSIONS = 16
REPLAY_WINDOW = 1024


def _derive(info: str, material: bytes, size: int) -> bytes:
    return blake3.blake3(material, derive_key_context=info).digest(size)


def _ecb(key: bytes, block: bytes, encrypt: bool) -> bytes:
    c = Cipher(algorithms.AES(key), modes.ECB())
    op = c.encryptor() if encrypt else c.decryptor()
    return op.update(block) + op.finalize()


@dataclass(frozen=True)
class Keys:
    """The keys of a node: identity keys of the relays in front (iPSKs), then the user's key (uPSK)."""

    identities: tuple[bytes, ...]
    user: bytes

    @property
    def first(self) -> bytes:
        """The key the first server reads headers with."""
        return self.identities[0] if self.identities else self.user


@dataclass(frozen=True)
class Method2022:
    """A shadowsocks 2022 method: its key size and AEAD."""

    name: str
    key_size: int
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305]
    kind = "2022"

    @property
    def salt_size(self) -> int:
        return self.key_size

    @property
    def max_payload(self) -> int:
        return MAX_PAYLOAD

    def _decode(self, password: str) -> list[bytes]:
        keys = []
        for i, part in enumerate(password.split(":")):
            try:
                key = base64.b64decode(part + "=" * (-len(part) % 4), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not key:
                raise ValueError(f"key {i + 1} of the password is not base64 (a {self.name} password is a "
                                 f"base64 key of {self.key_size} bytes, e.g. `openssl rand -base64 {self.key_size}`)")
            if len(key) < self.key_size:
                raise ValueError(f"key {i + 1} of the password is {len(key)} bytes; {self.name} takes "
                                 f"{self.key_size}")
            keys.append(key)
        return keys

    def check_password(self, password: str) -> None:
        """What dae refuses in a link: a key that is not base64 or is too short (ValueError says which)."""
        self._decode(password)

    def key_of(self, password: str) -> Keys:
        """The keys in a password: `:`-separated base64 keys of exactly key_size bytes (ValueError names a bad one).

        Stricter than check_password, as servers are: a longer key, or identity keys with ChaCha20, cannot work.
        """
        keys = self._decode(password)
        for i, key in enumerate(keys):
            if len(key) != self.key_size:
                raise ValueError(f"key {i + 1} of the password is {len(key)} bytes; {self.name} takes "
                                 f"{self.key_size}")
        if len(keys) > 1 and self.aead is not AESGCM:
            raise ValueError(f"{self.name} has no identity headers: a multi-key password needs an AES method")
        return Keys(tuple(keys[:-1]), keys[-1])

    def _identity_headers(self, keys: Keys, salt: bytes) -> bytes:
        out = b""
        chain = (*keys.identities, keys.user)
        for ipsk, nxt in itertools.pairwise(chain):
            sub = _derive(IDENTITY_INFO, ipsk + salt, self.key_size)
            out += _ecb(sub, blake3.blake3(nxt).digest(16), True)
        return out

    def sealer(self, keys: Keys, salt: bytes) -> Sealer2022:
        """The client's direction: identity headers and request header on the first seal, then chunks."""
        aead = self.aead(_derive(SESSION_INFO, keys.user + salt, self.key_size))
        return Sealer2022(aead, self._identity_headers(keys, salt))

    def opener(self, keys: Keys, salt: bytes, request_salt: bytes = b"") -> Opener2022:
        """The server's direction, after its salt; `request_salt` is ours, which its header must repeat."""
        return Opener2022(self.aead(_derive(SESSION_INFO, keys.user + salt, self.key_size)), request_salt)

    def datagrams(self, keys: Keys) -> Udp2022:
        """The UDP codec of one association (a session id of its own)."""
        return Udp2022(self, keys)


def _padding(n: int) -> bytes:
    return n.to_bytes(2, "big") + os.urandom(n)


class Sealer2022(Sealer):
    """The client's direction: the 2022 request header first, then AEAD chunks of up to 0xFFFF bytes."""

    __slots__ = ("_eih",)
    max_payload = MAX_PAYLOAD

    def __init__(self, aead: AESGCM | ChaCha20Poly1305, eih: bytes) -> None:
        super().__init__(aead)  # type: ignore[arg-type]
        self._eih = eih

    def seal_first(self, header: bytes, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """Identity headers, the fixed and variable headers (address, padding, as much of `data` as fits), chunks."""
        room = MAX_PAYLOAD - len(header) - 2 - MAX_PADDING
        first, rest = bytes(data[:room]), data[room:]
        # No payload yet: padding hides the header's length (the spec asks for it then).
        pad = _padding(0 if first else 1 + int.from_bytes(os.urandom(2), "big") % MAX_PADDING)
        variable = header + pad + first
        fixed = struct.pack(">BQH", TYPE_CLIENT, int(time.time()), len(variable))
        out = self._eih + self._seal_one(fixed) + self._seal_one(variable)
        return out + self.seal(rest) if rest else out

    def _seal_one(self, plain: bytes) -> bytes:
        n = self._counter
        self._counter = n + 1
        return self._aead.encrypt(n.to_bytes(12, "little"), plain, None)


class Opener2022(Opener):
    """The server's direction: its header (our salt, a fresh time, the first chunk's length), then chunks."""

    __slots__ = ("_header", "_request_salt")
    max_payload = MAX_PAYLOAD

    def __init__(self, aead: AESGCM | ChaCha20Poly1305, request_salt: bytes) -> None:
        super().__init__(aead)  # type: ignore[arg-type]
        self._request_salt = request_salt
        self._header = True  # its fixed header is still to come

    @property
    def pending(self) -> int:
        return len(self._buf) if self._header else super().pending

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        if self._header:
            size = 1 + 8 + len(self._request_salt) + 2 + TAG_SIZE
            self._buf += data
            if len(self._buf) < size:
                return
            head, data = bytes(self._buf[:size]), bytes(self._buf[size:])
            self._buf.clear()
            self._header = False
            self._open_header(head)
        super()._feed(data, out)

    def _open_header(self, sealed: bytes) -> None:
        try:
            plain = self._aead.decrypt(bytes(12), sealed, None)
        except InvalidTag:
            raise AuthError("response header failed authentication") from None
        self._counter = 1
        kind, stamp = plain[0], int.from_bytes(plain[1:9], "big")
        salt, length = plain[9:-2], int.from_bytes(plain[-2:], "big")
        if kind != TYPE_SERVER:
            raise AuthError(f"response header of type {kind} (expected {TYPE_SERVER})")
        if abs(time.time() - stamp) > MAX_TIME_DIFF:
            raise AuthError(f"response time {stamp} is more than {MAX_TIME_DIFF}s off this clock (clocks out of "
                            "step, or a replay)")
        if salt != self._request_salt:
            raise AuthError("response is for another request (its request salt is not ours): a replay?")
        self._length = length  # the first payload chunk follows with no length frame of its own


class Udp2022:
    """One UDP association's packets: our session id and packet counter, the server's sessions checked."""

    def __init__(self, method: Method2022, keys: Keys) -> None:
        self.method = method
        self.keys = keys
        self.session = os.urandom(8)
        self._packet = 0
        self._aead = method.aead(_derive(SESSION_INFO, keys.user + self.session, method.key_size))
        # server session id -> (its AEAD, the highest packet id seen, a bitmap of the ones below it)
        self._servers: OrderedDict[bytes, list[object]] = OrderedDict()

    def seal(self, address: bytes, data: bytes) -> bytes:
        """A packet to the server carrying `data` for `address` (SOCKS5 form)."""
        packet_id = self._packet
        self._packet += 1
        body = struct.pack(">BQ", TYPE_CLIENT, int(time.time())) + _padding(0) + address + data
        if self.method.aead is not AESGCM:
            from Cryptodome.Cipher import ChaCha20_Poly1305

            nonce = os.urandom(24)
            c = ChaCha20_Poly1305.new(key=self.keys.user, nonce=nonce)
            sealed, tag = c.encrypt_and_digest(self.session + packet_id.to_bytes(8, "big") + body)
            return nonce + sealed + tag
        separate = self.session + packet_id.to_bytes(8, "big")
        eih = b""
        chain = (*self.keys.identities, self.keys.user)
        for ipsk, nxt in itertools.pairwise(chain):
            mask = blake3.blake3(nxt).digest(16)
            eih += _ecb(ipsk, bytes(a ^ b for a, b in zip(mask, separate, strict=True)), True)
        return (_ecb(self.keys.first, separate, True) + eih
                + self._aead.encrypt(separate[4:], body, None))

    def open(self, packet: bytes) -> tuple[bytes, int]:
        """(plain, offset of the address in it) of a server packet; AuthError when it is not good."""
        if self.method.aead is not AESGCM:
            from Cryptodome.Cipher import ChaCha20_Poly1305

            if len(packet) < 24 + 16 + 16 + 9 + 8 + 2:
                raise AuthError(f"packet of {len(packet)} bytes is too short")
            c = ChaCha20_Poly1305.new(key=self.keys.user, nonce=packet[:24])
            try:
                plain = c.decrypt_and_verify(packet[24:-16], packet[-16:])
            except ValueError:
                raise AuthError("packet failed authentication") from None
            server, packet_id, plain = plain[:8], int.from_bytes(plain[8:16], "big"), plain[16:]
            self._check_replay(server, packet_id)
        else:
            if len(packet) < 16 + 9 + 8 + 2 + TAG_SIZE:
                raise AuthError(f"packet of {len(packet)} bytes is too short")
            separate = _ecb(self.keys.user, packet[:16], False)
            server, packet_id = separate[:8], int.from_bytes(separate[8:], "big")
            state = self._servers.get(server)
            aead = state[0] if state is not None else self.method.aead(
                _derive(SESSION_INFO, self.keys.user + server, self.method.key_size))
            try:
                plain = aead.decrypt(separate[4:], packet[16:], None)  # type: ignore[union-attr]
            except InvalidTag:
                raise AuthError("packet failed authentication") from None
            self._check_replay(server, packet_id, aead)
        kind, stamp = plain[0], int.from_bytes(plain[1:9], "big")
        if kind != TYPE_SERVER:
            raise AuthError(f"packet of type {kind} (expected {TYPE_SERVER})")
        if abs(time.time() - stamp) > MAX_TIME_DIFF:
            raise AuthError(f"packet time is more than {MAX_TIME_DIFF}s off this clock")
        if plain[9:17] != self.session:
            raise AuthError("packet for another session")
        pad = int.from_bytes(plain[17:19], "big")
        start = 19 + pad
        decode_address(plain, start)  # raises ValueError when malformed: the caller counts it
        return plain, start

    def _check_replay(self, server: bytes, packet_id: int, aead: object = None) -> None:
        state = self._servers.get(server)
        if state is None:
            state = [aead, -1, 0]
            self._servers[server] = state
            while len(self._servers) > MAX_SERVER_SESSIONS:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(server)
        _, top, seen = state
        assert isinstance(top, int) and isinstance(seen, int)
        if packet_id > top:
            shift = packet_id - top
            state[1] = packet_id
            state[2] = ((seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            return
        back = top - packet_id
        if back >= REPLAY_WINDOW or (seen >> back) & 1:
            raise AuthError(f"packet {packet_id} replayed or too old")
        state[2] = seen | (1 << back)


METHODS: dict[str, Method2022] = {m.name: m for m in (
    Method2022("2022-blake3-aes-128-gcm", 16, AESGCM),
    Method2022("2022-blake3-aes-256-gcm", 32, AESGCM),
    Method2022("2022-blake3-chacha20-poly1305", 32, ChaCha20Poly1305),
)}
