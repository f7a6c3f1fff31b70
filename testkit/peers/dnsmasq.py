"""dnsmasq on the lab's "internet", and both DNS servers together, for tests and benchmarks.

    dnsmasq  ADDR.dns4[1] / ADDR.dns6[1]: UDP+TCP 53, serving the records itself
             or as a caching forwarder to unbound
    dns_peers(lab)  unbound (daetui.lab.dnspeers, which the demo runs too) and dnsmasq

Like unbound, dnsmasq answers NXDOMAIN for every name outside its records at
once and never forwards beyond the lab (no resolv.conf; `local=/#/`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query

from daetui.lab.dnspeers import DNS_PORT, LAB_ZONE, TLS_NAME, DnsPeer, DnsPeerError, LabCA, Record, Unbound
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns

DNSMASQ = "/usr/sbin/dnsmasq"


# -- queries from inside a namespace ------------------------------------------------------

def query(ns: str | None, server: str, name: str, rdtype: str = "A", *, tcp: bool = False, port: int = DNS_PORT,
          timeout: float = 2.0, edns: bool = True) -> dns.message.Message:
    """One plain DNS query to `server`, sent from namespace `ns` (None: from here).

    dnspython makes its socket on the calling thread, which `netns` has moved
    into the namespace; the rest of the process stays where it was.
    """
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    with netns(ns):
        if tcp:
            return dns.query.tcp(q, server, port=port, timeout=timeout)
        return dns.query.udp(q, server, port=port, timeout=timeout)




class Dnsmasq(DnsPeer):
    """dnsmasq on UDP+TCP 53: serving `records` itself, or forwarding to `forward_to` with a cache.

    Serving (`records`, default `LAB_ZONE`): every record is an option
    (host-record, cname, txt-record) with its TTL -- TXT records share one TTL,
    `--local-ttl`, a limit of dnsmasq -- and every other name is NXDOMAIN
    (`local=/#/`: no upstream at all).
    Forwarding (`forward_to`, no records): queries go to `forward_to` (unbound)
    and answers are cached in `cache_size` entries. dnsmasq tells its cache
    counters over CHAOS TXT `hits.bind`, `misses.bind`, `insertions.bind`.
    """

    kind = "dnsmasq"
    binary = DNSMASQ

    def __init__(self, lab: Lab, records: Sequence[Record] | None = None, *, forward_to: str | None = None,
                 cache_size: int = 1000, port: int = DNS_PORT, log_queries: bool = False) -> None:
        super().__init__(lab, ADDR.dns4[1], ADDR.dns6[1], port)
        if records is not None and forward_to is not None:
            raise ValueError("dnsmasq either serves records or forwards, not both")
        self.records = tuple(LAB_ZONE if records is None and forward_to is None else records or ())
        self.forward_to = forward_to
        self.cache_size = cache_size
        self.log_queries = log_queries

    def _answers(self, address: str) -> bool:
        # dnsmasq logs "started" only once all its sockets are bound (it exits if
        # one is taken), so an answer after that line is its own.
        if "started, version" not in self.log_path.read_text(errors="replace"):
            return False
        query(self.lab.wan, address, TLS_NAME, port=self.port, timeout=0.2)
        return True

    def config_lines(self, directory: Path) -> list[str]:
        """The options, one a line, as in a dnsmasq.conf."""
        lines = [
            # Stay root: Debian's build would switch to a "dnsmasq" user that a
            # machine with only dnsmasq-base need not have.
            "user=root",
            "group=root",
            f"pid-file={directory / 'dnsmasq.pid'}",
            f"log-facility={directory / 'dnsmasq.log'}",
            f"port={self.port}",
            # Only our addresses, bound one by one: other servers in the namespace
            # (unbound) keep theirs.
            "bind-interfaces",
            f"listen-address={self.address4}",
            f"listen-address={self.address6}",
            # Nothing from the host: no resolv.conf, no /etc/hosts.
            "no-resolv",
            "no-hosts",
            f"cache-size={self.cache_size}",
        ]
        if self.log_queries:
            lines.append("log-queries")
        if self.forward_to is not None:
            lines += [f"server={self.forward_to}", "dns-forward-max=1000"]
            return lines
        # Every domain is answered from local data: NXDOMAIN for what is not there.
        lines.append("local=/#/")
        txt_ttls = {r.ttl for r in self.records if r.rtype == "TXT"}
        if len(txt_ttls) > 1:
            raise DnsPeerError(f"dnsmasq gives all TXT records one TTL; got {sorted(txt_ttls)}")
        lines.append(f"local-ttl={txt_ttls.pop() if txt_ttls else 0}")
        for r in self.records:
            name = r.name.rstrip(".")
            if r.rtype in ("A", "AAAA"):
                lines.append(f"host-record={name},{r.value},{r.ttl}")
            elif r.rtype == "CNAME":
                lines.append(f"cname={name},{r.value.rstrip('.')},{r.ttl}")
            else:
                lines.append(f'txt-record={name},"{r.value}"')
        return lines

    def _write_config(self, directory: Path) -> list[str]:
        conf = directory / "dnsmasq.conf"
        conf.write_text("\n".join(self.config_lines(directory)) + "\n")
        # Our file instead of /etc/dnsmasq.conf; in the foreground, as our child.
        return [DNSMASQ, "--keep-in-foreground", f"--conf-file={conf}"]

    def __enter__(self) -> Dnsmasq:
        self.start()
        return self


@dataclass
class DnsPeers:
    """Both servers of the lab and the CA their TLS certificate comes from."""

    unbound: Unbound
    dnsmasq: Dnsmasq
    ca: LabCA


@contextmanager
def dns_peers(lab: Lab, records: Sequence[Record] = LAB_ZONE, dnsmasq_forward: bool = False,
              cache_size: int = 1000) -> Iterator[DnsPeers]:
    """unbound and dnsmasq serving `records` in `lab`; both ended by pid on the way out.

    With `dnsmasq_forward`, dnsmasq serves nothing itself and forwards to
    unbound, caching in `cache_size` entries.
    """
    with ExitStack() as stack:
        ca = stack.enter_context(LabCA())
        unbound = Unbound(lab, records, ca)
        stack.callback(unbound.stop)
        unbound.start()
        if dnsmasq_forward:
            dnsmasq = Dnsmasq(lab, forward_to=unbound.address4, cache_size=cache_size)
        else:
            dnsmasq = Dnsmasq(lab, records, cache_size=cache_size)
        stack.callback(dnsmasq.stop)
        dnsmasq.start()
        yield DnsPeers(unbound, dnsmasq, ca)
