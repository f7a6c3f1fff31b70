"""TUIC v5 (daetui/outbound/tuic.py, _tuic_*.py) offline: links, commands, fragments, the TLS exporter, windows.

The exporter is checked against OpenSSL: vectors taken from `openssl s_server
-keymatexport` with the client's EXPORTER_SECRET from Python's keylog (Python's
ssl cannot export keying material itself), and once live when openssl is here.
That the secret is captured at the right point of aioquic's handshake is checked
by a client and a server (both aioquic) that must agree on it; that the token is
the one servers compute, by mihomo accepting it (tests/kernel/test_proxy_tuic.py).
"""

from __future__ import annotations

import datetime
import re
import shutil
import socket
import ssl
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daetui.net.stream import DialError
from daetui.outbound import _tuic_conn, _tuic_wire, links, tuic

UID = "5f2e3a9c-1d4b-4c8e-9a7f-0b6d2e4f8a13"


# -- links --------------------------------------------------------------------------------------------

def test_v2rayn_link() -> None:
    node = links.parse_link(f"tuic://{UID}:p%40ss@203.0.113.7:443?sni=tuic.example.com&alpn=h3"
                            "&congestion_control=bbr&udp_relay_mode=quic&allow_insecure=1#HK%2001")
    assert node == tuic.TuicNode(name="HK 01", host="203.0.113.7", port=443, uuid=UID, password="p@ss",
                                 sni="tuic.example.com", alpn=("h3",), congestion_control="bbr",
                                 udp_relay_mode="quic", allow_insecure=True)
    assert node.protocol == "tuic"
    assert "p@ss" not in repr(node)


@pytest.mark.parametrize("link", [
    f"tuic://{UID}:pw@203.0.113.7:443",
    f"tuic://{UID.upper()}:pw@[2001:db8::7]:8443?alpn=h3,spdy/3.1&congestion_control=cubic#n",
    f"tuic://{UID}:a%3Ab%20c@tuic.example.com:443?sni=x.example.com&udp_relay_mode=native&allowInsecure=0",
    f"tuic://{UID}:pw@203.0.113.7:443?congestion_control=new_reno&insecure=1&reduce_rtt=1&disable_sni=0",
])
def test_round_trip(link: str) -> None:
    node = tuic.parse_link(link)
    assert tuic.parse_link(node.link()) == node
    assert links.link_problem(node.link()) is None


def test_link_fields() -> None:
    node = tuic.parse_link(f"tuic://{UID.upper()}:pw@[2001:db8::7]:8443?alpn=h3,spdy/3.1#n")
    assert (node.host, node.port, node.uuid, node.alpn, node.udp_relay_mode) == \
        ("2001:db8::7", 8443, UID, ("h3", "spdy/3.1"), "native")
    assert node.link() == f"tuic://{UID}:pw@[2001:db8::7]:8443?alpn=h3%2Cspdy%2F3.1#n"
    assert tuic.parse_link(f"tuic://{UID}:pw@h.example:1?insecure=1").allow_insecure


@pytest.mark.parametrize(("link", "reason"), [
    ("tuic://sometoken@203.0.113.7:443", "token-only links are not supported"),
    ("tuic://not-a-uuid:pw@203.0.113.7:443", "is not a UUID"),
    (f"tuic://{UID}:pw@203.0.113.7:443?udp_relay_mode=fast", "udp_relay_mode=fast"),
    (f"tuic://{UID}:pw@203.0.113.7:443?congestion_control=vegas", "congestion_control=vegas"),
    (f"tuic://{UID}:pw@203.0.113.7:443?version=4", "only TUIC v5"),
    (f"tuic://{UID}:pw@203.0.113.7:443?disable_sni=1", "disable_sni=1"),
    (f"tuic://{UID}:pw@203.0.113.7", "no server port"),
])
def test_refused_links(link: str, reason: str) -> None:
    problem = links.link_problem(link)
    assert problem is not None and reason in problem, problem


