"""First packets from the real-world corpus (sniff.json): each gives the name dae's or mihomo's tests expect.

The corpus (../shared/realworld beside the project, SOURCES.md there) holds
ClientHellos, QUIC Initials and HTTP requests from dae's, mihomo's and
aioquic's test suites. `expect` is the name; null where the source test
only checks that a name is found ("asserts only ... " in `source`) or that
none is. `also_ok` names another acceptable outcome (`need_more`), and
`accept_refusal` a pattern of errors acceptable from a sniffer that does
not decode that packet's kind -- but not from daetui's QUIC sniffer for a
version it lists as decoded. The corpus is read where it is, never copied.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from daetui.sniff import SniffResult, sniff_http_host, sniff_quic_datagrams, sniff_tls_sni
from daetui.sniff.quic import QUIC_VERSIONS

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "realworld"
_PATH = CORPUS / "sniff.json"
VECTORS: list[dict[str, Any]] = json.loads(_PATH.read_text(encoding="utf-8")) if _PATH.is_file() else []
PARAMS = [pytest.param(v, id=v["id"]) for v in VECTORS] or [
    pytest.param(None, marks=pytest.mark.skip(reason=f"the real-world corpus is not at {CORPUS}"))]
STREAM_SNIFFERS = {"tls": sniff_tls_sni, "http": sniff_http_host}


def _sniff(vector: dict[str, Any]) -> SniffResult:
    parts = [bytes.fromhex(h) for h in vector["hex"]]
    if vector["kind"] in ("quic", "quic-datagrams"):
        return sniff_quic_datagrams(parts)
    sniffer = STREAM_SNIFFERS[vector["kind"]]
    # A stream arrives in parts: before the last, a sniffer may only ask for more or already name it.
    for cut in range(1, len(parts)):
        early = sniffer(b"".join(parts[:cut]))
        assert early.need_more or early.name is not None, f"after {cut} part(s): {early}"
    return sniffer(b"".join(parts))


def _decoded_version(vector: dict[str, Any]) -> int | None:
    """The QUIC version of the vector's first packet when daetui's QUIC sniffer says it decodes it."""
    if vector["kind"] not in ("quic", "quic-datagrams"):
        return None
    first = bytes.fromhex(vector["hex"][0])
    version = int.from_bytes(first[1:5]) if len(first) >= 5 and first[0] & 0x80 else None
    return version if version in QUIC_VERSIONS else None


@pytest.mark.parametrize("vector", PARAMS)
def test_vector_gives_the_expected_name(vector: dict[str, Any]) -> None:
    result = _sniff(vector)
    expected_protocol = "quic" if vector["kind"].startswith("quic") else vector["kind"]
    expect = vector.get("expect")
    if result.name is not None:
        assert result.protocol == expected_protocol
    if expect is not None:
        if vector.get("also_ok") == "need_more" and result.need_more:
            return
        refusal = vector.get("accept_refusal")
        if refusal and result.error is not None and _decoded_version(vector) is None:
            assert re.search(refusal, result.error, re.IGNORECASE), result.error
            return
        assert result.name == expect, result
    elif "asserts only" in vector["source"]:
        assert result.name, result  # the source test checks only that a name is found
    else:
        assert result.name is None and not result.need_more, result  # ... or that none is


def test_quic_draft_vector_is_decoded_now() -> None:
    # Without this the draft-29 vector could pass by its accept_refusal alone, were QUIC_VERSIONS to lose drafts.
    drafts = [v for v in VECTORS if v["kind"] == "quic" and bytes.fromhex(v["hex"][0])[1:4] == b"\xff\x00\x00"]
    if not drafts:
        pytest.skip("no QUIC draft vector in the corpus")
    for vector in drafts:
        assert _decoded_version(vector) is not None, vector["id"]
        assert _sniff(vector).name == vector["expect"]


# -- draft versions beyond the corpus's one vector ------------------------------------------------------
# An Initial sealed here step by step (RFC 9001 5.2-5.4, with `cryptography`'s HKDF and AES, not quic.py's
# code) with each draft's salt from its own spec, around the ClientHello of a corpus TLS vector.
SALTS = {
    **{0xFF000000 + n: "c3eef712c72ebb5a11a7d2432bb46365bef9f502" for n in (27, 28)},  # draft-ietf-quic-tls-23..28
    **{0xFF000000 + n: "afbfec289993d24c9e9786f19c6111e04390a899" for n in (29, 30, 31, 32)},  # -29..32
    **{0xFF000000 + n: "38762cf7f55934b34d179ae6a4c80cadccbb7f0a" for n in (33, 34)},  # -33 on, kept by RFC 9001
}


def _expand_label(secret: bytes, label: str, length: int) -> bytes:
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2) + bytes([len(full)]) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def _sealed_initial(version: int, salt: bytes, client_hello: bytes) -> bytes:
    dcid = bytes.fromhex("8394c8f03e515708")
    client = _expand_label(hmac.digest(salt, dcid, hashlib.sha256), "client in", 32)
    key, iv, hp = (_expand_label(client, "quic key", 16), _expand_label(client, "quic iv", 12),
                   _expand_label(client, "quic hp", 16))
    crypto = b"\x06\x00" + (0x4000 | len(client_hello)).to_bytes(2) + client_hello
    plain = crypto + bytes(1162 - len(crypto))  # PADDING frames to a full-size datagram
    pn = (2).to_bytes(4)
    length = (0x4000 | (len(pn) + len(plain) + 16)).to_bytes(2)
    header = bytes([0xC3]) + version.to_bytes(4) + bytes([len(dcid)]) + dcid + b"\x00" + b"\x00" + length + pn
    sealed = AESGCM(key).encrypt((int.from_bytes(iv) ^ 2).to_bytes(12), plain, header)
    sample = sealed[4 - len(pn):4 - len(pn) + 16]  # 4 bytes after the packet number's start
    encryptor = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = encryptor.update(sample) + encryptor.finalize()
    pn_at = len(header) - len(pn)
    protected = bytearray(header)
    protected[0] ^= mask[0] & 0x0F
    for i in range(len(pn)):
        protected[pn_at + i] ^= mask[1 + i]
    return bytes(protected) + sealed


@pytest.mark.parametrize("version", sorted(SALTS), ids=lambda v: f"draft-{v & 0xFF}")
def test_quic_drafts_decoded_with_their_own_salt(version: int) -> None:
    vector = next((v for v in VECTORS if v["id"] == "dae-tls-tlsStreamWindowsOdinGame"), None)
    if vector is None:
        pytest.skip("the corpus's TLS vector is not there")
    client_hello = bytes.fromhex(vector["hex"][0])[5:]  # the handshake message, without its TLS record header
    datagram = _sealed_initial(version, bytes.fromhex(SALTS[version]), client_hello)
    assert sniff_quic_datagrams([datagram]).name == vector["expect"]
    # Another draft's salt gives keys that do not open it: the salt is chosen by the version.
    other = next(s for s in set(SALTS.values()) if s != SALTS[version])
    assert sniff_quic_datagrams([_sealed_initial(version, bytes.fromhex(other), client_hello)]).name is None
