"""DNS over TCP from the LAN, hijacked by the kernel: its bounds hold on the transparent listeners too.

tests/unit/test_dns_serving.py shows each bound on loopback; here the LAN
client's connections to a server on the "internet" are the ones bounded,
and the snapshot counts what was refused or timed out.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from pathlib import Path

import dns.message
import pytest
from helpers import addresses, lan_connect, lan_query, plane_in_lab, snapshot, wait_for

from daetui.lab.topology import ADDR
from testkit.configs import ONE_UPSTREAM, dns_config
from testkit.peers.dnsmasq import dns_peers

pytestmark = pytest.mark.kernel

UNBOUND4 = ADDR.dns4[0]


@pytest.fixture(scope="module")
def peers(lab):
    with dns_peers(lab) as p:
        yield p


def closed_by_server(s: socket.socket, timeout: float = 3.0) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_hijacked_dns_over_tcp_is_bounded_per_client_and_a_stuck_reader_is_reset(lab, peers, tmp_path: Path):
    cfg = dns_config(ONE_UPSTREAM.replace("[dns]", "[dns]\ntcp_connections_per_client = 3\n"
                                                   'tcp_write_timeout = "1s"\ntcp_idle_timeout = "30s"'))
    with plane_in_lab(lab, cfg, tmp_path) as runner:
        held = [lan_connect(lab, UNBOUND4, 53) for _ in range(3)]
        try:
            extra = lan_connect(lab, UNBOUND4, 53)
            assert closed_by_server(extra), "a fourth connection of one client was kept"
            extra.close()
            # The ones held still answer.
            q = dns.message.make_query("www.example.test", "A").to_wire()
            held[0].settimeout(5)
            held[0].sendall(struct.pack("!H", len(q)) + q)
            n = struct.unpack("!H", held[0].recv(2))[0]
            data = b""
            while len(data) < n:
                data += held[0].recv(n - len(data))
            assert addresses(dns.message.from_wire(data)) == [ADDR.hosts4[0]]
            assert snapshot(runner).dns.serving.tcp_refused == 1
        finally:
            for s in held:
                s.close()
        wait_for(lambda: snapshot(runner).dns.serving.tcp_open == 0)
        # A client that asks and asks but never reads: reset once a reply waits past tcp_write_timeout.
        stuck = lan_connect(lab, UNBOUND4, 53)
        try:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
            q = dns.message.make_query("big.example.test", "A").to_wire()  # ~700 bytes a reply
            queries = (struct.pack("!H", len(q)) + q) * 1000
            stuck.setblocking(False)

            def push_until_reset() -> bool:
                # Queries as fast as the server takes them, until it gives up on the client.
                with contextlib.suppress(BlockingIOError, ConnectionError):
                    stuck.send(queries)
                return snapshot(runner).dns.serving.tcp_write_timeouts == 1

            wait_for(push_until_reset, timeout=30, interval=0.02)
            deadline = time.monotonic() + 5
            while stuck.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert stuck.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != 1  # no longer established
        finally:
            stuck.close()
        # Others are served all along.
        assert addresses(lan_query(lab, UNBOUND4, "api.example.test", tcp=True)) == [ADDR.hosts4[1]]
        wait_for(lambda: snapshot(runner).dns.serving.tcp_open == 0)