def test_dialer_settings() -> None:
    node = tuic.parse_link(f"tuic://{UID}:pw@203.0.113.7:443?congestion_control=bbr")
    d = node.dialer(None, ca_file="/nonexistent/ca.pem")  # type: ignore[arg-type]
    with pytest.raises(DialError, match="CA file"):
        d._configuration()
    cfg = node.dialer(None, allow_insecure=True)._configuration()  # type: ignore[arg-type]
    assert cfg.verify_mode == ssl.CERT_NONE
    assert cfg.alpn_protocols == ["h3"] and cfg.server_name == "203.0.113.7"
    assert cfg.congestion_control_algorithm == "cubic"  # aioquic has no BBR
    assert cfg.max_datagram_frame_size  # datagrams offered: native UDP and heartbeats


# -- commands -----------------------------------------------------------------------------------------

def test_commands() -> None:
    token = bytes(range(32))
    assert _tuic_wire.authenticate(UID, token) == b"\x05\x00" + uuid.UUID(UID).bytes + token
    assert _tuic_wire.connect_header("203.0.113.9", 443) == b"\x05\x01\x01" + bytes([203, 0, 113, 9]) + b"\x01\xbb"
    assert _tuic_wire.connect_header("2001:db8::1", 80) == \
        b"\x05\x01\x02" + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + b"\x00\x50"
    assert _tuic_wire.connect_header("example.com.", 53) == b"\x05\x01\x00\x0bexample.com\x00\x35"
    assert _tuic_wire.dissociate(0x1234) == b"\x05\x03\x12\x34"
    assert _tuic_wire.heartbeat() == b"\x05\x04"
    with pytest.raises(DialError):
        _tuic_wire.connect_header("a" * 256, 1)


def test_packet_unfragmented() -> None:
    [cmd] = _tuic_wire.packets(7, 9, b"hello", "203.0.113.9", 53, None)
    assert cmd == b"\x05\x02\x00\x07\x00\x09\x01\x00\x00\x05\x01" + bytes([203, 0, 113, 9]) + b"\x00\x35hello"
    assert _tuic_wire.parse_packet(cmd) == _tuic_wire.Packet(7, 9, 1, 0, "203.0.113.9", 53, b"hello")
    assert _tuic_wire.packets(7, 9, b"x" * 1000, "203.0.113.9", 53, 1136) == \
        _tuic_wire.packets(7, 9, b"x" * 1000, "203.0.113.9", 53, None)
    with pytest.raises(DialError):
        _tuic_wire.packets(1, 2, b"x" * 65536, "203.0.113.9", 1, None)


def test_packet_fragments() -> None:
    data = bytes(range(256)) * 12   # 3072 bytes
    cmds = _tuic_wire.packets(1, 2, data, "2001:db8::9", 5353, 1136)
    assert len(cmds) == 3 and all(len(c) <= 1136 for c in cmds)
    # As mihomo's server fragments (the first fragment's header the longest, every payload that size).
    assert cmds == mihomo_fragments(1, 2, data, "2001:db8::9", 5353, 1136 - 10 - 19)


