"""Probes that change things, run in a network namespace made for them: it dies with its last socket.

A thread of its own unshares its network namespace (the rest of the
process stays where it was), makes a link there, and tries what daetui
does at start: a clsact qdisc, a TC program that assigns sockets, an
sk_lookup program linked to the namespace, transparent sockets, and the
policy routing that makes marked packets local. Each step is undone
explicitly as well, so nothing depends on the namespace going away.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from daetui.config.schema import TPROXY_MARK
from daetui.dataplane.bpflink import attach_sk_lookup
from daetui.dataplane.system import ROUTE_TABLE, RULE_PRIORITY, TC_HANDLE, TC_PARENT, TC_PRIO, has_clsact
from daetui.doctor.rawbpf import LoadError, load_sk_assign_program, load_sk_lookup_program
from daetui.doctor.report import Check, Verdict, blocker, not_probed, ok, warn
from daetui.net.netns import CLONE_NEWNET
from daetui.net.sockopts import set_transparent

_libc = ctypes.CDLL(None, use_errno=True)
LINK = "dtdoctor0"
NAMES = ("clsact", "bpf_sk_assign", "sk_lookup", "IP_TRANSPARENT", "TPROXY routing")


def _unshare_net() -> None:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def in_new_netns(fn: Callable[[], list[Check]], timeout: float = 60.0) -> list[Check]:
    """Run `fn` on a thread moved into a new, empty network namespace; its checks, or the reason it could not."""
    out: list[Check] = []
    failed: list[BaseException] = []

    def main() -> None:
        try:
            _unshare_net()
            out.extend(fn())
        except BaseException as e:
            failed.append(e)

    t = threading.Thread(target=main, name="daetui-doctor-netns", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"the namespace probes did not finish in {timeout:.0f} s")
    if failed:
        raise failed[0]
    return out


def probe_all(privileged: bool, ipv6: bool) -> list[Check]:
    """The five probes, in a throwaway namespace; `not probed` lines when none can be made."""
    if not privileged:
        return [not_probed(n, "a throwaway network namespace needs root") for n in NAMES]
    try:
        return in_new_netns(lambda: _probes(ipv6))
    except OSError as e:
        why = f"no throwaway network namespace could be made ({e.strerror or e})"
        return [warn(n, f"not probed: {why}", "run `daetui doctor` as root on the host, not in a container")
                for n in NAMES]


def _probes(ipv6: bool) -> list[Check]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    checks: list[Check] = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        kind = _make_link(ipr, NetlinkError)
        idx = ipr.link_lookup(ifname=LINK)[0]
        ipr.link("set", index=idx, state="up")
        try:
            checks.append(_clsact(ipr, idx, kind, NetlinkError))
            checks.append(_sk_assign(ipr, idx, checks[-1].verdict is Verdict.OK, NetlinkError))
            checks.append(_sk_lookup())
            checks.append(_transparent(ipv6))
            checks.append(_tproxy_routing(ipr, lo, ipv6, NetlinkError))
        finally:
            with contextlib.suppress(Exception):
                ipr.tc("del", "clsact", idx)
            with contextlib.suppress(Exception):
                ipr.link("del", index=idx)
    return checks


def _make_link(ipr: Any, netlink_error: type[Exception]) -> str:
    """A dummy link, or a veth pair where the kernel has no dummy driver."""
    try:
        ipr.link("add", ifname=LINK, kind="dummy")
        return "dummy"
    except netlink_error:
        ipr.link("add", ifname=LINK, kind="veth", peer=f"{LINK}p")
        return "veth"


def _clsact(ipr: Any, idx: int, kind: str, netlink_error: type[Exception]) -> Check:
    name = "clsact"
    try:
        ipr.tc("add", "clsact", idx)
    except netlink_error as e:
        return blocker(name, f"the kernel refused a clsact qdisc on a {kind} link ({e}): daetui attaches its "
                       "programs to the LAN interfaces' clsact ingress and egress hooks",
                       "a kernel with CONFIG_NET_SCH_INGRESS (clsact) and CONFIG_NET_CLS_BPF")
    if not has_clsact(ipr, idx):
        return blocker(name, "a clsact qdisc was accepted but is not listed", "a kernel with CONFIG_NET_SCH_INGRESS")
    return ok(name, f"added and removed a clsact qdisc on a {kind} link in a throwaway network namespace")


def _sk_assign(ipr: Any, idx: int, have_clsact: bool, netlink_error: type[Exception]) -> Check:
    name = "bpf_sk_assign"
    try:
        fd = load_sk_assign_program()
    except LoadError as e:
        return blocker(name, f"a TC program calling bpf_skc_lookup_tcp and bpf_sk_assign was refused "
                       f"({e.strerror}: {e.log or 'no verifier log'}): daetui hands LAN flows to its sockets with "
                       "them", "a kernel with bpf_sk_assign for TC programs (Linux 5.7 or newer)")
    except OSError as e:
        return blocker(name, f"a TC program could not be loaded ({e.strerror or e})",
                       "see the bpf syscall check above")
    try:
        if not have_clsact:
            return warn(name, "the kernel accepts a TC program using bpf_sk_assign; not attached (no clsact)")
        try:
            ipr.tc("add-filter", "bpf", idx, handle=TC_HANDLE, fd=fd, name="dt_doctor_tc",
                   parent=TC_PARENT["ingress"], classid=1, direct_action=True, prio=TC_PRIO)
        except netlink_error as e:
            return blocker(name, f"a TC program using bpf_sk_assign loaded but could not be attached ({e})",
                           "a kernel with CONFIG_NET_CLS_BPF")
        return ok(name, "a TC program using bpf_skc_lookup_tcp and bpf_sk_assign loaded and attached to a clsact "
                  "ingress hook")
    finally:
        os.close(fd)


def _sk_lookup() -> Check:
    name = "sk_lookup"
    try:
        fd = load_sk_lookup_program()
    except OSError as e:
        log = f": {e.log}" if isinstance(e, LoadError) and e.log else ""
        return blocker(name, f"the kernel refused an sk_lookup program ({e.strerror or e}{log}): daetui steers "
                       "traffic for the router's own addresses to its listeners with one",
                       "a kernel with BPF sk_lookup (Linux 5.9 or newer, CONFIG_INET)")
    try:
        try:
            link = attach_sk_lookup(fd)
        except OSError as e:
            return blocker(name, f"an sk_lookup program loaded but could not be linked to a network namespace "
                           f"({e.strerror or e})", "a kernel with BPF links for sk_lookup (Linux 5.9 or newer)")
        os.close(link)
        return ok(name, "an sk_lookup program loaded and linked to a throwaway network namespace")
    finally:
        os.close(fd)


def _transparent(ipv6: bool) -> Check:
    """A transparent socket bound to an address that is not local: what daetui's UDP replies do."""
    name = "IP_TRANSPARENT"
    tried = [(socket.AF_INET, "198.51.100.1")] + ([(socket.AF_INET6, "2001:db8::1")] if ipv6 else [])
    for family, addr in tried:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            set_transparent(s)
            s.bind((addr, 0))
        except OSError as e:
            opt = "IPV6_TRANSPARENT" if family == socket.AF_INET6 else "IP_TRANSPARENT"
            return blocker(name, f"{opt} on a socket bound to {addr} failed ({e.strerror}): daetui's listeners and "
                           "UDP replies use transparent sockets", "a kernel with IP_TRANSPARENT (any Linux since "
                           "2.6.28) and CAP_NET_ADMIN")
        finally:
            s.close()
    v = "IPv4 and IPv6" if ipv6 else "IPv4 (IPv6 is off)"
    return ok(name, f"transparent {v} sockets bound to addresses that are not local")


