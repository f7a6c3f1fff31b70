"""A daemon with the controller API, a group of real shadowsocks nodes, and views of what it did.

For the tests that point clients nobody here wrote (PyPI's clash clients, a dashboard in a
browser) at daetui: two ss-servers (`ss-a`, `ss-b`, Debian's ss-server) and a node whose server
is not there (`ss-dead`), in `[group.proxy]` with policy fixed(0) (mihomo's Selector), for the
LAN's flows to 203.0.113.10; the API on 127.0.0.1:9090 of the router namespace (testkit.api).

    world = ProxyWorld(lab, directory).start()
    ... world.snapshot(), world.conn(sport), world.saw("ss-a", host, port) ...
    world.stop()

What the daemon did is read where it cannot be the API's own say: its snapshot over the control
socket, and each node's server's log (ss-server -v logs `connect to HOST:PORT` per connection).
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from daetui.control.client import call_once
from daetui.control.connections import Connection
from daetui.control.state import Snapshot
from daetui.lab.topology import ADDR, ECHO_PORT, Lab
from daetui.net.netns import netns
from daetui.outbound.shadowsocks import SsNode
from testkit.api import ApiLab, api_config
from testkit.peers.shadowsocks import SsServer

HOST = ADDR.hosts4[0]                 # the LAN's flows there go through the group
LAB_URL = f"http://{HOST}/"           # a delay test's URL: the lab's web server, through a node
METHOD, PASSWORD = "aes-256-gcm", "real clients"
PORTS = {"ss-a": 8411, "ss-b": 8412}  # the nodes with a server
DEAD_PORT = 8419                      # ss-dead's: no server there
GROUP = "proxy"
MEMBERS = ("ss-a", "ss-b", "ss-dead")


class ProxyWorld:
    """The servers, the daemon, and what they did."""

    def __init__(self, lab: Lab, directory: Any) -> None:
        self.lab = lab
        self.directory = directory
        self.servers = {name: SsServer(lab, METHOD, PASSWORD, port=port) for name, port in PORTS.items()}
        self.api: ApiLab | None = None

    def start(self) -> ProxyWorld:
        try:
            for s in self.servers.values():
                s.start()
            links = {name: s.node(4, name).link() for name, s in self.servers.items()}
            links["ss-dead"] = SsNode("ss-dead", ADDR.hosts4[2], DEAD_PORT, METHOD, PASSWORD).link()
            nodes = "\n".join(f'"{n}" = "{link}"' for n, link in links.items())
            config = api_config(nodes=nodes, groups=f'[group.{GROUP}]\npolicy = "fixed(0)"',
                                rules=f'"dip({HOST}) -> {GROUP}",', extra_global='dial_mode = "ip"')
            self.api = ApiLab(self.lab, self.directory, config).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None
        for s in self.servers.values():
            s.stop()

    @property
    def daemon_api(self) -> ApiLab:
        assert self.api is not None, "not started"
        return self.api

    # -- what the daemon did -------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The daemon's own snapshot, over its control socket (the kernel's flows too).

        Asked from a thread of its own: call_once runs an event loop, and the caller's thread may
        have one running already (Playwright's sync API keeps one on the thread that drives it)."""
        path = self.daemon_api.daemon.control_path
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(call_once, path, lambda c: c.snapshot(flows=True)).result(60)

    def group(self) -> Any:
        return next(g for g in self.snapshot().groups if g.name == GROUP)

    def conn(self, sport: int, state: str | None = "open") -> Connection | None:
        """The daemon's relayed connection from the LAN client's port `sport` (`state` None: any)."""
        return next((c for c in self.snapshot().connections if c.src == (ADDR.client4, sport)
                     and (state is None or c.state == state)), None)

    def saw(self, node: str, host: str, port: int) -> int:
        """How often `node`'s ss-server has connected to host:port so far (its -v log)."""
        return self.servers[node].console_path.read_text(errors="replace").count(f"connect to {host}:{port}")

    def history(self, name: str) -> list[dict[str, Any]]:
        """The daemon's delay history of `name`, oldest first (GET /proxies/NAME, as curl gets it)."""
        r = self.daemon_api.curl("GET", f"/proxies/{name}")
        assert r.status == 200, r.text
        return list(r.json["history"])

    def unpin(self) -> None:
        """Back to the config's choice, whatever a test pinned (DELETE /proxies/GROUP)."""
        r = self.daemon_api.curl("DELETE", f"/proxies/{GROUP}")
        assert r.status == 204, r.text

    # -- the LAN's flows -----------------------------------------------------------------------------
    def lan_flow(self, port: int = ECHO_PORT, send: bytes = b"", timeout: float = 10.0) -> tuple[socket.socket, int]:
        """A TCP connection from the LAN client to HOST:port, through the group, with `send` sent (an echo
        server's answer read back whole); the socket and its source port."""
        with netns(self.lab.lan):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect((HOST, port))
            if send:
                s.sendall(send)
                if port == ECHO_PORT:
                    got = b""
                    while len(got) < len(send):
                        chunk = s.recv(len(send) - len(got))
                        if not chunk:
                            raise ConnectionError(f"the echo server closed after {len(got)} of {len(send)} bytes")
                        got += chunk
                    if got != send:
                        raise AssertionError("the echo came back different")
        except BaseException:
            s.close()
            raise
        return s, s.getsockname()[1]


def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the connection ends (EOF or reset) within `timeout`."""
    s.settimeout(timeout)
    try:
        return s.recv(1 << 16) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
