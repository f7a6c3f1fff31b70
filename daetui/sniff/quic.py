"""The SNI of a QUIC Initial: its packet protection removed with the keys anyone can derive (RFC 9001 5.2),
its CRYPTO frames reassembled, and the ClientHello read by the TLS sniffer."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daetui.sniff.common import Malformed, SniffResult, failed
from daetui.sniff.tls import MAX_CLIENT_HELLO, sni_from_handshake


@dataclass(frozen=True, slots=True)
class _QuicVersion:
    salt: bytes
    key_label: bytes
    iv_label: bytes
    hp_label: bytes
    initial: int  # the long-header packet type bits of Initial
    retry: int  # ... and of Retry, which has no Length field


_V1 = _QuicVersion(  # RFC 9001 5.2
    bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic key", b"quic iv", b"quic hp", 0, 3)
# The IETF drafts (0xff0000NN for draft-NN) protect Initials as v1 does, with v1's labels and packet
# types; only the salt changed: one for drafts 23-28 (draft-ietf-quic-tls-23 5.2), another for 29-32
# (draft-ietf-quic-tls-29 5.2), and from draft-33 on the salt RFC 9001 kept. Old clients (Chrome before
# 2021, curl and quiche builds pinned to draft-29) still send them; dae decodes them too
# (component/sniffing/internal/quicutils/version.go, Version_Draft, one salt for every 0xff version).
_SALT_DRAFT_23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
_SALT_DRAFT_29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")


def _draft(salt: bytes) -> _QuicVersion:
    return _QuicVersion(salt, _V1.key_label, _V1.iv_label, _V1.hp_label, _V1.initial, _V1.retry)


QUIC_VERSIONS: dict[int, _QuicVersion] = {
    0x00000001: _V1,
    0x6B3343CF: _QuicVersion(  # RFC 9369 3.3
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 key", b"quicv2 iv", b"quicv2 hp", 1, 0),
    **{0xFF000000 + n: _draft(_SALT_DRAFT_23) for n in range(27, 29)},
    **{0xFF000000 + n: _draft(_SALT_DRAFT_29) for n in range(29, 33)},
    **{0xFF000000 + n: _draft(_V1.salt) for n in range(33, 35)},
}
"""The QUIC versions whose client Initials are decoded: the version field's value to its Initial protection."""


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with SHA-256 and an empty context, for length <= 32 (one HMAC block)."""
    full = b"tls13 " + label
    info = length.to_bytes(2) + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


@dataclass(frozen=True, slots=True)
class _InitialKeys:
    aead: AESGCM
    iv: int
    hp: Cipher[modes.ECB]

    def mask(self, sample: bytes) -> bytes:
        encryptor = self.hp.encryptor()
        return encryptor.update(sample) + encryptor.finalize()


# Keyed by attacker-chosen connection ids, so bounded; it saves the derivation when the
# caller sniffs the same connection again with more datagrams.
@functools.lru_cache(maxsize=256)
def _initial_keys(version: int, dcid: bytes) -> _InitialKeys:
    """The client's Initial keys for a connection (RFC 9001 5.2, RFC 9369 3.3.1)."""
    v = QUIC_VERSIONS[version]
    initial_secret = hmac.digest(v.salt, dcid, hashlib.sha256)  # HKDF-Extract
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    return _InitialKeys(
        aead=AESGCM(_hkdf_expand_label(client_secret, v.key_label, 16)),
        iv=int.from_bytes(_hkdf_expand_label(client_secret, v.iv_label, 12)),
        hp=Cipher(algorithms.AES(_hkdf_expand_label(client_secret, v.hp_label, 16)), modes.ECB()),
    )


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    """A QUIC variable-length integer at `pos`, and the position after it."""
    if pos >= len(buf):
        raise Malformed(f"truncated {what}")
    first = buf[pos]
    n = 1 << (first >> 6)
    if pos + n > len(buf):
        raise Malformed(f"truncated {what}")
    return int.from_bytes(buf[pos:pos + n]) & ((1 << (8 * n - 2)) - 1), pos + n


_FRAME_PADDING = 0x00
_FRAME_PING = 0x01
_FRAME_ACK = 0x02
_FRAME_ACK_ECN = 0x03
_FRAME_CRYPTO = 0x06
_FRAME_CONNECTION_CLOSE = 0x1C
_NONZERO = re.compile(rb"[^\x00]")
# A client coalesces at most an Initial, a 0-RTT and a Handshake packet; past a few, a datagram
# of many tiny valid Initials is only there to make us decrypt them all.
_MAX_PACKETS_PER_DATAGRAM = 8
# Chrome scatters its ClientHello over a few CRYPTO frames among PING and PADDING ("chaos protection");
# thousands of one-byte frames in a 64 KB datagram are only there to make us loop.
_MAX_FRAMES_PER_PACKET = 512


