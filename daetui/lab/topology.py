"""The namespace lab: a LAN, a router and a small "internet", all on this machine.

    [ P-lan ]  veth0 ---- lan0  [ P-router ]  wan0 ---- veth0  [ P-wan ]
    192.0.2.10                192.0.2.1   198.51.100.1       198.51.100.2
    2001:db8:1::10            2001:db8:1::1 2001:db8:2::1    2001:db8:2::2
                                                             hosts on lo:
                                                             203.0.113.10-12
                                                             2001:db8:3::10-12

Every name carries the lab's prefix, so labs never collide with each other or
with anything on the host. No interface of the lab is linked to the host's
namespace and no route leads out of it: lab traffic stays in the lab.
The servers in the `wan` namespace are real sockets in a real process whose
pid is recorded, so `down` ends exactly what `up` started.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from daetui.net.netns import netns_path
from daetui.paths import lab_state_dir

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,11}$")

LAN_MAC = "02:00:5e:00:02:10"
LAN2_MAC = "02:00:5e:00:02:11"
ROUTER_LAN_MAC = "02:00:5e:00:02:01"


@dataclass(frozen=True)
class LabAddresses:
    """The lab's fixed addressing plan, from the documentation ranges."""

    client4: str = "192.0.2.10"
    client6: str = "2001:db8:1::10"
    router_lan4: str = "192.0.2.1"
    router_lan6: str = "2001:db8:1::1"
    router_wan4: str = "198.51.100.1"
    router_wan6: str = "2001:db8:2::1"
    wan_link4: str = "198.51.100.2"
    wan_link6: str = "2001:db8:2::2"
    hosts4: tuple[str, ...] = ("203.0.113.10", "203.0.113.11", "203.0.113.12")
    hosts6: tuple[str, ...] = ("2001:db8:3::10", "2001:db8:3::11", "2001:db8:3::12")
    # DNS servers of the "internet" (daetui.lab.dnspeers): first unbound, second dnsmasq.
    dns4: tuple[str, ...] = ("203.0.113.53", "203.0.113.54")
    dns6: tuple[str, ...] = ("2001:db8:3::53", "2001:db8:3::54")
    lan_ifname: str = "lan0"
    wan_ifname: str = "wan0"
    client_ifname: str = "veth0"


ADDR = LabAddresses()

# Ports of the servers that run on every "internet" host.
HTTP_PORT = 80
ECHO_PORT = 7
SINK_PORT = 9  # discard: reads and counts, for upload tests
SOURCE_PORT = 19  # sends N bytes on request, for download tests


@dataclass
class LabState:
    """What `up` made; written to disk so that `down` can undo it."""

    name: str
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)


