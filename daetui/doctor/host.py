"""The host as it is, read only: interfaces, other TC filters and firewall rules, sysctls, the port.

Nothing here changes the system, except that the tproxy port is bound for
an instant to see whether it is free.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
from typing import Any

from daetui.config.schema import TPROXY_MARK
from daetui.dataplane.system import ROUTE_TABLE, RULE_PRIORITY, TC_HANDLE, TC_PRIO, read_sysctl
from daetui.doctor.report import Check, blocker, clean, not_probed, ok, warn
from daetui.doctor.target import Target

_DIRECTIONS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}


def _ifindex(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def check_interfaces(t: Target, ipr: Any) -> Check:
    name = "interfaces"
    if not t.configured:
        return ok(name, "no config read: no LAN or WAN interfaces to look at")
    if not t.lan:
        return warn(name, "the config names no lan_interface: daetui attaches to nothing and proxies no LAN traffic",
                    "set lan_interface in [global]")
    missing = [n for n in t.interfaces if _ifindex(ipr, n) is None]
    have = ", ".join(clean(n) for n in t.interfaces if n not in missing)
    if missing:
        return warn(name, f"{', '.join(clean(n) for n in missing)} do(es) not exist now (present: {have or 'none'}): "
                    "daetui binds a LAN interface when it appears", "check the names in lan_interface/wan_interface")
    return ok(name, f"present: {have}")


def _foreign_filters(ipr: Any, idx: int, parent: int) -> list[str]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msgs = list(ipr.get_filters(index=idx, parent=parent))
    except NetlinkError:
        return []  # no clsact here: no filters
    out = []
    for f in msgs:
        prio, kind = (f["info"] >> 16) & 0xFFFF, f.get_attr("TCA_KIND")
        if not f["handle"] or (prio == TC_PRIO and f["handle"] == TC_HANDLE and kind == "bpf"):
            continue  # a priority's header line, or daetui's own filter
        opts = f.get_attr("TCA_OPTIONS")
        prog = opts.get_attr("TCA_BPF_NAME") if kind == "bpf" and opts is not None else None
        out.append(f"{kind} prio {prio}" + (f" ({clean(prog)})" if prog else ""))
    return sorted(set(out))


def check_tc_filters(t: Target, ipr: Any) -> Check:
    name = "tc filters"
    if not t.interfaces:
        return ok(name, "no configured interfaces to look at")
    found = []
    for ifname in t.interfaces:
        idx = _ifindex(ipr, ifname)
        if idx is None:
            continue
        for direction, parent in _DIRECTIONS.items():
            for f in _foreign_filters(ipr, idx, parent):
                found.append(f"{clean(ifname)} {direction}: {f}")
    if found:
        return warn(name, f"filters that are not daetui's: {'; '.join(found[:6])}: one with a lower prio than "
                    f"daetui's ({TC_PRIO}) sees packets first and may redirect or drop them",
                    "remove them (tc filter del dev IFACE ingress prio N), or make sure they pass daetui's traffic")
    return ok(name, f"no filters but daetui's on {', '.join(clean(n) for n in t.interfaces)}")


_NFT_MARK = re.compile(r"mark set (0x[0-9a-f]+|\d+)")
_IPT_MARK = re.compile(r"--set-x?mark (0x[0-9a-f]+|\d+)")


def _read(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def firewall_conflicts(t: Target, nft: str | None, ipt: str | None) -> list[str]:
    """Rules that would fight daetui: other TPROXY rules, and marks that set daetui's bits."""
    out = []
    for source, text, tproxy, mark in (("nft", nft, " tproxy ", _NFT_MARK), ("iptables", ipt, "-j TPROXY", _IPT_MARK)):
        for line in (text or "").splitlines():
            low = line.lower()
            m = mark.search(low)
            if tproxy.lower() in low or (m and int(m.group(1), 0) & t.marks):
                out.append(f"{source}: {clean(line.strip())[:120]}")
    return out


def check_firewall(t: Target, priv: bool) -> Check:
    name = "nft/iptables"
    if not priv:
        return not_probed(name, "reading the ruleset needs CAP_NET_ADMIN")
    nft = _read(["nft", "list", "ruleset"])
    ipt = "\n".join(filter(None, [_read(["iptables-save"]), _read(["ip6tables-save"])])) or None
    if nft is None and ipt is None:
        return ok(name, "no nft or iptables ruleset could be read (neither is installed, or both are empty)")
    found = firewall_conflicts(t, nft, ipt)
    if found:
        return warn(name, f"{len(found)} rule(s) may fight daetui's TPROXY (another tproxy, or marks that set "
                    f"daetui's bits {t.marks:#x}): {' | '.join(found[:3])}",
                    "remove them, or move daetui's marks (so_mark_from_dae) clear of theirs")
    read = " and ".join(s for s, x in (("nft", nft), ("iptables", ipt)) if x is not None)
    return ok(name, f"no tproxy rules and no marks on daetui's bits in the {read} ruleset")


