"""Helpers of the tests of the router's own traffic: programs run in a namespace and a cgroup, and what
ss-server saw (tests/kernel/conftest.py has their fixtures: `own_ss`, `own_cgroup`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from daetui.lab.topology import ECHO_PORT, HTTP_PORT
from testkit.peers.shadowsocks import SsServer

SS_PORT = 8394


def run_in(ns: str, cg: Path, *argv: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """`argv` in namespace `ns`, started inside cgroup `cg` (it and its children stay there)."""
    procs = cg / "cgroup.procs"

    def enter() -> None:
        procs.write_text(str(os.getpid()))

    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
                          preexec_fn=enter)


def curl(ns: str, cg: Path, host: str, prog: str = "curl") -> subprocess.CompletedProcess[str]:
    url = f"http://[{host}]:{HTTP_PORT}/" if ":" in host else f"http://{host}:{HTTP_PORT}/"
    if prog == "wget":
        return run_in(ns, cg, "wget", "-q", "-O-", "-T", "5", "-t", "1", url)
    return run_in(ns, cg, "curl", "-s", "-m", "5", url)


UDP_CLIENT = """
import socket, sys
host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(payload, (host, port))
print(s.recvfrom(2048)[0].decode())
"""


def udp_echo(ns: str, cg: Path, host: str, payload: str) -> str:
    done = run_in(ns, cg, "python3", "-c", UDP_CLIENT, host, str(ECHO_PORT), payload)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def ss_targets(ss: SsServer) -> list[str]:
    return [line.split("connect to ", 1)[1].strip() for line in ss.log_text().splitlines() if "connect to " in line]