class LabError(RuntimeError):
    """The lab could not be built or torn down."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Lab:
    """A lab called `name`: namespaces `<name>-lan`, `<name>-router`, `<name>-wan`."""

    def __init__(self, name: str = "dtlab", state_dir: Path | None = None) -> None:
        if not NAME_RE.match(name):
            raise LabError(f"lab name {name!r}: 1-12 lowercase letters and digits, starting with a letter")
        self.name = name
        self.state_dir = state_dir or lab_state_dir()
        self.addr = ADDR

    # -- names --------------------------------------------------------------
    @property
    def lan(self) -> str:
        return f"{self.name}-lan"

    @property
    def router(self) -> str:
        return f"{self.name}-router"

    @property
    def wan(self) -> str:
        return f"{self.name}-wan"

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.name}.json"

    # -- state ----------------------------------------------------------------
    def _load_state(self) -> LabState | None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        return LabState(name=data["name"], namespaces=list(data["namespaces"]), pids=dict(data["pids"]))

    def _save_state(self, state: LabState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=1))
        os.replace(tmp, self.state_file)

    def is_up(self) -> bool:
        """True when this lab's state file exists and its namespaces are there."""
        state = self._load_state()
        return state is not None and all(netns_path(ns).exists() for ns in state.namespaces)

    # -- build ----------------------------------------------------------------
    def up(self, servers: bool = True) -> None:
        """Build the namespaces, links, addresses and routes, then start the servers."""
        if self.is_up():
            return
        if self._load_state() is not None:
            self.down()
        for ns in (self.lan, self.router, self.wan):
            if netns_path(ns).exists():
                raise LabError(f"namespace {ns} exists but this lab did not make it; not touching it")
        state = LabState(name=self.name)
        try:
            for ns in (self.lan, self.router, self.wan):
                # Recorded before it is made: `down` tolerates what is missing.
                state.namespaces.append(ns)
                self._save_state(state)
                _run("ip", "netns", "add", ns)
                # Addresses usable at once: duplicate address detection would hold
                # IPv6 back for a second or two, and nothing here can collide. Set
                # before the links exist, so that they inherit it.
                self._sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
                self._sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
            self._build_links()
            self._configure()
            if servers:
                state.pids["servers"] = self._start_servers()
                self._save_state(state)
            self._wait_settled()
        except BaseException:
            self.down()
            raise

    def _build_links(self) -> None:
        a = self.addr
        _run("ip", "-n", self.router, "link", "add", "name", a.lan_ifname, "address", ROUTER_LAN_MAC,
             "type", "veth", "peer", "name", a.client_ifname, "address", LAN_MAC, "netns", self.lan)
        _run("ip", "-n", self.router, "link", "add", "name", a.wan_ifname,
             "type", "veth", "peer", "name", "veth0", "netns", self.wan)

    def _sysctl(self, ns: str, key: str, value: str) -> None:
        _run("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")

    def _configure(self) -> None:
        a = self.addr
        for ns in (self.lan, self.router, self.wan):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # A router forwards; daetui checks this and does not own it here.
        self._sysctl(self.router, "net.ipv4.ip_forward", "1")
        self._sysctl(self.router, "net.ipv6.conf.all.forwarding", "1")

        # lan: one client with fixed MAC, default route to the router only.
        ip_lan = ("ip", "-n", self.lan)
        _run(*ip_lan, "addr", "add", f"{a.client4}/24", "dev", a.client_ifname)
        _run(*ip_lan, "-6", "addr", "add", f"{a.client6}/64", "dev", a.client_ifname, "nodad")
        _run(*ip_lan, "link", "set", a.client_ifname, "up")
        _run(*ip_lan, "route", "add", "default", "via", a.router_lan4)
        _run(*ip_lan, "-6", "route", "add", "default", "via", a.router_lan6)

        ip_r = ("ip", "-n", self.router)
        _run(*ip_r, "addr", "add", f"{a.router_lan4}/24", "dev", a.lan_ifname)
        _run(*ip_r, "-6", "addr", "add", f"{a.router_lan6}/64", "dev", a.lan_ifname, "nodad")
        _run(*ip_r, "addr", "add", f"{a.router_wan4}/24", "dev", a.wan_ifname)
        _run(*ip_r, "-6", "addr", "add", f"{a.router_wan6}/64", "dev", a.wan_ifname, "nodad")
        _run(*ip_r, "link", "set", a.lan_ifname, "up")
        _run(*ip_r, "link", "set", a.wan_ifname, "up")
        _run(*ip_r, "route", "add", "default", "via", a.wan_link4)
        _run(*ip_r, "-6", "route", "add", "default", "via", a.wan_link6)

        ip_w = ("ip", "-n", self.wan)
        _run(*ip_w, "addr", "add", f"{a.wan_link4}/24", "dev", "veth0")
        _run(*ip_w, "-6", "addr", "add", f"{a.wan_link6}/64", "dev", "veth0", "nodad")
        _run(*ip_w, "link", "set", "veth0", "up")
        for h in (*a.hosts4, *a.dns4):
            _run(*ip_w, "addr", "add", f"{h}/32", "dev", "lo")
        for h in (*a.hosts6, *a.dns6):
            _run(*ip_w, "-6", "addr", "add", f"{h}/128", "dev", "lo")
        # Routes back to the LAN only; the wan namespace has no default route.
        _run(*ip_w, "route", "add", "192.0.2.0/24", "via", a.router_wan4)
        _run(*ip_w, "-6", "route", "add", "2001:db8:1::/64", "via", a.router_wan6)

    def _wait_settled(self, timeout: float = 10.0) -> None:
        """Wait until IPv6 link-local addresses and their routes are in place.

        The kernel adds them shortly after a link comes up; a test comparing
        routing tables before and after must not see them arrive in between.
        """
        def snapshot() -> tuple[str, int]:
            out, ready = [], 0
            for ns in (self.lan, self.router, self.wan):
                addrs = _run("ip", "-n", ns, "-6", "addr", "show", "scope", "link", check=False).stdout
                ready += sum(1 for ln in addrs.splitlines() if "inet6 fe80" in ln and "tentative" not in ln)
                out.append(addrs)
                out.append(_run("ip", "-n", ns, "-6", "route", "show", "table", "all", check=False).stdout)
            return "".join(out), ready

        deadline = time.monotonic() + timeout
        last, _ = snapshot()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now, ready = snapshot()
            # Four links: lan veth0, router lan0 and wan0, wan veth0.
            if now == last and ready >= 4:
                return
            last = now

    def _start_servers(self) -> int:
        hosts = [*self.addr.hosts4, *self.addr.hosts6]
        argv = ["ip", "netns", "exec", self.wan, sys.executable, "-m", "daetui.lab.servers",
                "--http", str(HTTP_PORT), "--echo", str(ECHO_PORT), "--sink", str(SINK_PORT),
                "--source", str(SOURCE_PORT), *hosts]
        log = open(self.state_dir / f"{self.name}-servers.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        assert proc.stdout is not None
        # The servers print one line once every socket is listening.
        deadline = time.monotonic() + 20
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    line = proc.stdout.readline()
                    if line.startswith(b"ready"):
                        proc.stdout.close()
                        return proc.pid
                    if not line:
                        break
                if proc.poll() is not None:
                    break
        proc.kill()
        raise LabError(f"lab servers did not start; see {self.state_dir / (self.name + '-servers.log')}")

    def adopt(self, name: str, pid: int) -> None:
        """Record a process started in the lab (a DNS peer of the demo): `down` ends it by pid."""
        state = self._load_state()
        if state is None:
            raise LabError(f"lab {self.name} is not up")
        state.pids[name] = pid
        self._save_state(state)

    def adopted(self, name: str) -> int | None:
        """The pid recorded under `name`, if that process still runs."""
        state = self._load_state()
        pid = state.pids.get(name) if state is not None else None
        return pid if pid is not None and _alive(pid) else None

    # -- teardown -------------------------------------------------------------
    def down(self) -> None:
        """End the recorded processes by pid and delete the recorded namespaces."""
        state = self._load_state()
        if state is None:
            return
        for pid in state.pids.values():
            _stop_pid(pid)
        for ns in reversed(state.namespaces):
            if netns_path(ns).exists():
                # Processes still inside (a daemon under test) keep the netns alive
                # past `ip netns del`; its veths die with the last of them.
                _run("ip", "netns", "del", ns, check=False)
        self.state_file.unlink(missing_ok=True)
        (self.state_dir / f"{self.name}-servers.log").unlink(missing_ok=True)
        # Directories of DNS peers adopted by the lab (daetui.lab.dnspeers names them so).
        for d in Path(tempfile.gettempdir()).glob(f"daetui-{self.name}-*"):
            shutil.rmtree(d, ignore_errors=True)
        # The default run dir of daetui in this lab's router went with the namespace,
        # unless a daemon still runs there (it holds the namespace alive).
        run_dir = self.state_dir.parent / f"netns-{self.router}"
        if run_dir.is_dir() and not (run_dir / "daetui.pid").exists():
            shutil.rmtree(run_dir, ignore_errors=True)

    # -- inspection -------------------------------------------------------------
    def status(self) -> str:
        """A human-readable report of the lab."""
        state = self._load_state()
        if state is None:
            return f"lab {self.name}: down"
        lines = [f"lab {self.name}: {'up' if self.is_up() else 'broken (run: daetui lab down)'}"]
        for ns in state.namespaces:
            present = netns_path(ns).exists()
            lines.append(f"  netns {ns}: {'present' if present else 'missing'}")
            if present:
                out = _run("ip", "-n", ns, "-br", "addr", check=False).stdout
                lines.extend(f"    {ln}" for ln in out.strip().splitlines())
        for what, pid in state.pids.items():
            lines.append(f"  {what}: pid {pid} {'running' if _alive(pid) else 'gone'}")
        return "\n".join(lines)

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        """The argv that runs `argv` inside namespace `ns` of this lab."""
        return ["ip", "netns", "exec", ns, *argv]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL a process this lab started, by its recorded pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    # Ours: the lab's servers, `ip netns exec` wrappers, and the DNS peers (their config is in a daetui- dir).
    if b"daetui.lab" not in cmdline and b"ip\x00netns" not in cmdline and b"/daetui-" not in cmdline:
        return  # the pid was reused by something that is not ours
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = 0 if _alive(pid) else pid
        if done or not _alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def have_tool(name: str) -> bool:
    """True when an external program the lab uses is installed."""
    return shutil.which(name) is not None
