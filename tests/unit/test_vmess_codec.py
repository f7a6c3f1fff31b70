"""vmess's response header and chunks opened by ChunkCodec as their bytes arrive, split anywhere.

The server's side is made with the module's own primitives (the response key
and IV, ChunkCipher); v2ray itself is the peer in the kernel tests.
"""

from __future__ import annotations

import random
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from daetui.net.stream import DialError, PlainCodec
from daetui.outbound.vmess import (
    CMD_TCP,
    RESP_IV,
    RESP_KEY,
    RESP_LEN_IV,
    RESP_LEN_KEY,
    SECURITY_IDS,
    ChunkCipher,
    ChunkCodec,
    Request,
    VmessStream,
    kdf,
)


def server_bytes(req: Request, payloads: list[bytes], end: bool = True, check: int | None = None) -> bytes:
    """What a vmess server sends back: the sealed response header, the chunks, the empty chunk."""
    key, iv = req.response_key, req.response_iv
    header = bytes((req.check if check is None else check, 0, 0, 0))
    out = AESGCM(kdf(key, RESP_LEN_KEY)[:16]).encrypt(kdf(iv, RESP_LEN_IV)[:12], struct.pack("!H", len(header)), None)
    out += AESGCM(kdf(key, RESP_KEY)[:16]).encrypt(kdf(iv, RESP_IV)[:12], header, None)
    sender = ChunkCipher(req.security, key, iv)
    out += b"".join(sender.seal(p) for p in payloads)
    return out + (sender.seal(b"") if end else b"")


def codec_for(security: str = "aes-128-gcm") -> tuple[Request, ChunkCodec]:
    req = Request.new(SECURITY_IDS[security], CMD_TCP, "203.0.113.10", 80)
    stream = VmessStream(None, req)  # type: ignore[arg-type] # no stream below: only its state is used
    return req, ChunkCodec(PlainCodec(), stream)


@pytest.mark.parametrize("security", ["aes-128-gcm", "chacha20-poly1305"])
@pytest.mark.parametrize("seed", range(8))
def test_bytes_come_out_whole_however_the_reads_split(security, seed):
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.choice((1, 100, 16384, 20000))) for _ in range(5)]
    req, codec = codec_for(security)
    data = server_bytes(req, payloads)
    out, pos = b"", 0
    while pos < len(data):
        n = rng.choice((1, 2, 17, 18, 19, 500, 40000))
        out += codec.decode(data[pos:pos + n])
        pos += n
        assert not codec.server_ended or pos >= len(data) - 100  # the end comes with the last bytes
    assert out == b"".join(payloads) and codec.server_ended
    codec.decode_eof()


def test_an_answer_to_another_request_is_refused():
    req, codec = codec_for()
    with pytest.raises(DialError, match="does not answer this request"):
        codec.decode(server_bytes(req, [b"x"], check=(req.check + 1) % 256))


def test_an_end_inside_a_chunk_or_before_the_header_is_an_error():
    req, codec = codec_for()
    data = server_bytes(req, [b"y" * 1000], end=False)
    assert codec.decode(data[:-10]) == b""
    with pytest.raises(DialError, match="closed in a vmess chunk"):
        codec.decode_eof()
    req, codec = codec_for()
    codec.decode(server_bytes(req, [])[:10])
    with pytest.raises(DialError, match="closed without a response"):
        codec.decode_eof()
    # TCP's end between chunks is an end, as read() takes it.
    req, codec = codec_for()
    assert codec.decode(server_bytes(req, [b"z"], end=False)) == b"z"
    codec.decode_eof()


def test_what_goes_up_is_chunks_and_the_end_is_the_empty_chunk():
    req, codec = codec_for()
    up = codec.encode(b"a" * 40000)
    opener = ChunkCipher(req.security, req.body_key, req.body_iv)
    got, pos = b"", 0
    while pos < len(up):
        size, padding = opener.open_size(up[pos:pos + 2])
        got += opener.open(up[pos + 2:pos + 2 + size - padding])
        pos += 2 + size
    assert got == b"a" * 40000
    end, fin = codec.encode_eof()
    size, padding = opener.open_size(end[:2])
    assert size == 16 + padding and fin is False  # the empty chunk; TCP stays open for the answer
    with pytest.raises(DialError, match="write after the end"):
        codec.encode(b"more")