def _tproxy_routing(ipr: Any, lo: int, ipv6: bool, netlink_error: type[Exception]) -> Check:
    """`ip rule add fwmark M/M lookup T` and `ip route add local default dev lo table T`, as daetui does."""
    name = "TPROXY routing"
    families = [(socket.AF_INET, 4)] + ([(socket.AF_INET6, 6)] if ipv6 else [])
    for family, v in families:
        try:
            ipr.rule("add", table=ROUTE_TABLE, priority=RULE_PRIORITY, fwmark=TPROXY_MARK, fwmask=TPROXY_MARK,
                     family=family)
            ipr.route("add", dst="default", type="local", scope=254, table=ROUTE_TABLE, oif=lo, family=family)
        except netlink_error as e:
            code = getattr(e, "code", 0)
            why = "no policy routing" if code in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP) else str(e)
            opt = "CONFIG_IPV6_MULTIPLE_TABLES" if v == 6 else "CONFIG_IP_MULTIPLE_TABLES"
            return blocker(name, f"IPv{v}: a fwmark rule with a local default route in table {ROUTE_TABLE} could "
                           f"not be made ({why}): daetui makes marked packets local with them",
                           f"a kernel with {opt}")
        finally:
            with contextlib.suppress(Exception):
                ipr.route("del", dst="default", type="local", scope=254, table=ROUTE_TABLE, oif=lo, family=family)
            with contextlib.suppress(Exception):
                ipr.rule("del", table=ROUTE_TABLE, priority=RULE_PRIORITY, fwmark=TPROXY_MARK, fwmask=TPROXY_MARK,
                         family=family)
    v = "IPv4 and IPv6" if ipv6 else "IPv4 (IPv6 is off)"
    return ok(name, f"{v}: fwmark {TPROXY_MARK:#x} lookup {ROUTE_TABLE} with a local default route, made and removed")
