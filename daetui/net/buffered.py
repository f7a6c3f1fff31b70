"""Reading a Stream in frames: exactly n bytes, with what was read too far kept for the next call.

Shared by trojan.py, vless.py and vmess.py: their replies and frames are
parsed from a stream whose `read(n)` returns whatever arrived.
"""

from __future__ import annotations

from daetui.net.stream import DialError, Stream

READ_SIZE = 1 << 16


class Buffered:
    """A read buffer in front of a Stream."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def fill(self) -> bool:
        """Read once more from the stream into the buffer; False at its end."""
        data = await self.stream.read(READ_SIZE)
        if not data:
            return False
        self.buf += data
        return True

    async def hold(self, n: int, closed: str) -> None:
        """At least n bytes in the buffer; DialError(`closed`) if the stream ends (or is reset) first.

        A reply's first bytes: "closed" is the reason a peer that ends without one gives, while a
        transport's own DialError below (an h2 refusal) passes as it is, saying more."""
        while len(self.buf) < n:
            try:
                more = await self.fill()
            except ConnectionError:  # reset
                more = False
            if not more:
                raise DialError(closed)

    async def read_exactly(self, n: int, what: str = "data") -> bytes:
        """Exactly n bytes; DialError naming `what` if the stream ends first."""
        while len(self.buf) < n:
            if not await self.fill():
                raise DialError(f"connection closed in {what} ({len(self.buf)} of {n} bytes)")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_some(self, n: int) -> bytes:
        """Up to n bytes: the buffer's first, else one read of the stream; b"" at its end."""
        if self.buf:
            out = bytes(self.buf[:n])
            del self.buf[:n]
            return out
        return await self.stream.read(n)
