"""XChaCha20-Poly1305 written from draft-irtf-cfrg-xchacha over `cryptography`'s ChaCha20 and ChaCha20-Poly1305:
the reference the shadowsocks method (pycryptodomex's XChaCha20) is checked against, in the unit tests and
against ss-server."""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305


def ref_hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha, 2.2): ChaCha20's rounds over constants, key and the 16-byte nonce,
    words 0-3 and 12-15 without the final addition. A ChaCha20 block is that state plus the rounds' result,
    and cryptography's ChaCha20 takes exactly those 16 bytes as counter + nonce: the block minus the state."""
    block = Cipher(algorithms.ChaCha20(key, nonce16), None).encryptor().update(bytes(64))
    state = [*(int.from_bytes(b"expand 32-byte k"[i:i + 4], "little") for i in range(0, 16, 4)),
             *(int.from_bytes(key[i:i + 4], "little") for i in range(0, 32, 4)),
             *(int.from_bytes(nonce16[i:i + 4], "little") for i in range(0, 16, 4))]
    words = [(int.from_bytes(block[4 * i:4 * i + 4], "little") - state[i]) % 2**32
             for i in (0, 1, 2, 3, 12, 13, 14, 15)]
    return b"".join(w.to_bytes(4, "little") for w in words)


class RefXChaCha20Poly1305:
    """XChaCha20-Poly1305 (the draft's 2.3): ChaCha20-Poly1305 under HChaCha20(key, nonce[:16]), with 4 zero bytes
    and nonce[16:] as its nonce; the 12-byte ss counter given is the 24-byte nonce's first half (the rest zero)."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _inner(self, nonce12: bytes) -> tuple[ChaCha20Poly1305, bytes]:
        n = nonce12 + bytes(12)
        return ChaCha20Poly1305(ref_hchacha20(self.key, n[:16])), bytes(4) + n[16:]

    def encrypt(self, nonce12: bytes, data: bytes, aad: bytes | None) -> bytes:
        aead, n = self._inner(nonce12)
        return aead.encrypt(n, data, aad)

    def decrypt(self, nonce12: bytes, data: bytes, aad: bytes | None) -> bytes:
        aead, n = self._inner(nonce12)
        return aead.decrypt(n, data, aad)
