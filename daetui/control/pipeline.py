"""Every relayed flow from accept to finish: one object per TCP connection, owning its sockets.

    accept -> route (the kernel's record, decision.Decider) -> sniff its first bytes when the
    route calls for a name -> route again by the name -> announce -> block, or dial (the group's
    node, or direct) -> relay (relay.relay picks how) -> finish

A UDP flow takes the same steps in `Pipeline.open_udp`, which the NAT table
(udp.py) calls for a flow's first datagram. Each step lands in the connection
table, which the console shows, and its opening and end on the event bus.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Protocol

from daetui.config.model import GlobalConfig
from daetui.control.budget import FlowBudget, flows_for_descriptors, pipe_bound, raise_nofile_limit
from daetui.control.connections import Connection, ConnectionTable, Endpoint
from daetui.control.decision import Decider
from daetui.control.events import EventBus
from daetui.control.flowio import accept_loop, sniff_first
from daetui.control.idle import IdleWatch
from daetui.control.looplag import LoopLag
from daetui.control.relay import HAVE_SPLICE, PipePool, relay
from daetui.control.udp import UdpNat
from daetui.net.sockopts import reset_on_close
from daetui.net.stream import Datagrams, DialError, Stream
from daetui.outbound.direct import DirectDialer
from daetui.outbound.manager import Outbounds
from daetui.routing.ruleset import BLOCK
from daetui.sniff import sniff

log = logging.getLogger("daetui.control")
conn_log = logging.getLogger("daetui.conn")

class RelayWorkersLike(Protocol):
    """What the pipeline asks of the relay workers (workers.py, which builds on this module)."""

    def close(self, conn_id: int, why: str) -> bool: ...


class Pipeline:
    """What every flow shares: the decider, the outbounds, the connection table and the event bus.

    It runs the accept loops and keeps each TCP flow's task, so that a flow can
    be closed from the console (`close`) and all of them ended on stop. It holds
    the relay path's budgets (`start`): flows per client and overall, the idle
    timeout, the splice pipes; and it watches the event loop's lag.
    """

    def __init__(self, decider: Decider, outbounds: Outbounds, direct: DirectDialer, connections: ConnectionTable,
                 events: EventBus, sniffing_timeout: float, use_splice: bool = HAVE_SPLICE) -> None:
        self.decider = decider
        self.outbounds = outbounds
        self.direct = direct
        self.connections = connections
        self.events = events
        self.sniffing_timeout = sniffing_timeout
        self.use_splice = use_splice
        self.running = False            # while True, a cancelled flow was closed on request (the plane goes on)
        self.udp: UdpNat | None = None  # the NAT table whose flows `close` may end too
        self.workers: RelayWorkersLike | None = None  # the relay workers whose flows `close` may end too
        self._accepting: list[asyncio.Task[None]] = []
        self._flows: set[asyncio.Task[None]] = set()
        self._by_conn: dict[int, asyncio.Task[None]] = {}
        self._ending: dict[int, str] = {}   # why a flow is being cancelled, when not from the console
        self.budget = FlowBudget()
        self.fd_limit = 0
        self.pipes = PipePool()
        self.idle: IdleWatch | None = None
        self.lag = LoopLag()

    def start(self, g: GlobalConfig) -> None:
        """Raise the descriptor limit, set the budgets from `g`, start the idle watch and the lag meter."""
        self.fd_limit, _hard = raise_nofile_limit()
        self.configure(g)
        self.pipes = PipePool(pipe_bound(self.fd_limit))
        self.idle = IdleWatch(self.connections, g.tcp_idle_timeout, self._expire_idle)
        self.idle.start()
        self.lag.start()

    def configure(self, g: GlobalConfig) -> None:
        """The budgets of `g` (at start and on reload): flows held under what the descriptor limit allows."""
        cap = flows_for_descriptors(self.fd_limit) if self.fd_limit else g.max_flows
        if cap < g.max_flows:
            log.info("max_flows %d held at %d: the descriptor limit is %d", g.max_flows, cap, self.fd_limit)
        self.budget.max_flows = min(g.max_flows, cap)
        self.budget.max_flows_per_client = g.max_flows_per_client
        if self.idle is not None:
            self.idle.timeout = g.tcp_idle_timeout
        if self.udp is not None:
            self.udp.configure(g.udp_buffer_bytes, g.udp_flow_buffer_bytes)

    def _expire_idle(self, conn_id: int) -> None:
        timeout = self.idle.timeout if self.idle is not None else 0
        why = f"idle for {timeout:g}s (tcp_idle_timeout)"
        task = self._by_conn.get(conn_id)
        if task is not None and not task.done():
            self._ending[conn_id] = why
            task.cancel()
        elif self.workers is not None:
            self.workers.close(conn_id, why)

    # -- accepting ------------------------------------------------------------------------------
    def accept(self, listeners: list[socket.socket]) -> None:
        """Accept on these TCP listeners until stopped."""
        for sock in listeners:
            self._accepting.append(asyncio.ensure_future(accept_loop(sock, self._accepted)))

    def _accepted(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        if not self.budget.take(addr[0]):
            # Over a budget: refused with a reset, before any work (counted in the budget).
            reset_on_close(sock)
            sock.close()
            return
        task = asyncio.get_running_loop().create_task(self.handle_tcp(sock, addr))
        self._flows.add(task)
        task.add_done_callback(self._flow_done(addr[0]))

    def _flow_done(self, client: str) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._flows.discard(task)
            self.budget.give(client)
        return done

    async def handle_tcp(self, sock: socket.socket, client: Endpoint) -> None:
        """One accepted connection, to its end."""
        await TcpFlow(self, sock, client).run()

    async def stop_accepting(self) -> None:
        for t in self._accepting:
            t.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._accepting.clear()

    async def stop(self) -> None:
        """End every TCP flow (their clients see a reset)."""
        await self.stop_accepting()
        for t in list(self._flows):
            t.cancel()
        await asyncio.gather(*self._flows, return_exceptions=True)
        if self.idle is not None:
            await self.idle.stop()
        await self.lag.stop()
        self.pipes.close()

    def close(self, ids: list[int]) -> int:
        """Close relayed connections (with a reset to the client); returns how many were open."""
        n = 0
        for cid in ids:
            task = self._by_conn.get(cid)
            if task is not None and not task.done():
                task.cancel()
                n += 1
                continue
            if self.udp is not None and self.udp.close_conn(cid):
                n += 1
                continue
            if self.workers is not None and self.workers.close(cid, self._ending.pop(cid, None) or
                                                               "closed from the console"):
                n += 1
        return n

    # -- the steps every flow takes -----------------------------------------------------------------
    def open_conn(self, proto: str, client: Endpoint, dst: Endpoint, relay_kind: str) -> Connection:
        """The flow's row in the connection table, with its route as the kernel (or the rules) gave it."""
        r = self.decider.first(proto, client, dst)
        return self.connections.add(proto=proto, src=client, dst=dst, rule_index=r.rule_index, rule=r.rule,
                                    outbound=r.outbound, stage=r.stage, mac=r.mac, relay=relay_kind, pid=r.pid,
                                    process=r.process, mark=r.mark)

    def announce(self, conn: Connection) -> None:
        if conn_log.isEnabledFor(logging.INFO):  # describe() is work: skipped when nobody reads it
            conn_log.info("open %s", conn.describe())
        self.events.publish("conn.open", id=conn.id)

    def finish(self, conn: Connection, error: str | None) -> None:
        self.connections.finish(conn, error)
        if conn_log.isEnabledFor(logging.INFO):
            conn_log.info("%s", conn.describe())
        self.events.publish("conn.close", id=conn.id)

    async def open_udp(self, client: Endpoint, dst: Endpoint, first: bytes
                       ) -> tuple[socket.socket | Datagrams, Connection] | None:
        """A UDP flow's first datagram: its route, and the socket or proxy datagrams to relay it through."""
        conn = self.open_conn("udp", client, dst, "udp")
        if self.decider.wants_name(conn):
            self.decider.with_name(conn, sniff(first, "udp"))  # a QUIC Initial names its server
        self.announce(conn)
        if conn.outbound == BLOCK:
            self.finish(conn, "blocked")
            return None
        family = 6 if ":" in dst[0] else 4
        try:
            dialer, node = self.outbounds.dialer(conn.outbound, family, conn.mark)
            conn.node = node
            if node is None:
                assert isinstance(dialer, DirectDialer)   # dialer() gives direct_for(mark) when there is no node
                return dialer.udp_socket(*dst), conn
            return await dialer.datagrams(), conn
        except (OSError, DialError) as e:
            if conn.node is not None:
                self.outbounds.failed(conn.node, family, str(e))
            self.finish(conn, str(e))
            return None