def _crypto_frames(payload: bytes, chunks: list[tuple[int, bytes]]) -> None:
    """Append the (offset, data) of each CRYPTO frame of an Initial packet's payload to `chunks`."""
    pos = 0
    n = len(payload)
    for _ in range(_MAX_FRAMES_PER_PACKET):
        if pos >= n:
            return
        frame, pos = _varint(payload, pos, "frame type")
        if frame == _FRAME_PADDING:
            # Padding fills most of the packet: skip the run at C speed (and without copying the rest,
            # which alternating PADDING and PING frames would make quadratic).
            nonzero = _NONZERO.search(payload, pos)
            pos = n if nonzero is None else nonzero.start()
        elif frame == _FRAME_PING:
            pass
        elif frame == _FRAME_CRYPTO:
            offset, pos = _varint(payload, pos, "CRYPTO offset")
            length, pos = _varint(payload, pos, "CRYPTO length")
            if pos + length > n:
                raise Malformed("CRYPTO frame runs past the packet")
            chunks.append((offset, payload[pos:pos + length]))
            pos += length
        elif frame in (_FRAME_ACK, _FRAME_ACK_ECN):
            # Not in a first flight, but a client that has heard the server acks in Initials.
            _, pos = _varint(payload, pos, "ACK largest")
            _, pos = _varint(payload, pos, "ACK delay")
            ranges, pos = _varint(payload, pos, "ACK range count")
            for _ in range(min(1 + 2 * ranges, n)):  # each field is at least a byte: bounded by the payload
                _, pos = _varint(payload, pos, "ACK range")
            if frame == _FRAME_ACK_ECN:
                for _ in range(3):
                    _, pos = _varint(payload, pos, "ACK ECN count")
        elif frame == _FRAME_CONNECTION_CLOSE:
            _, pos = _varint(payload, pos, "CONNECTION_CLOSE error code")
            _, pos = _varint(payload, pos, "CONNECTION_CLOSE frame type")
            length, pos = _varint(payload, pos, "CONNECTION_CLOSE reason length")
            if pos + length > n:
                raise Malformed("CONNECTION_CLOSE reason runs past the packet")
            pos += length
        else:
            raise Malformed(f"frame type {frame:#x} not allowed in an Initial packet")
    if pos < n:
        raise Malformed("too many frames in an Initial packet")


def _reassemble(chunks: list[tuple[int, bytes]]) -> bytes:
    """The CRYPTO stream from offset 0 up to its first gap."""
    stream = bytearray()
    for offset, data in sorted(chunks, key=lambda c: c[0]):
        if offset > len(stream) or len(stream) > MAX_CLIENT_HELLO + 4:
            break
        # Retransmitted or overlapping data repeats what we have: keep only what is new.
        stream += data[len(stream) - offset:]
    return bytes(stream)


