"""Plain DNS over UDP to one upstream: a few connected sockets, reused, each registered with the loop once.

A socket of its own per query cost a socket, SO_MARK, connect, and an epoll add and remove
per query: on loopback, as long as unbound took to answer. Here a socket carries at most SOCKET_USES queries and is
used for at most SOCKET_AGE seconds; then it is retired (it takes no more queries) and closed
once its last query is over. Each socket is a new random source port (the kernel's choice at
connect), so the port keeps changing, and every query still gets a random ID of its own,
never used twice on its socket.

A reply is taken only when its ID *and* its question match a query waiting on that socket
(`answers_question`); anything else is a stray or a forgery: counted (`stray`), ignored, and
the query goes on waiting. A reply for a query that is over (answered, or given up at its
timeout) is dropped without counting. An error on a socket (an ICMP port unreachable: nothing
listens there) fails every query waiting on it, as it would have failed each of their own
sockets, and the socket is closed: the next query opens another.

At most MAX_SOCKETS sockets are open per upstream, so at most MAX_SOCKETS * SOCKET_USES queries
are in flight; past that a query waits for a socket to close, within its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
import time
from collections import deque
from collections.abc import Callable

from daetui.dns.wire import HEADER, answers_question, query_wire
from daetui.net.sockopts import set_mark

# A port in use is a port an off-path forger can look for (SAD DNS finds them by ICMP side channel):
# each is used briefly, by few queries. dnsmasq likewise shares its random-port sockets.
SOCKET_USES = 16     # queries per socket: its source port is replaced at least this often
SOCKET_AGE = 2.0     # seconds a socket takes new queries, however few it had
MAX_SOCKETS = 64     # per upstream, retired ones still waiting for replies included
MAX_MESSAGE = 65535
READ_BATCH = 16      # replies read per wake-up before other callbacks get their turn
_ID = struct.Struct("!H")


class _Socket:
    """One connected socket and the queries sent on it."""

    __slots__ = ("born", "closed", "live", "loop", "retired", "sock", "uses", "waiting")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.born = time.monotonic()
        self.uses = 0
        self.live = 0              # queries still waiting for their reply
        self.retired = False
        self.closed = False
        # ID -> (question, its waiter) while the query waits; None once it is over (its ID stays taken).
        self.waiting: dict[int, tuple[bytes, asyncio.Future[bytes]] | None] = {}


class UdpPool:
    """Queries to one upstream (address, port) over UDP; `stray` is called for every reply that is not an answer."""

    def __init__(self, ip: str, port: int, mark: int, stray: Callable[[], None]) -> None:
        self.ip, self.port = ip, port
        self.mark = mark                     # SO_MARK of new sockets (a reload may change it)
        self.stray = stray
        self.opened = 0                      # sockets opened, ever (tests, figures)
        self._family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self._active: _Socket | None = None  # the socket new queries go to
        self._open: set[_Socket] = set()
        self._room: deque[asyncio.Future[None]] = deque()  # queries waiting for a socket to close

    async def exchange(self, question: bytes) -> bytes:
        """The answer to `question` (name, type, class); OSError when the socket fails. Cancel it to give up."""
        s = self._socket()
        while s is None:
            await self._wait_room()
            s = self._socket()
        if self._room:
            self._wake()  # there may be room for more than this one (a new socket takes SOCKET_USES)
        qid = secrets.randbits(16)
        while qid in s.waiting:
            qid = secrets.randbits(16)
        fut: asyncio.Future[bytes] = s.loop.create_future()
        s.waiting[qid] = (question, fut)
        s.uses += 1
        s.live += 1
        try:
            try:
                s.sock.send(query_wire(qid, question))
            except OSError as e:
                self._broken(s, e)  # this query's error, and its neighbours' (one socket, one error)
            return await fut
        finally:
            s.waiting[qid] = None  # over: a late or repeated reply is dropped, the ID not used again
            s.live -= 1
            if s.retired and not s.live:
                self._close(s)

    def close(self) -> None:
        """Retire every socket: each closes when its last query is over (now, for idle ones)."""
        for s in list(self._open):
            self._retire(s)

    @property
    def sockets(self) -> int:
        return len(self._open)

    # -- sockets -----------------------------------------------------------------------------------
    def _socket(self) -> _Socket | None:
        """The socket for a new query, a new one when the last is used up; None when MAX_SOCKETS are open."""
        s = self._active
        if s is not None and (s.uses >= SOCKET_USES or time.monotonic() - s.born > SOCKET_AGE):
            self._retire(s)
            s = None
        if s is None:
            if len(self._open) >= MAX_SOCKETS:
                return None
            s = self._active = self._new()
        return s

    def _new(self) -> _Socket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            set_mark(sock, self.mark)  # keeps it out of our own capture
            sock.setblocking(False)
            sock.connect((self.ip, self.port))  # a random source port, and only this upstream's datagrams
            s = _Socket(sock, loop)
            loop.add_reader(sock.fileno(), self._readable, s)
        except BaseException:
            sock.close()
            raise
        self._open.add(s)
        self.opened += 1
        return s

    def _retire(self, s: _Socket) -> None:
        s.retired = True
        if self._active is s:
            self._active = None
        if not s.live:
            self._close(s)

    def _close(self, s: _Socket) -> None:
        if s.closed:
            return
        s.closed = True
        s.retired = True
        if self._active is s:
            self._active = None
        self._open.discard(s)
        with contextlib.suppress(Exception):  # the loop may be closed already (shutdown)
            s.loop.remove_reader(s.sock.fileno())
        s.sock.close()
        self._wake()

    def _wake(self) -> None:
        """The first query waiting for room tries again."""
        while self._room:
            w = self._room.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def _wait_room(self) -> None:
        w: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room.append(w)
        try:
            await w
        except BaseException:  # its time ran out
            if w.done() and not w.cancelled():
                self._wake()  # it was woken already: the next in line gets the turn
            else:
                with contextlib.suppress(ValueError):
                    self._room.remove(w)
            raise

    def _broken(self, s: _Socket, e: OSError) -> None:
        """An error on `s`: every query waiting on it fails with it, and it is closed."""
        for entry in s.waiting.values():
            if entry is not None and not entry[1].done():
                # One exception each (a raised exception collects its own traceback).
                entry[1].set_exception(type(e)(e.errno, e.strerror) if e.errno is not None else OSError(str(e)))
        self._close(s)

    # -- replies ------------------------------------------------------------------------------------
    def _readable(self, s: _Socket) -> None:
        for _ in range(READ_BATCH):
            if s.closed:
                return
            try:
                data = s.sock.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._broken(s, e)
                return
            if len(data) < HEADER:
                self.stray()
                continue
            qid = _ID.unpack_from(data)[0]
            entry = s.waiting.get(qid)
            if entry is None:
                if qid not in s.waiting:
                    self.stray()  # an ID never used here
                continue          # else a late or repeated reply to a query that is over
            question, fut = entry
            if not answers_question(data, qid, question):
                self.stray()      # our ID, another question: forged, or not ours; ours may still come
                continue
            s.waiting[qid] = None
            if not fut.done():
                fut.set_result(data)