def check_policy_routing(t: Target, ipr: Any) -> Check:
    """Rules or routes where daetui's go: daetui refuses to start over ones it did not make."""
    name = "policy routing"
    clash, near = [], []
    for family, v in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
        with contextlib.suppress(Exception):
            for r in ipr.get_rules(family=family):
                table, prio, mark = r.get_attr("FRA_TABLE"), r.get_attr("FRA_PRIORITY"), r.get_attr("FRA_FWMARK")
                if table == ROUTE_TABLE and prio == RULE_PRIORITY and mark == TPROXY_MARK:
                    clash.append(f"IPv{v} rule fwmark {mark:#x} lookup {table} pref {prio}")
                elif table == ROUTE_TABLE or prio == RULE_PRIORITY or (mark or 0) & TPROXY_MARK:
                    near.append(f"IPv{v} rule pref {prio} fwmark {mark or 0:#x} lookup {table}")
        with contextlib.suppress(Exception):
            if any(r["dst_len"] == 0 for r in ipr.get_routes(table=ROUTE_TABLE, family=family)):
                clash.append(f"IPv{v} default route in table {ROUTE_TABLE}")
    pid = t.running_pid()
    if clash and pid is not None:
        return ok(name, f"daetui's rules are in place: a daetui runs here (pid {pid}, {t.run.root})")
    if clash and t.run.state.exists():
        return warn(name, f"{'; '.join(clash)}: left by a daetui that did not stop ({t.run.state})",
                    "daetui undoes them at its next start, or now: daetui cleanup")
    if clash:
        return blocker(name, f"{'; '.join(clash)}: there already, not recorded by daetui, and daetui refuses to "
                       "start over routing it did not make",
                       f"remove them (ip rule del pref {RULE_PRIORITY}; ip route flush table {ROUTE_TABLE}) if they "
                       "are leftovers, or stop the program that made them")
    if near:
        return warn(name, f"{'; '.join(near)}: shares daetui's table, priority or mark",
                    f"keep table {ROUTE_TABLE}, pref {RULE_PRIORITY} and mark {TPROXY_MARK:#x} for daetui")
    return ok(name, f"table {ROUTE_TABLE}, pref {RULE_PRIORITY} and mark {TPROXY_MARK:#x} are free for daetui")


def check_tproxy_port(t: Target) -> Check:
    """Bound for an instant on loopback, where daetui's listeners go."""
    name = "tproxy port"
    for kind, label in ((socket.SOCK_STREAM, "TCP"), (socket.SOCK_DGRAM, "UDP")):
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as daetui's; TIME_WAIT is no clash
            s.bind(("127.0.0.1", t.tproxy_port))
        except OSError as e:
            pid = t.running_pid()
            if pid is not None:
                return ok(name, f"{label} {t.tproxy_port} is held by the daetui running here (pid {pid})")
            return blocker(name, f"{label} 127.0.0.1:{t.tproxy_port} cannot be bound ({e.strerror}): daetui listens "
                           "there", "stop what holds it (ss -lntup), or choose another tproxy_port")
        finally:
            s.close()
    return ok(name, f"TCP and UDP {t.tproxy_port} on loopback are free")


def check_rp_filter(t: Target) -> Check:
    name = "rp_filter"
    every = int(read_sysctl("net.ipv4.conf.all.rp_filter") or 0)
    names = [n for n in t.interfaces if read_sysctl(f"net.ipv4.conf.{n}.rp_filter") is not None]
    # The kernel applies the larger of `all` and the interface's own value.
    strict = [n for n in names if max(every, int(read_sysctl(f"net.ipv4.conf.{n}.rp_filter") or 0)) == 1]
    if every == 1 and not names:
        strict = ["all"]
    if strict:
        return warn(name, f"strict reverse-path filtering on {', '.join(clean(n) for n in strict)}: packets whose "
                    "source the router would not route back the same way are dropped, which can catch flows daetui "
                    "routes by mark", "use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 (and per interface)")
    where = ", ".join(clean(n) for n in names) if names else "all"
    return ok(name, f"not strict on {where} (0 off or 2 loose)")


def check_ipv4_forwarding(t: Target) -> Check:
    name = "IPv4 forwarding"
    if read_sysctl("net.ipv4.ip_forward") == "1":
        return ok(name, "on: the router forwards the flows daetui lets pass direct")
    if t.auto_config:
        return ok(name, "off now: daetui turns it on at start (auto_config_kernel_parameter) and back at stop")
    return warn(name, "off, and auto_config_kernel_parameter is false: flows daetui lets pass direct are not "
                "forwarded", "sysctl -w net.ipv4.ip_forward=1, or auto_config_kernel_parameter = true")


def _global_v6(ipr: Any, names: tuple[str, ...]) -> list[str]:
    """'iface addr' for each global IPv6 address on the named interfaces."""
    out = []
    with contextlib.suppress(Exception):
        links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET6):
            ifname = links.get(a["index"], "")
            if a["scope"] == 0 and ifname in names:
                out.append(f"{clean(ifname)} {a.get_attr('IFA_ADDRESS')}")
    return out


def check_ipv6_forwarding(t: Target, ipr: Any) -> Check:
    name = "IPv6 forwarding"
    if read_sysctl("net.ipv6.conf.all.disable_ipv6") in (None, "1"):
        return ok(name, "IPv6 is off on this machine: nothing to forward")
    if read_sysctl("net.ipv6.conf.all.forwarding") == "1":
        return ok(name, "on: the router forwards the IPv6 flows daetui lets pass direct")
    if not t.configured:
        return ok(name, "off; which interfaces are the LAN is not known without a config (pass --config to check "
                  "whether the LAN has IPv6)")
    v6 = _global_v6(ipr, t.lan)
    if v6:
        return warn(name, f"off, while the LAN has IPv6 ({', '.join(v6[:3])}): direct IPv6 flows are not forwarded, "
                    "and daetui does not turn it on (that would stop router advertisements on the WAN)",
                    "sysctl -w net.ipv6.conf.all.forwarding=1, with accept_ra=2 on the WAN interface")
    return ok(name, "off, and the LAN interfaces hold no global IPv6 address: nothing to forward")