class _QuicConnection:
    """What the Initial packets seen so far carry for one connection."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.dcid: bytes | None = None
        self.chunks: list[tuple[int, bytes]] = []

    def datagram(self, dgram: bytes, first: bool) -> None:
        """Take the client Initial packets of one datagram. Raises Malformed only for a first packet."""
        pos = 0
        for _ in range(_MAX_PACKETS_PER_DATAGRAM):
            if pos >= len(dgram):
                return
            try:
                pos = self._packet(dgram, pos)
            except Malformed:
                # The first packet decides whether this is QUIC at all. A bad packet after it is
                # dropped, as a QUIC endpoint would (RFC 9000 12.2), and ends the datagram.
                if first and pos == 0:
                    raise
                return
            if pos < 0:
                return

    def _packet(self, dgram: bytes, pos: int) -> int:
        """Take the packet at `pos`; the position after it, or -1 if nothing else can be parsed."""
        first = dgram[pos]
        if not first & 0x80:
            if pos == 0:
                raise Malformed("not a QUIC long header packet")
            return -1  # a short-header packet is last in a datagram, and 1-RTT keys are not ours
        if len(dgram) < pos + 7:
            raise Malformed("truncated QUIC long header")
        version = int.from_bytes(dgram[pos + 1:pos + 5])
        params = QUIC_VERSIONS.get(version)
        if params is None:
            if version == 0:
                raise Malformed("QUIC version negotiation packet")
            raise Malformed(f"unsupported QUIC version {version:#010x}")
        p = pos + 5
        dcid_len = dgram[p]
        if dcid_len > 20:
            raise Malformed("QUIC connection id longer than 20 bytes")
        dcid = dgram[p + 1:p + 1 + dcid_len]
        p += 1 + dcid_len
        if p >= len(dgram) or dgram[p] > 20:
            raise Malformed("bad QUIC source connection id")
        p += 1 + dgram[p]
        packet_type = first >> 4 & 3
        if packet_type == params.retry:
            raise Malformed("QUIC Retry packet")
        if packet_type == params.initial:
            token_len, p = _varint(dgram, p, "token length")
            p += token_len
        length, p = _varint(dgram, p, "packet length")
        packet_end = p + length
        if packet_end > len(dgram):
            raise Malformed("QUIC packet runs past the datagram")
        if packet_type != params.initial:
            if pos == 0:
                raise Malformed("not a QUIC Initial packet")
            return packet_end  # 0-RTT or Handshake, coalesced after the Initial
        if self.version is not None and (version, dcid) != (self.version, self.dcid):
            return packet_end  # another connection's packet (RFC 9000 12.2: ignore it)
        self._initial(dgram, pos, p, packet_end, _initial_keys(version, dcid))
        self.version, self.dcid = version, dcid
        return packet_end

    def _initial(self, dgram: bytes, pos: int, pn_offset: int, end: int, keys: _InitialKeys) -> None:
        """Remove header protection, decrypt and collect the CRYPTO frames of one Initial packet."""
        # The sample assumes a 4-byte packet number (RFC 9001 5.4.2).
        sample = dgram[pn_offset + 4:pn_offset + 20]
        if len(sample) < 16 or pn_offset + 20 > end:
            raise Malformed("QUIC Initial too short for its header protection sample")
        mask = keys.mask(sample)
        first = dgram[pos] ^ (mask[0] & 0x0F)
        pn_len = (first & 3) + 1
        pn_bytes = bytes(a ^ b for a, b in zip(dgram[pn_offset:pn_offset + pn_len], mask[1:], strict=False))
        # The first packets of a connection have small numbers: the truncated number is the number.
        nonce = (keys.iv ^ int.from_bytes(pn_bytes)).to_bytes(12)
        header = bytes([first]) + dgram[pos + 1:pn_offset] + pn_bytes
        try:
            payload = keys.aead.decrypt(nonce, dgram[pn_offset + pn_len:end], header)
        except InvalidTag:
            raise Malformed("QUIC Initial fails authentication") from None
        if first & 0x0C:
            raise Malformed("QUIC reserved header bits set")
        if not payload:
            raise Malformed("QUIC Initial without frames")
        chunks: list[tuple[int, bytes]] = []
        _crypto_frames(payload, chunks)
        self.chunks += chunks


def _sniff_quic(datagrams: Iterable[bytes]) -> SniffResult:
    conn = _QuicConnection()
    for i, dgram in enumerate(datagrams):
        if not dgram:
            if i == 0:
                return failed("empty datagram")
            continue
        try:
            conn.datagram(bytes(dgram), first=i == 0)
        except Malformed as e:
            return failed(str(e.args[0]))
    if conn.version is None:
        return failed("no QUIC Initial packet")
    stream = _reassemble(conn.chunks)
    return sni_from_handshake(stream, "quic")


def sniff_quic_datagrams(datagrams: Iterable[bytes]) -> SniffResult:
    """The SNI of the ClientHello in a client's first QUIC datagrams, in the order received.

    The first datagram must start with an Initial packet of a version in
    QUIC_VERSIONS (v1, v2, drafts 27-34) that decrypts, or the result is an
    error. Its connection's Initial packets in all the datagrams (coalesced
    ones too) are decrypted and their CRYPTO frames reassembled in offset
    order; packets that fail, belong to other connections or are of other
    types are skipped. `need_more` means the
    ClientHello continues in a datagram not given yet.
    """
    try:
        return _sniff_quic(datagrams)
    except Exception as e:  # a parser bug must fail the sniff, never the relay
        return failed(f"internal error: {type(e).__name__}")


def sniff_quic_sni(datagram: bytes) -> SniffResult:
    """The SNI of the ClientHello in a client's first QUIC datagram: `sniff_quic_datagrams([datagram])`.

    On `need_more` the ClientHello spans datagrams: pass this one and the
    next ones to `sniff_quic_datagrams`.
    """
    return sniff_quic_datagrams((datagram,))
