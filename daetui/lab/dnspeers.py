"""The lab's DNS server on its "internet": unbound in the `wan` namespace (the demo's upstream).

    unbound  ADDR.dns4[0] / ADDR.dns6[0]: UDP+TCP 53, DoT 853, DoH 443 (/dns-query)

It serves a small zone (`LAB_ZONE`) and answers NXDOMAIN for every other name
at once: the lab has no route out, so it may never recurse beyond the lab
(its root is a static local zone). TLS uses a throwaway CA made here
(`LabCA`); clients trust its `ca_file`. `DnsPeer` is the base of any DNS
server run in the lab.

Each server gets a temporary directory of its own (config, log, pid file) and
runs as a child of this process through `ip netns exec`, which execs the
server in place: the child's pid is the server's, and `stop()` ends exactly
that pid.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query

from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab, LabError
from daetui.net.netns import netns

UNBOUND = "/usr/sbin/unbound"

DNS_PORT = 53
DOT_PORT = 853
DOH_PORT = 443
DOH_PATH = "/dns-query"
TLS_NAME = "dns.lab.test"  # the name in the servers' certificate besides their addresses
NEG_TTL = 30  # SOA minimum of unbound's zones: how long a resolver may cache NXDOMAIN/NODATA

RTYPES = ("A", "AAAA", "CNAME", "TXT")


class DnsPeerError(LabError):
    """A DNS peer could not be configured or did not come up."""


@dataclass(frozen=True)
class Record:
    """One resource record. `value` is an address, a target name (CNAME) or the text (TXT, unquoted)."""

    name: str
    rtype: str
    value: str
    ttl: int = 300

    def __post_init__(self) -> None:
        if self.rtype not in RTYPES:
            raise ValueError(f"{self.name}: record type {self.rtype!r} not one of {RTYPES}")
        if self.rtype in ("A", "AAAA"):
            version = ipaddress.ip_address(self.value).version
            if version != (4 if self.rtype == "A" else 6):
                raise ValueError(f"{self.name}: {self.value} is not an {self.rtype} address")
        # Both servers' config syntaxes quote values; keep quoting trivial.
        if any(c in self.value for c in "\"'\\\n") or any(c in self.name for c in " ,'\"/#\n"):
            raise ValueError(f"{self.name}: quotes, backslashes, commas and newlines are not supported")
        if not 0 <= self.ttl <= 0x7FFFFFFF:
            raise ValueError(f"{self.name}: ttl {self.ttl} out of range")

    @property
    def fqdn(self) -> str:
        return self.name.rstrip(".").lower() + "."

    @property
    def zone(self) -> str:
        """The zone this record belongs to: its last two labels (`example.test`)."""
        return ".".join(self.name.rstrip(".").lower().split(".")[-2:])


# big.example.test has 40 A records: about 700 bytes, more than the 512 a UDP
# answer without EDNS may carry, so it comes back truncated (TC) over UDP.
BIG_COUNT = 40

LAB_ZONE: tuple[Record, ...] = (
    Record("www.example.test", "A", ADDR.hosts4[0]),
    Record("www.example.test", "AAAA", ADDR.hosts6[0]),
    Record("api.example.test", "A", ADDR.hosts4[1]),
    Record("short.example.test", "A", ADDR.hosts4[2], ttl=3),
    Record("alias.example.test", "CNAME", "www.example.test"),
    Record("txt.example.test", "TXT", "hello"),
    *(Record("big.example.test", "A", f"203.0.113.{100 + i}") for i in range(BIG_COUNT)),
    Record("cn.lab.test", "A", ADDR.hosts4[1]),
    Record("dns.lab.test", "A", ADDR.dns4[0]),
    Record("dns.lab.test", "AAAA", ADDR.dns6[0]),
)


def zones_of(records: Sequence[Record]) -> list[str]:
    """The zones the records live in, in first-seen order."""
    return list(dict.fromkeys(r.zone for r in records))


# -- the certificate authority --------------------------------------------------------

class LabCA:
    """A throwaway CA and one server certificate for the lab's DNS servers.

    The server certificate names `TLS_NAME` and every DNS server address
    (IP SANs), so clients may verify either. Files live in a temporary
    directory that `close()` removes.
    """

    def __init__(self, hostname: str = TLS_NAME, addresses: Sequence[str] = (*ADDR.dns4, *ADDR.dns6)) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        self.directory = Path(tempfile.mkdtemp(prefix="daetui-labca-"))
        self.hostname = hostname
        self.ca_file = self.directory / "ca.pem"
        self.cert_file = self.directory / "server.pem"
        self.key_file = self.directory / "server.key"

        now = datetime.datetime.now(datetime.UTC)
        # Backdated an hour: a client whose clock lags a little still accepts it.
        not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "daetui lab CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            # Strict verifiers (Python 3.13's default context) insist on the AKI.
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        pem = serialization.Encoding.PEM
        self.ca_file.write_bytes(ca_cert.public_bytes(pem))
        self.cert_file.write_bytes(cert.public_bytes(pem))
        self.key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        self.key_file.chmod(0o600)

    def client_context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A client TLS context that trusts this CA (and nothing else)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LabCA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- servers ------------------------------------------------------------------------------

class DnsPeer(LabPeer):
    """A DNS server of the lab: its errors are DnsPeerError, and DNS errors while it starts are expected."""

    error = DnsPeerError
    transient = (dns.exception.DNSException, OSError)


class Unbound(DnsPeer):
    """unbound answering `records` as their authoritative server: plain DNS, DoT and DoH.

    Each zone of the records (`zones_of`) is an auth-zone with an SOA (negative
    TTL `NEG_TTL`, so negative answers can be cached) and an NS; a CNAME comes
    with its in-zone target, as from any authoritative server (plain
    local-data would answer the CNAME alone). It never recurses: the root is
    a static local zone with a transparent hole per zone for the auth-zones,
    so a name outside them is NXDOMAIN at once.
    """

    kind = "unbound"
    binary = UNBOUND

    def __init__(self, lab: Lab, records: Sequence[Record] = LAB_ZONE, ca: LabCA | None = None, *,
                 port: int = DNS_PORT, log_queries: bool = False) -> None:
        super().__init__(lab, ADDR.dns4[0], ADDR.dns6[0], port)
        self.records = tuple(records)
        self.ca = ca
        self._own_ca: LabCA | None = None
        self.log_queries = log_queries

    def _answers(self, address: str) -> bool:
        # A leftover unbound on the same address would answer as well: ask for
        # this one's identity, its directory's name.
        assert self.directory is not None
        q = dns.message.make_query("id.server", "TXT", "CH")
        with netns(self.lab.wan):
            r = dns.query.udp(q, address, port=self.port, timeout=0.2)
        return any(rd.strings == (self.directory.name.encode(),) for rrset in r.answer for rd in rrset)

    def config_text(self, directory: Path, ca: LabCA) -> str:
        """The whole unbound.conf."""
        def q(s: str | Path) -> str:
            return f'"{s}"'

        lines = [
            "server:",
            "  verbosity: 1",
            "  num-threads: 1",
            # Stay root in the namespace, outside a chroot, in the foreground: the
            # caller owns the process and its files.
            '  username: ""',
            '  chroot: ""',
            f"  directory: {q(directory)}",
            f"  identity: {q(directory.name)}",  # answered to CH TXT id.server: see _answers
            f"  pidfile: {q(directory / 'unbound.pid')}",
            f"  logfile: {q(directory / 'unbound.log')}",
            "  use-syslog: no",
            "  log-time-ascii: yes",
            f"  log-queries: {'yes' if self.log_queries else 'no'}",
            "  do-daemonize: no",
            "  do-ip4: yes",
            "  do-ip6: yes",
            "  do-udp: yes",
            "  do-tcp: yes",
            f"  port: {self.port}",
            # Alone on its ports: a second unbound (a leftover) must fail to start, not share them
            # (1.17 sets SO_REUSEPORT only with several threads; this keeps it so with more).
            "  so-reuseport: no",
            f"  tls-port: {DOT_PORT}",
            f"  https-port: {DOH_PORT}",
            f"  http-endpoint: {q(DOH_PATH)}",
            f"  tls-service-pem: {q(ca.cert_file)}",
            f"  tls-service-key: {q(ca.key_file)}",
            # More than the default 10 TCP/TLS clients: benchmarks open many.
            "  incoming-num-tcp: 256",
            "  access-control: 0.0.0.0/0 allow",
            "  access-control: ::/0 allow",
            # No validator, no trust anchor, nothing to recurse into: every answer is made here.
            '  module-config: "iterator"',
            "  do-not-query-localhost: yes",
            '  local-zone: "." static',
        ]
        for addr in (self.address4, self.address6):
            lines += [f"  interface: {addr}@{port}" for port in (self.port, DOT_PORT, DOH_PORT)]
        zones = zones_of(self.records)
        for zone in zones:
            # A hole in the static root through which the auth-zone below answers.
            lines.append(f'  local-zone: "{zone}." transparent')
        for zone in zones:
            lines += ["auth-zone:", f'  name: "{zone}."', f"  zonefile: {q(directory / (zone + '.zone'))}",
                      "  for-downstream: yes", "  for-upstream: yes", "  fallback-enabled: no"]
        lines += ["remote-control:", "  control-enable: no", ""]
        return "\n".join(lines)

    def zone_text(self, zone: str) -> str:
        """The zone file of `zone`: an SOA, an NS and the records in it."""
        lines = [f"{zone}. {NEG_TTL} IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 {NEG_TTL}",
                 f"{zone}. 3600 IN NS {TLS_NAME}."]
        for r in self.records:
            if r.zone != zone:
                continue
            value = f'"{r.value}"' if r.rtype == "TXT" else (
                r.value.rstrip(".") + "." if r.rtype == "CNAME" else r.value)
            lines.append(f"{r.fqdn} {r.ttl} IN {r.rtype} {value}")
        return "\n".join(lines) + "\n"

    def _write_config(self, directory: Path) -> list[str]:
        if self.ca is None:
            self.ca = self._own_ca = LabCA()
        for zone in zones_of(self.records):
            (directory / f"{zone}.zone").write_text(self.zone_text(zone))
        conf = directory / "unbound.conf"
        conf.write_text(self.config_text(directory, self.ca))
        # -d: in the foreground, as our child.
        return [UNBOUND, "-d", "-c", str(conf)]

    def stop(self, timeout: float = 5.0, keep_directory: bool = False) -> None:
        super().stop(timeout, keep_directory)
        if self._own_ca is not None and not keep_directory:
            self._own_ca.close()
            self.ca = self._own_ca = None

    def __enter__(self) -> Unbound:
        self.start()
        return self
