"""Shadowsocks' stream ciphers (the pre-AEAD methods: rc4-md5, aes-*-cfb/ctr, camellia-*-cfb, bf-cfb,
salsa20, chacha20, chacha20-ietf), as shadowsocks-libev 3.3 speaks them.

They have no integrity: a wrong password or a tampered byte gives garbage, not an error. dae and
ss-server still accept them and old subscriptions still carry them, so a node using one works,
and its dialer logs `WARNING` once when it is made.

TCP: each direction is its IV, then one continuous keystream over everything after it (the
client's first bytes are the target address, SOCKS5-style). UDP: each packet is a fresh IV and
the encrypted address + payload. The key is EVP_BytesToKey(password) as for AEAD; rc4-md5 keys
RC4 with MD5(key + IV). Salsa20 comes from pycryptodomex (OpenSSL has none); the others from
`cryptography` (its "decrepit" ciphers where they have moved there).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

try:  # cryptography >= 43 keeps the old ciphers and CFB apart
    from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4, Blowfish, Camellia
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.algorithms import ARC4, Blowfish, Camellia  # type: ignore
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore

WARNING = "a stream cipher: no integrity (anyone on the path can alter the traffic); prefer an AEAD method"


class _Update(Protocol):
    def update(self, data: bytes) -> bytes: ...


def _cipher(algorithm: Callable[[bytes], object], mode: Callable[[bytes], object] | None) -> Callable[..., _Update]:
    def make(key: bytes, iv: bytes, encrypt: bool) -> _Update:
        c = Cipher(algorithm(key), mode(iv) if mode is not None else None)  # type: ignore[arg-type]
        return c.encryptor() if encrypt else c.decryptor()  # type: ignore[return-value]
    return make


def _rc4_md5(key: bytes, iv: bytes, encrypt: bool) -> _Update:
    c = Cipher(ARC4(hashlib.md5(key + iv).digest()), None)
    return c.encryptor() if encrypt else c.decryptor()  # type: ignore[return-value]


def _chacha20(key: bytes, iv: bytes, encrypt: bool) -> _Update:
    # OpenSSL's ChaCha20 takes the 16 bytes after the key as counter + nonce: a zero block
    # counter, then the 8-byte (original) or 12-byte (IETF) nonce.
    c = Cipher(algorithms.ChaCha20(key, bytes(16 - len(iv)) + iv), None)
    return c.encryptor() if encrypt else c.decryptor()  # type: ignore[return-value]


class _Salsa20:
    """Salsa20 over pycryptodomex, one keystream across calls (encryption and decryption are the same)."""

    def __init__(self, key: bytes, iv: bytes, encrypt: bool) -> None:
        from Cryptodome.Cipher import Salsa20  # only a node using salsa20 pays for the import

        self._c = Salsa20.new(key=key, nonce=iv)

    def update(self, data: bytes) -> bytes:
        return self._c.encrypt(data)


@dataclass(frozen=True)
class StreamMethod:
    """A stream cipher as shadowsocks names it: key and IV sizes, and how to make one direction's cipher."""

    name: str
    key_size: int
    salt_size: int  # the IV, sent where an AEAD method sends its salt
    make: Callable[[bytes, bytes, bool], _Update]
    kind = "stream"

    def key_of(self, password: str) -> bytes:
        """EVP_BytesToKey(password), as for the AEAD methods."""
        from daetui.outbound.shadowsocks import master_key

        return master_key(password, self.key_size)

    def sealer(self, key: bytes, iv: bytes) -> StreamSealer:
        """The encryption of the client's direction, after `iv`."""
        return StreamSealer(self.make(key, iv, True))

    def opener(self, key: bytes, iv: bytes, request_salt: bytes = b"") -> StreamOpener:
        """The decryption of the server's direction, after its `iv`."""
        return StreamOpener(self.make(key, iv, False))

    def datagrams(self, key: bytes) -> StreamPackets:
        """The UDP codec (no state across packets)."""
        return StreamPackets(self, key)


class StreamPackets:
    """The UDP codec of a stream cipher: a fresh IV, then address + data encrypted under it; no integrity."""

    def __init__(self, method: StreamMethod, key: bytes) -> None:
        self.method = method
        self.key = key

    def seal(self, address: bytes, data: bytes) -> bytes:
        iv = os.urandom(self.method.salt_size)
        return iv + self.method.make(self.key, iv, True).update(address + data)

    def open(self, packet: bytes) -> tuple[bytes, int]:
        """(plain, 0): the address + data of a packet from the server (garbage if it was not ours)."""
        size = self.method.salt_size
        if len(packet) < size + 1:
            from daetui.outbound.shadowsocks import AuthError

            raise AuthError(f"packet of {len(packet)} bytes is too short")
        return self.method.make(self.key, packet[:size], False).update(packet[size:]), 0


class StreamSealer:
    """One direction's encryption: every byte through one keystream."""

    __slots__ = ("_c",)

    def __init__(self, c: _Update) -> None:
        self._c = c

    def seal(self, data: bytes | bytearray | memoryview) -> bytes:
        return self._c.update(bytes(data)) if data else b""

    def seal_first(self, header: bytes, data: bytes | bytearray | memoryview) -> bytes:
        """The target address and the first bytes."""
        return self._c.update(header + bytes(data))


class StreamOpener:
    """One direction's decryption; nothing is ever pending or failed (no chunks, no tags)."""

    __slots__ = ("_c", "chunks")
    pending = 0
    failure = None

    def __init__(self, c: _Update) -> None:
        self._c = c
        self.chunks = 0

    def feed(self, data: bytes) -> bytes:
        self.chunks += 1
        return self._c.update(data)


def _aes(key: bytes) -> algorithms.AES:
    return algorithms.AES(key)


METHODS: dict[str, StreamMethod] = {m.name: m for m in (
    StreamMethod("rc4-md5", 16, 16, _rc4_md5),
    StreamMethod("aes-128-cfb", 16, 16, _cipher(_aes, CFB)),
    StreamMethod("aes-192-cfb", 24, 16, _cipher(_aes, CFB)),
    StreamMethod("aes-256-cfb", 32, 16, _cipher(_aes, CFB)),
    StreamMethod("aes-128-ctr", 16, 16, _cipher(_aes, modes.CTR)),
    StreamMethod("aes-192-ctr", 24, 16, _cipher(_aes, modes.CTR)),
    StreamMethod("aes-256-ctr", 32, 16, _cipher(_aes, modes.CTR)),
    StreamMethod("camellia-128-cfb", 16, 16, _cipher(Camellia, CFB)),
    StreamMethod("camellia-192-cfb", 24, 16, _cipher(Camellia, CFB)),
    StreamMethod("camellia-256-cfb", 32, 16, _cipher(Camellia, CFB)),
    StreamMethod("bf-cfb", 16, 8, _cipher(Blowfish, CFB)),
    StreamMethod("salsa20", 32, 8, _Salsa20),
    StreamMethod("chacha20", 32, 8, _chacha20),
    StreamMethod("chacha20-ietf", 32, 12, _chacha20),
)}
