"""What the console shows of a control plane, as plain values: the Snapshot, and the maps' view.

Built on the plane's loop from what its parts hold; cheap enough for every
refresh (the kernel's flows are read once, as raw bytes, and decoded by the
reader). The maps are read on request only, off the loop.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from daetui.abi.constants import ABI
from daetui.abi.flowrecord import RawFlows
from daetui.control.budget import open_descriptors
from daetui.control.state import ApiStatus, Budgets, Health, InterfaceInfo, RuleInfo, Snapshot
from daetui.dataplane.mapview import MapView

if TYPE_CHECKING:
    from daetui.control.plane import ControlPlane

_LISTENER_NAMES = {v: k.lower() for k, v in ABI.prefixed("LISTENER_").items()}


def build_snapshot(plane: ControlPlane, raw_flows: RawFlows | None, with_dns: bool = True) -> Snapshot:
    """Everything the console shows of `plane` now."""
    dp, sync, g = plane.dataplane, plane.sync, plane.config.global_
    prog = sync.program
    gen = sync.generation
    rs = sync.ruleset(gen)
    hits = sync.rule_hits()
    rules = tuple(RuleInfo(e.index, e.text, e.enabled, e.name, e.id, *hits[e.index]) for e in rs.entries)
    slots = plane.listeners.slots() if plane.listeners else {}
    groups, nodes = plane.outbounds.state()
    health = Health(
        pid=os.getpid(), started=plane.started, config=plane.config.source,
        tproxy_port=g.tproxy_port, generation=gen, fallback=rs.fallback,
        fail_open=g.fail_open, listeners=tuple(_LISTENER_NAMES[s] for s in sorted(slots)),
        match_sets=dp.state.match_sets if dp else 0,
        kernel_load_seconds=prog.load_seconds if prog is not None else 0.0, kernel=dp is not None)
    return Snapshot(
        time=time.time(), health=health, rules=rules, fallback_hits=hits[None][0],
        outbounds={i: n for n, i in rs.outbound_ids().items()}, interfaces=interfaces(plane),
        missing_interfaces=tuple(dp.state.missing) if dp else (),
        connections=tuple(plane.connections.snapshot()),
        raw_flows=raw_flows, counters=prog.counters() if prog is not None else {},
        udp_nat_entries=len(plane.udp.entries) if plane.udp else 0, total_connections=plane.connections.total,
        devices=dict(plane.config.devices), dns=plane.dns.controller.state() if with_dns else None,
        groups=groups, nodes=nodes, budgets=budgets(plane),
        api=plane.api_status() if plane.api_status is not None else ApiStatus())


_fds_cache: list[float] = [0.0, 0.0]   # (when, count): /proc/self/fd is listed at most once a second


def _descriptors() -> int:
    now = time.monotonic()
    if now - _fds_cache[0] >= 1.0:
        _fds_cache[:] = [now, float(open_descriptors())]
    return int(_fds_cache[1])


def budgets(plane: ControlPlane) -> Budgets:
    """The relay path's resources now, and their bounds."""
    p, udp, w = plane.pipeline, plane.udp, plane.workers
    b = p.budget
    client, held = b.busiest()
    return Budgets(
        flows=b.flows, max_flows=b.max_flows, max_flows_per_client=b.max_flows_per_client,
        busiest_client=client, busiest_flows=held, refused=b.refused, refused_client=b.refused_client,
        last_refused=b.last_refused, idle_closed=p.idle.expired if p.idle else 0,
        tcp_idle_timeout=p.idle.timeout if p.idle else 0.0, fds=_descriptors(), fd_limit=p.fd_limit,
        pipes=p.pipes.total, pipe_bound=p.pipes.bound, pipe_fallbacks=p.pipes.fallbacks,
        udp_buffered=udp.buffered if udp else 0, udp_buffer_limit=udp.buffer_bytes if udp else 0,
        udp_flow_buffer_limit=udp.flow_buffer_bytes if udp else 0,
        udp_buffer_drops=udp.buffer_drops if udp else 0, udp_refused=udp.refused if udp else 0,
        udp_open_failed=udp.dropped if udp else 0,
        loop_lag_p99_ms=p.lag.p99() * 1000, loop_lag_max_ms=p.lag.max() * 1000,
        workers=w.count if w else 0, workers_live=w.live() if w else 0, worker_deaths=w.deaths if w else 0)


def interfaces(plane: ControlPlane) -> tuple[InterfaceInfo, ...]:
    """Every interface of the namespace, with what is bound to it and its counters."""
    dp = plane.dataplane
    if dp is None:
        return ()
    stats = dp.program.interface_stats() if dp.program is not None else {}
    links = dict(plane.monitor.links) if plane.monitor else {}
    bound = {b.ifindex: b for b in dp.state.bindings.values()}
    out = []
    for idx, link in sorted(links.items()):
        b = bound.get(idx)
        s = stats.get(idx, {})
        side = dp.side_of(link.name)
        out.append(InterfaceInfo(
            index=idx, name=link.name, up=link.up, configured=side is not None, bound=b is not None,
            since=b.since if b else None, programs=b.programs if b else (),
            rx_packets=s.get("rx_packets", 0), rx_bytes=s.get("rx_bytes", 0),
            tx_packets=s.get("tx_packets", 0), tx_bytes=s.get("tx_bytes", 0),
            side=b.side if b else side[0] if side else "lan",
            matched=b.matched if b else side[1] if side and side[1] != link.name else None))
    return tuple(out)


def map_view(plane: ControlPlane) -> MapView | None:
    """The kernel's maps, decoded with what the plane knows (rule sets, listeners, interfaces, names)."""
    prog = plane.sync.program
    if prog is None:
        return None
    held = {slot: "{}:{}".format(*sock.getsockname()[:2])
            for slot, sock in (plane.listeners.slots().items() if plane.listeners else [])}
    if plane.workers is not None:
        held.update(plane.workers.held_slots())
    monitor = plane.monitor
    # A copy: the monitor's thread changes its dict (and replaces it on a resync) while this one reads.
    return MapView(prog, plane.sync.ruleset, lambda: held,
                   lambda: {i: lk.name for i, lk in dict(monitor.links if monitor else {}).items()},
                   names=plane.names.names)
