"""The relay path's budgets in the lab (issue 11, fix 2): the descriptor limit a started daemon runs with,
flows per LAN client, and the idle timeout of relayed TCP."""

from __future__ import annotations

import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import lan_connect, lan_socket, newest_conn, plane_in_lab, snapshot, wait_for

from daetui.config.load import parse_config
from daetui.lab.topology import ECHO_PORT
from testkit.configs import LAB_CHECKS, RELAY_CONFIG, RELAYED4
from testkit.peers.shadowsocks import SsServer

pytestmark = pytest.mark.kernel

HOST_B = "192.0.2.11"   # a second LAN device (as tests/stress' host_b)


def relay_config(extra_global: str) -> str:
    return RELAY_CONFIG.replace('lan_interface = ["lan0"]', f'lan_interface = ["lan0"]\n{extra_global}')


@pytest.fixture(scope="module")
def host_b(lab) -> Iterator[str]:  # type: ignore[no-untyped-def]
    argv = ["ip", "-n", lab.lan, "addr"]
    dev = lab.addr.client_ifname
    subprocess.run([*argv, "replace", f"{HOST_B}/24", "dev", dev], check=True)
    try:
        yield HOST_B
    finally:
        subprocess.run([*argv, "del", f"{HOST_B}/24", "dev", dev], check=False)


def connect_from(lab, source: str, host: str, port: int) -> socket.socket:  # type: ignore[no-untyped-def]
    s = lan_socket(lab, host)
    s.settimeout(5)
    s.bind((source, 0))
    s.connect((host, port))
    return s


def echoes(s: socket.socket, payload: bytes = b"ping") -> bool:
    """True when `payload` comes back; False when the connection was reset or closed instead."""
    try:
        s.sendall(payload)
        return s.recv(100) == payload
    except (ConnectionResetError, BrokenPipeError):
        return False


def refused(lab) -> bool:  # type: ignore[no-untyped-def]
    """True when a new flow of the LAN client is reset (at connect, or at its first bytes)."""
    try:
        s = lan_connect(lab, RELAYED4, ECHO_PORT)
    except ConnectionResetError:
        return True
    with s:
        return not echoes(s)


def test_a_started_daemon_runs_with_its_soft_descriptor_limit_raised_to_the_hard_one(daemon):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard limit here is {hard}: nothing to raise")
    daemon.config_path.write_text(RELAY_CONFIG)
    # As a shell or a service manager hands it over: the default soft limit of 1024.
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        daemon.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{daemon.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    got_soft, got_hard = row.split()[3:5]
    assert got_soft == got_hard, row
    assert daemon.stop() == 0, daemon.log()


def test_a_client_over_its_flow_budget_is_refused_and_another_client_still_connects(lab, host_b, tmp_path):
    with plane_in_lab(lab, relay_config("max_flows_per_client = 4"), tmp_path / "run") as runner:
        held = [lan_connect(lab, RELAYED4, ECHO_PORT) for _ in range(4)]
        try:
            assert all(echoes(s) for s in held)
            assert refused(lab), "a fifth flow of host A was relayed"
            with connect_from(lab, host_b, RELAYED4, ECHO_PORT) as b:
                assert echoes(b), "host B was refused too"
            b = snapshot(runner).budgets
            assert b.max_flows_per_client == 4 and b.refused_client >= 1 and b.last_refused == lab.addr.client4
            assert b.fd_limit > 0 and b.fds > 0
            # A flow that ends gives its place back.
            held.pop().close()
            wait_for(lambda: snapshot(runner).budgets.busiest_flows == 3)
            with lan_connect(lab, RELAYED4, ECHO_PORT) as again:
                assert echoes(again)
            # A reload takes a new budget: five now.
            plane = runner.plane
            result = runner.submit(plane.reload(parse_config(relay_config("max_flows_per_client = 5"),
                                                             "test.toml"))).result(60)
            assert result.ok, result.message
            held.append(lan_connect(lab, RELAYED4, ECHO_PORT))
            held.append(lan_connect(lab, RELAYED4, ECHO_PORT))
            assert all(echoes(s) for s in held) and len(held) == 5
            assert refused(lab)
            assert snapshot(runner).budgets.max_flows_per_client == 5
        finally:
            for s in held:
                s.close()


@pytest.fixture(scope="module")
def ss_server(lab) -> Iterator[SsServer]:  # type: ignore[no-untyped-def]
    server = SsServer(lab, "aes-256-gcm", "budget test password", port=8391)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def idle_config(via: str, ss: SsServer | None) -> str:
    if via == "direct":  # no node: the group relays through the direct dialer (splice)
        return relay_config('tcp_idle_timeout = "1s"')
    assert ss is not None
    return f"""
[global]
lan_interface = ["lan0"]
tcp_idle_timeout = "1s"
dial_mode = "ip"
check_interval = "10m"
{LAB_CHECKS}
[node]
ss = "{ss.node(4, "ss").link()}"
[group.proxy]
[routing]
rules = ["dip({RELAYED4}) -> proxy"]
fallback = "direct"
"""


@pytest.mark.parametrize("via, relay", [("direct", "splice"), ("shadowsocks", "framed")])
def test_a_relayed_tcp_flow_idle_for_tcp_idle_timeout_is_ended_and_a_talking_one_is_not(
        lab, tmp_path, request, via, relay):
    ss = request.getfixturevalue("ss_server") if via == "shadowsocks" else None
    with plane_in_lab(lab, idle_config(via, ss), tmp_path / "run") as runner:
        with lan_connect(lab, RELAYED4, ECHO_PORT) as s:
            for _ in range(12):  # 3.6 s of talk, every 0.3 s: never idle for 1 s
                assert echoes(s, b"k")
                time.sleep(0.3)
            s.settimeout(15)
            t0 = time.monotonic()
            try:
                ended = s.recv(100) == b""
            except ConnectionResetError:
                ended = True
            idle_for = time.monotonic() - t0
        assert ended
        conn = wait_for(lambda: next((c for c in [newest_conn(runner, (RELAYED4, ECHO_PORT))]
                                      if c.state != "open"), None))
        assert conn.relay == relay and "idle" in (conn.error or ""), conn
        assert snapshot(runner).budgets.idle_closed >= 1
        assert idle_for < 10