class TcpFlow:
    """One relayed TCP connection: owns the client's socket and the upstream stream from accept to finish."""

    def __init__(self, pipeline: Pipeline, sock: socket.socket, client: Endpoint) -> None:
        self.p = pipeline
        self.sock = sock
        self.client = client
        self.upstream: Stream | None = None

    async def run(self) -> None:
        p, sock = self.p, self.sock
        sock.setblocking(False)
        try:
            name = sock.getsockname()
            conn = p.open_conn("tcp", self.client, (name[0], name[1]), "splice" if p.use_splice else "copy")
        except Exception as e:
            log.error("tcp from %s: %s", self.client, e)
            sock.close()
            return
        me = asyncio.current_task()
        if me is not None:
            p._by_conn[conn.id] = me  # type: ignore[assignment]
        try:
            first = b""
            if p.decider.wants_name(conn):
                first, sniffed = await sniff_first(sock, p.sniffing_timeout)
                p.decider.with_name(conn, sniffed)
            p.announce(conn)
            if conn.outbound == BLOCK:
                reset_on_close(sock)
                p.finish(conn, "blocked")
                return
            self.upstream = await self._dial(conn)
            if first:
                await self.upstream.write(first)
                conn.up += len(first)
            p.finish(conn, await relay(sock, self.upstream, conn, p.use_splice, p.pipes))
        except asyncio.CancelledError:
            reset_on_close(sock)
            why = p._ending.pop(conn.id, None)
            p.finish(conn, why or ("closed from the console" if p.running else "daetui stopped"))
            if p.running and me is not None and me.cancelling():
                me.uncancel()  # closed on request (or idle): the plane goes on
                return
            raise
        except Exception as e:
            reset_on_close(sock)
            p.finish(conn, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        finally:
            p._by_conn.pop(conn.id, None)
            p._ending.pop(conn.id, None)
            sock.close()
            if self.upstream is not None:
                self.upstream.close()

    async def _dial(self, conn: Connection) -> Stream:
        """The upstream: the group's node for the flow's family (noting a failure), or direct."""
        family = 6 if ":" in conn.dst[0] else 4
        dialer, node = self.p.outbounds.dialer(conn.outbound, family, conn.mark)
        conn.node = node
        try:
            return await dialer.connect(self.p.decider.dial_host(conn, node), conn.dst[1])
        except DialError as e:
            if node is not None:
                self.p.outbounds.failed(node, family, str(e))
            raise