def mihomo_fragments(assoc_id: int, pkt_id: int, data: bytes, host: str, port: int, size: int) -> list[bytes]:
    """A datagram as mihomo's server fragments it (fragWriteNative): `size` bytes of payload each, the
    address in the first only (the others: type none)."""
    total = -(-len(data) // size)
    out = []
    for i in range(total):
        piece = data[i * size:(i + 1) * size]
        addr = _tuic_wire.encode_address(host, port) if i == 0 else bytes((_tuic_wire.ATYP_NONE,))
        out.append(struct.pack("!BBHHBBH", 5, 2, assoc_id, pkt_id, total, i, len(piece)) + addr + piece)
    return out


def test_fragments_reassembled() -> None:
    data = bytes(range(256)) * 12   # 3072 bytes
    parsed = [_tuic_wire.parse_packet(c) for c in mihomo_fragments(1, 2, data, "2001:db8::9", 5353, 1100)]
    assert [(p.frag_total, p.frag_id) for p in parsed] == [(3, 0), (3, 1), (3, 2)]
    assert parsed[0].host == "2001:db8::9" and parsed[1].host is None and parsed[2].host is None
    r = _tuic_wire.Reassembly()
    # Any order, a duplicate among them.
    assert r.feed(parsed[2]) is None and r.feed(parsed[0]) is None and r.feed(parsed[2]) is None
    assert r.feed(parsed[1]) == (data, "2001:db8::9", 5353)
    assert not r.partial


@pytest.mark.parametrize("bad", [
    b"\x05\x02\x00",                                                       # short
    b"\x04\x02\x00\x01\x00\x01\x01\x00\x00\x01\x01\x01\x02\x03\x04\x00\x35x",  # version 4
    b"\x05\x01\x00\x01\x00\x01\x01\x00\x00\x01\x01\x01\x02\x03\x04\x00\x35x",  # a Connect
    b"\x05\x02\x00\x01\x00\x01\x01\x00\x00\x02\x01\x01\x02\x03\x04\x00\x35x",  # SIZE says 2, 1 follows
    b"\x05\x02\x00\x01\x00\x01\x02\x02\x00\x01\x01\x01\x02\x03\x04\x00\x35x",  # fragment 2 of 2
    b"\x05\x02\x00\x01\x00\x01\x01\x00\x00\x01\x07\x01\x02\x03\x04\x00\x35x",  # address type 7
    b"\x05\x02\x00\x01\x00\x01\x01\x00\x00\x01\x01\x01\x02",                  # address cut short
])
def test_malformed_packets(bad: bytes) -> None:
    with pytest.raises(ValueError):
        _tuic_wire.parse_packet(bad)


def test_reassembly_is_bounded() -> None:
    """At most max_partial packets in progress (the oldest dropped); a packet past 64 KiB, or whose
    fragments disagree on their count, or whose first fragment names no sender, is dropped."""
    r = _tuic_wire.Reassembly(max_partial=4)
    for pkt in range(100):
        assert r.feed(_tuic_wire.Packet(1, pkt, 2, 0, "203.0.113.9", 53, b"x" * 1000)) is None
        assert len(r.partial) <= 4
    assert r.dropped == 96 and set(r.partial) == {96, 97, 98, 99}
    assert r.feed(_tuic_wire.Packet(1, 99, 2, 1, None, 0, b"y")) == (b"x" * 1000 + b"y", "203.0.113.9", 53)
    assert r.feed(_tuic_wire.Packet(1, 20, 2, 1, None, 0, b"y")) is None  # its first fragment was dropped: waits again

    r = _tuic_wire.Reassembly()
    for i in range(65):   # 65 x 1100 > 65535
        r.feed(_tuic_wire.Packet(1, 5, 100, i, "203.0.113.9" if i == 0 else None, 53, b"z" * 1100))
    # The packet was dropped at the fragment that took it past 64 KiB; the later ones start over, bounded.
    assert r.dropped == 1
    assert sum(len(f) for _, frags, _, _ in r.partial.values() for f in frags.values()) <= _tuic_wire.MAX_DATAGRAM

    r = _tuic_wire.Reassembly()
    assert r.feed(_tuic_wire.Packet(1, 1, 3, 0, "203.0.113.9", 53, b"a")) is None
    assert r.feed(_tuic_wire.Packet(1, 1, 2, 1, None, 0, b"b")) is None and r.dropped == 1  # count changed
    assert r.feed(_tuic_wire.Packet(1, 2, 2, 0, None, 0, b"a")) is None
    assert r.feed(_tuic_wire.Packet(1, 2, 2, 1, None, 0, b"b")) is None and r.dropped == 2  # no sender named
    assert r.feed(_tuic_wire.Packet(1, 3, 1, 0, None, 0, b"a")) is None   # unfragmented without a sender


# -- the TLS exporter ---------------------------------------------------------------------------------

# (hash, EXPORTER_SECRET from Python's keylog, label, OpenSSL 3.0.19's "Keying material" for an empty context)
OPENSSL_VECTORS = [
    (hashes.SHA384(), "f5ed21825269818ea02be5bfd80ebd4e7e3050601aab9b1bfd48db528a1a04f7"
                      "15fa1db9ac35c304e33d6d353e9759b0",
     b"EXPORTER-test", "D9DD3705BF11A57435954A58CAE89CFFD15453673F2B059B4828213C58D39965"),
    (hashes.SHA256(), "a14c6a4b65110bc5fefa947041307b9dac970bdd62fd7f30cc60c0aae59e6801",
     b"tuic", "65B084E65A1D99522E51B379303FBF7B652980C893BD4644FC0F042C9C67A99A"),
]


@pytest.mark.parametrize(("algorithm", "secret", "label", "expected"), OPENSSL_VECTORS)
def test_exporter_matches_openssl_vectors(algorithm: hashes.HashAlgorithm, secret: str, label: bytes,
                                          expected: str) -> None:
    assert _tuic_wire.exporter(algorithm, bytes.fromhex(secret), label, b"", 32).hex().upper() == expected


def _self_signed(tmp_path: Path, name: str = "tuic.test") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
def test_exporter_against_live_openssl(tmp_path: Path) -> None:
    """A TLS 1.3 session of Python's with `openssl s_server -keymatexport`: our exporter, fed the session's
    exporter secret (from the keylog), gives what OpenSSL exports."""
    cert, key = _self_signed(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
         "-tls1_3", "-keymatexport", "daetui tuic", "-keymatexportlen", "32", "-naccept", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.keylog_filename = str(tmp_path / "keys.log")
        deadline = time.monotonic() + 5
        while True:
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "openssl s_server did not listen"
                time.sleep(0.05)
        with ctx.wrap_socket(raw) as tls:
            suite = tls.cipher()[0]
            tls.sendall(b"x\n")
        out = server.communicate(timeout=5)[0].decode(errors="replace")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    exported = re.search(r"Keying material: ([0-9A-F]+)", out)
    assert exported, out
    secret = re.search(r"^EXPORTER_SECRET \S+ (\S+)$", (tmp_path / "keys.log").read_text(), re.M)
    assert secret
    algorithm = hashes.SHA384() if suite.endswith("SHA384") else hashes.SHA256()
    exported_here = _tuic_wire.exporter(algorithm, bytes.fromhex(secret[1]), b"daetui tuic", b"", 32)
    assert exported_here.hex().upper() == exported[1]


def _pair(tmp_path: Path) -> tuple[_tuic_conn._Quic, _tuic_conn._Quic]:
    cert, key = _self_signed(tmp_path)
    ccfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="tuic.test",
                             max_datagram_frame_size=65536)
    ccfg.load_verify_locations(cafile=str(cert))
    scfg = QuicConfiguration(is_client=False, alpn_protocols=["h3"], max_datagram_frame_size=65536)
    scfg.load_cert_chain(str(cert), str(key))
    client = _tuic_conn._Quic(configuration=ccfg)
    server = _tuic_conn._Quic(configuration=scfg,
                              original_destination_connection_id=client.original_destination_connection_id)
    client.connect(("192.0.2.2", 443), now=0.0)
    return client, server


def _pump(client: _tuic_conn._Quic, server: _tuic_conn._Quic, now: float, rounds: int = 50) -> float:
    """Datagrams both ways until neither side has any (timers run as time goes by)."""
    for _ in range(rounds):
        moved = False
        for a, b, addr in ((client, server, ("192.0.2.1", 5555)), (server, client, ("192.0.2.2", 443))):
            for data, _ in a.datagrams_to_send(now=now):
                b.receive_datagram(data, addr, now=now)
                moved = True
        now += 0.005
        for q in (client, server):
            t = q.get_timer()
            if t is not None and t <= now:
                q.handle_timer(now)
        if not moved:
            break
    return now


def _events(q: _tuic_conn._Quic) -> list[object]:
    out = []
    while (e := q.next_event()) is not None:
        out.append(e)
    return out


def test_exporter_secret_agrees_across_a_handshake(tmp_path: Path) -> None:
    """aioquic as client and as server: the exporter secret each keeps is the same, so is the token."""
    client, server = _pair(tmp_path)
    _pump(client, server, 0.0)
    assert any(isinstance(e, HandshakeCompleted) for e in _events(client))
    assert client.exporter_secret is not None and client.exporter_secret == server.exporter_secret
    assert _tuic_conn.token(client, UID, "pw") == _tuic_conn.token(server, UID, "pw")
    assert _tuic_conn.token(client, UID, "pw") != _tuic_conn.token(client, UID, "other")
    assert len(_tuic_conn.token(client, UID, "pw")) == 32


def test_stream_window_moves_with_the_reader(tmp_path: Path) -> None:
    """A server sending 8 MB on a stream whose reader takes nothing gets STREAM_WINDOW through, no more
    (aioquic alone would keep doubling the window); each MB taken lets about a MB more in."""
    client, server = _pair(tmp_path)
    now = _pump(client, server, 0.0)
    sid = client.get_next_available_stream_id()
    client.pace(sid, _tuic_conn.STREAM_WINDOW)
    client.send_stream_data(sid, b"hello")
    now = _pump(client, server, now)
    server.send_stream_data(sid, b"d" * (8 << 20))

    def arrived() -> int:
        return sum(len(e.data) for e in _events(client) if isinstance(e, StreamDataReceived))

    got = 0
    for _ in range(40):
        now = _pump(client, server, now, rounds=200)
        got += arrived()
    assert _tuic_conn.STREAM_WINDOW // 2 <= got <= _tuic_conn.STREAM_WINDOW
    client.took(sid, 1 << 20)
    for _ in range(40):
        now = _pump(client, server, now, rounds=200)
        got += arrived()
    assert got <= (1 << 20) + _tuic_conn.STREAM_WINDOW
    assert got > _tuic_conn.STREAM_WINDOW


# -- clash YAML ---------------------------------------------------------------------------------------

def test_clash_tuic_proxy() -> None:
    from daetui.outbound.subscription import clash_link

    link, name = clash_link({"name": "JP tuic", "type": "tuic", "server": "2001:db8::5", "port": 443, "uuid": UID,
                             "password": "p w", "alpn": ["h3"], "sni": "t.example.com",
                             "congestion-controller": "bbr", "udp-relay-mode": "quic", "skip-cert-verify": True,
                             "heartbeat-interval": 10000, "reduce-rtt": True})
    assert name == "JP tuic"
    assert links.parse_link(link, name) == tuic.TuicNode(
        name="JP tuic", host="2001:db8::5", port=443, uuid=UID, password="p w", sni="t.example.com", alpn=("h3",),
        congestion_control="bbr", udp_relay_mode="quic", allow_insecure=True)


@pytest.mark.parametrize(("extra", "reason"), [
    ({"uuid": "", "token": "v4token"}, "TUIC v4"),
    ({"password": ""}, "no uuid or password"),
    ({"ip": "198.51.100.1"}, "ip '198.51.100.1'"),
    ({"disable-sni": True}, "disable_sni=1"),
    ({"udp-relay-mode": "fast"}, "udp_relay_mode=fast"),
])
def test_clash_tuic_refusals(extra: dict[str, object], reason: str) -> None:
    from daetui.outbound.subscription import clash_link

    proxy = {"name": "t", "type": "tuic", "server": "203.0.113.5", "port": 443, "uuid": UID, "password": "p", **extra}
    with pytest.raises(ValueError, match=re.escape(reason)):
        links.parse_link(*clash_link(proxy))


@pytest.mark.parametrize(("code", "phrase", "ready", "words"), [
    (0xFFFFFFF1, "AuthenticationFailed", True, "authentication rejected by the server (AuthenticationFailed): "
                                               "wrong uuid or password"),
    (0xFFFFFFF1, "", True, "authentication rejected by the server (AuthenticationFailed)"),
    (0xFFFFFFF2, "", True, "the server waited for our authentication in vain (AuthenticationTimeout)"),
    (0x12A, "hostname 'x' doesn't match", False, "QUIC handshake failed: hostname 'x' doesn't match (error 0x12a)"),
    (0, "", True, "QUIC connection closed: no reason given (error 0x0)"),
])
def test_why_a_connection_closed(code: int, phrase: str, ready: bool, words: str) -> None:
    from types import SimpleNamespace

    from aioquic.quic.events import ConnectionTerminated

    conn = SimpleNamespace(where="n (203.0.113.7:443)", ready=SimpleNamespace(done=lambda: ready))
    event = ConnectionTerminated(error_code=code, frame_type=None, reason_phrase=phrase)
    got = _tuic_conn._Connection._why_closed(conn, event)  # type: ignore[arg-type]
    assert got.startswith("tuic n (203.0.113.7:443): ") and words in got, got
