"""How fast is daetui's proxied path, against the classic C router proxy, ss-redir?

In the lab, in one run, the LAN client's TCP to 203.0.113.10 goes through a
shadowsocks server (Debian's ss-server, 203.0.113.12, the same cipher and
password throughout) by way of either
  - daetui: the kernel hands the flow to the control plane, which relays it
    through its shadowsocks dialer (a group with one node, `fixed(0)`); or
  - ss-redir (shadowsocks-libev) in the router namespace, the LAN's TCP to
    203.0.113.10 sent to it by a TPROXY rule (nftables, or iptables with
    --firewall) and policy routing, as a classic router setup does it.
The two never run at the same time: rounds alternate (daetui, then ss-redir),
and each round starts its proxy, measures, and removes every process and rule
it made. Per round, from the LAN:
  - TCP throughput, one iperf3 stream, upload (LAN -> wan) and download (-R);
  - new connections per second: one short connection after the other, each a
    tiny request and its answer, the server closing (like HTTP/1.0);
  - CPU the proxy (daetui's process, or ss-redir) and ss-server used while
    iperf3 ran and while the connections were made, in % of one core; and
    from it the proxy's CPU per Gbit/s and per connection, which other
    processes on the machine disturb less than the rates themselves.
Figures are medians over --rounds rounds; ratios are daetui / ss-redir. Both
proxies log only warnings (daetui `log_level = "warn"`, ss-redir without -v)
and dial by IP (daetui `dial_mode = "ip"`: no sniffing).

With --obfs http (the default) or tls, each round also runs both proxies against a
second ss-server of the same cipher and password behind simple-obfs's obfs-server
(SIP003): daetui with the node's `?plugin=obfs-local;obfs=...` (the framing in its own
process), ss-redir with `plugin: obfs-local` (the framing in the obfs-local process it
starts; ss-local would start the same one, but takes SOCKS, which TPROXY cannot feed).
Those rounds have a table of their own. A process's CPU counts its children's: obfs-local
is ss-redir's, obfs-server ss-server's. --obfs none leaves them out.

With --vmess-ws, each round also runs both sides of vmess over WebSocket (no TLS, security
aes-128-gcm, alterId 0) against v2ray 4.34 (Debian's /usr/bin/v2ray, 203.0.113.11) with a
vmess inbound on ws: daetui with a node given by a vmess:// link (net=ws, a path and host),
and v2ray itself as the client in the router namespace, a dokodemo-door inbound
(`followRedirect`, `sockopt.tproxy`) on ss-redir's port fed by the same TPROXY rule and
policy routing, its vmess outbound over ws to the same server (access log off, warnings only,
`policy.levels.0.uplinkOnly` 0: see V2rayRedir).
Their connections/s are fragile: about one connection in 1500-4000 through the v2ray server
gets no answer at all (with daetui and with v2ray's client alike; nothing in v2ray's logs, cause
not found), and _cps.py waits out its 5 s timeout on it, so a round that meets one counts only
the connections made before it. Read that row over several rounds.
Those rounds have a table of their own too; the ratio there is daetui / the v2ray client.

After an ss-redir round its rules are checked gone by listing them, not by a
direct connection: the router keeps ss-redir's TIME_WAIT sockets (it closes
first towards the client) for a minute, and the kernel's early demux hands
the LAN's next unproxied SYN on such a 4-tuple to one of them, so about half
of direct connections fail meanwhile. Proxied rounds are not affected: BPF
assigns daetui's flows at TC ingress, and TPROXY passes a SYN that hits a
TIME_WAIT socket to the listener.

    .venv/bin/python bench/proxy_path.py [--seconds 5] [--rounds 3] [--method aes-256-gcm]
                                         [--firewall nft|iptables|iptables-legacy] [--obfs http|tls|none]
                                         [--vmess-ws] [--workers N] [--clients K]
                                         [--profile /path/to/py-spy] [--summary FILE]

--workers N runs daetui with N relay workers (global.relay_workers); --clients K makes the new
connections from K client processes at once (each one after the other), which is what spreads
over workers: one client's connections, one after the other, measure latency more than CPU.

--profile adds one more daetui round, not counted, with py-spy sampling the
daemon through an upload, a download and the new connections, and prints
where its time goes.
Needs iperf3, shadowsocks-libev, simple-obfs (for --obfs), v2ray (for --vmess-ws), and nftables (or iptables).
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# bench/ (for _lab) goes last on the path, not first where Python puts it when it runs this file:
# its dns.py would hide dnspython's `dns`, which testkit.peers.v2ray imports (by way of
# daetui.lab.dnspeers). As bench/dns.py does it: `remove` takes the first occurrence, the one in front.
sys.path.append(str(Path(__file__).resolve().parent))
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _lab
import _summary
from _lab import cps_server, end, iperf_server, require_root

from daetui.lab.peer import LabPeer
from daetui.lab.topology import ADDR, Lab
from daetui.net.netns import netns
from testkit.configs import LAB_CHECKS
from testkit.daemon import Daemon, ns_exec

TARGET = ADDR.hosts4[0]          # 203.0.113.10: iperf3 and the request/answer server, in wan
IPERF_PORT, RR_PORT = 5201, 5300
PASSWORD = "daetui bench"
SS_PORT = 8388
SS_OBFS_PORT = 8389              # the second ss-server, behind obfs-server
OBFS_HOST = "cdn.bench.test"
REDIR_PORT = 12345               # ss-redir's (or the v2ray client's) listener in the router namespace (127.0.0.1)
# The TPROXY peer's policy routing; clear of daetui's (mark 0x2000000, table 2024, pref 1000).
REDIR_MARK, REDIR_TABLE, REDIR_PREF = 0x100, 2026, 1100
NFT_TABLE = "daetui_bench_redir"
SS_REDIR = "/usr/bin/ss-redir"
# --vmess-ws: v2ray's vmess inbound over ws on the wan's second address (ss-server has the third).
V2RAY_ADDR4, V2RAY_ADDR6 = ADDR.hosts4[1], ADDR.hosts6[1]
VMESS_PORT = 10086
VMESS_UUID = "6f1c2b9e-3d4a-4e5f-8a7b-9c0d1e2f3a4b"
VMESS_SECURITY = "aes-128-gcm"
WS_PATH, WS_HOST = "/bench", "ws.bench.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """
[global]
lan_interface = ["lan0"]
log_level = "warn"
dial_mode = "ip"
relay_workers = {workers}
# Checks stay inside the lab; fixed(0) uses the node whatever they find.
check_interval = "600s"
{checks}

[node]
bench = "{link}"

[group.proxy]
policy = "fixed(0)"

[routing]
rules = ["dip({target}) -> proxy"]
fallback = "direct"
"""


OPTIONS = {"workers": 0, "clients": 1}   # --workers, --clients


def ask_once(lab: Lab) -> str:
    """The address the request/answer server saw this LAN client come from (ss-server's, when proxied)."""
    with netns(lab.lan):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(5)
        try:
            s.connect((TARGET, RR_PORT))
            s.sendall(b"GET\n")
            return s.recv(256).decode().strip()
        except OSError as e:
            raise RuntimeError(f"a request from the LAN to {TARGET}:{RR_PORT} failed: {e}") from None


# -- figures -------------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) and of its live children (a SIP003 plugin) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except FileNotFoundError:  # gone since it was listed
            pass
    return total


def children(pid: int) -> list[int]:
    """The live child processes of pid (of all its threads)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return out


def iperf(lab: Lab, seconds: float, reverse: bool) -> float:
    return _lab.iperf(lab.lan, TARGET, IPERF_PORT, seconds, reverse)


def cps(lab: Lab, seconds: float) -> float:
    """Short request/answer connections (_cps.py --ask): what a proxy must carry, not only accept."""
    return _lab.cps(lab.lan, TARGET, RR_PORT, seconds, ask=True, clients=OPTIONS["clients"])


@dataclass
class Round:
    up: float = 0.0       # Gbit/s, LAN -> wan
    down: float = 0.0     # Gbit/s, wan -> LAN
    cps: float = 0.0      # new connections per second
    # % of one core: "proxy", "server" during iperf3; "proxy cps", "server cps" during the connections
    cpu: dict[str, float] = field(default_factory=dict)


def measure(lab: Lab, seconds: float, pids: dict[str, int]) -> Round:
    """One round's figures. CPU is over the measured seconds (the tools' start and end cost the proxy nothing)."""
    r = Round()
    used = collections.Counter[str]()
    for reverse in (False, True):
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        gbps = iperf(lab, seconds, reverse)
        for k, p in pids.items():
            used[k] += cpu_seconds(p) - before[k]
        if reverse:
            r.down = gbps
        else:
            r.up = gbps
    r.cpu = {k: 100 * v / (2 * seconds) for k, v in used.items()}
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    r.cps = cps(lab, seconds)
    r.cpu.update({f"{k} cps": 100 * (cpu_seconds(p) - before[k]) / seconds for k, p in pids.items()})
    return r


# -- the two proxies --------------------------------------------------------------------------------

class Redir:
    """ss-redir in the router namespace, and the TPROXY rule and policy routing that feed it the LAN's TCP.

    Everything it adds it records, and `stop` deletes exactly that, then ends ss-redir by its pid.
    Subclasses run another TPROXY client on the same port (`V2rayRedir`): they write its config
    (`_argv`) and say what its log shows once it listens (`_ready_text`).
    """

    kind = "ss-redir"

    def __init__(self, lab: Lab, method: str, firewall: str, port: int = SS_PORT, obfs: str | None = None) -> None:
        self.method, self.port, self.obfs = method, port, obfs
        self._bring_up(lab, firewall)

    def _argv(self) -> list[str]:
        """Write the client's config into self.tmp; its command line."""
        conf = self.tmp / "ss-redir.json"
        obfs = self.obfs
        plugin = {"plugin": "obfs-local", "plugin_opts": f"obfs={obfs};obfs-host={OBFS_HOST}"} if obfs else {}
        conf.write_text(json.dumps({
            "server": ADDR.hosts4[2], "server_port": self.port, "password": PASSWORD, "method": self.method,
            "local_address": "127.0.0.1", "local_port": REDIR_PORT, "mode": "tcp_only", "timeout": 60,
            "no_delay": True, "fast_open": False,
        } | plugin))
        conf.chmod(0o600)
        return [SS_REDIR, "-c", str(conf), "-T"]

    _ready_text = f"listening at 127.0.0.1:{REDIR_PORT}"

    def _bring_up(self, lab: Lab, firewall: str) -> None:
        self.lab = lab
        self.firewall = firewall
        self.undo: list[list[str]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"daetui-bench-{self.kind}-"))
        self.log = self.tmp / f"{self.kind}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            argv = self._argv()
            with open(self.log, "wb") as logf:
                self.proc = subprocess.Popen(["ip", "netns", "exec", lab.router, *argv],
                                             stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
            self._wait_listening()
            self._route()
            self._tproxy()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _wait_listening(self, timeout: float = 5.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self._ready_text not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} did not start:\n" + self.log.read_text(errors="replace"))
            time.sleep(0.05)

    def _do(self, argv: list[str], undo: list[str], stdin: str | None = None) -> None:
        out = subprocess.run(["ip", "netns", "exec", self.lab.router, *argv], input=stdin, capture_output=True,
                             text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {out.stderr.strip()}")
        self.undo.append(undo)

    def _route(self) -> None:
        mark = f"{REDIR_MARK:#x}/{REDIR_MARK:#x}"
        self._do(["ip", "rule", "add", "fwmark", mark, "lookup", str(REDIR_TABLE), "pref", str(REDIR_PREF)],
                 ["ip", "rule", "del", "fwmark", mark, "lookup", str(REDIR_TABLE), "pref", str(REDIR_PREF)])
        self._do(["ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", str(REDIR_TABLE)],
                 ["ip", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", str(REDIR_TABLE)])

    def _tproxy(self) -> None:
        if self.firewall == "nft":
            ruleset = (f"table ip {NFT_TABLE} {{\n"
                       " chain prerouting {\n"
                       "  type filter hook prerouting priority mangle; policy accept;\n"
                       f"  ip daddr {TARGET} meta l4proto tcp"
                       f" tproxy to 127.0.0.1:{REDIR_PORT} meta mark set {REDIR_MARK:#x} accept\n"
                       " }\n}\n")
            out = subprocess.run(["ip", "netns", "exec", self.lab.router, "nft", "list", "table", "ip", NFT_TABLE],
                                 capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                raise RuntimeError(f"nft table ip {NFT_TABLE} exists already in {self.lab.router}; not touching it")
            self._do(["nft", "-f", "-"], ["nft", "delete", "table", "ip", NFT_TABLE], stdin=ruleset)
        else:
            spec = ["PREROUTING", "-d", f"{TARGET}/32", "-p", "tcp", "-j", "TPROXY", "--on-ip", "127.0.0.1",
                    "--on-port", str(REDIR_PORT), "--tproxy-mark", f"{REDIR_MARK:#x}/{REDIR_MARK:#x}"]
            self._do([self.firewall, "-w", "-t", "mangle", "-A", *spec],
                     [self.firewall, "-w", "-t", "mangle", "-D", *spec])

    def stop(self) -> None:
        errors = []
        while self.undo:
            argv = self.undo.pop()
            out = subprocess.run(["ip", "netns", "exec", self.lab.router, *argv], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode != 0:
                errors.append(f"{' '.join(argv)}: {out.stderr.strip()}")
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:  # by its pid: `ip netns exec` execs the client in place
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)
        errors += self.leftovers()
        if errors:
            raise RuntimeError(f"{self.kind}'s setup not undone: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """What of this setup is still in the router namespace (nothing, after `stop`)."""
        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["ip", "netns", "exec", self.lab.router, *argv], capture_output=True, text=True,
                                  timeout=30)

        out = []
        if run("ip", "rule", "list", "pref", str(REDIR_PREF)).stdout.strip():
            out.append(f"ip rule pref {REDIR_PREF}")
        if run("ip", "route", "show", "table", str(REDIR_TABLE)).stdout.strip():
            out.append(f"routes in table {REDIR_TABLE}")
        if self.firewall == "nft":
            if run("nft", "list", "table", "ip", NFT_TABLE).returncode == 0:
                out.append(f"nft table ip {NFT_TABLE}")
        elif f"--on-port {REDIR_PORT}" in run(self.firewall, "-w", "-t", "mangle", "-S", "PREROUTING").stdout:
            out.append(f"{self.firewall} TPROXY rule")
        return out


class V2rayRedir(Redir):
    """v2ray 4.34 as the TPROXY client: dokodemo-door (followRedirect, sockopt tproxy), vmess over ws out.

    The same port, TPROXY rule and policy routing as ss-redir's; the server is the bench's v2ray
    (vmess inbound on ws, `vmess_ws_server`), with the same id, security, path and Host as daetui's link.
    """

    kind = "v2ray-client"
    _ready_text = "started"  # "V2Ray 4.34.0 started", logged once every inbound listens

    def __init__(self, lab: Lab, firewall: str) -> None:
        self._bring_up(lab, firewall)

    def _argv(self) -> list[str]:
        from testkit.peers.v2ray import V2RAY

        conf = self.tmp / "config.json"
        conf.write_text(json.dumps({
            # Warnings to stdout (the log read above); no access log, as ss-redir without -v.
            "log": {"loglevel": "warning", "access": "none"},
            # dokodemo-door closes the LAN's connection only once both ways are done: after the
            # server's end it waits for the client's, or uplinkOnly seconds (v4's default: 2), so
            # with the default each short connection would last that long (the bench measured 1
            # conn/s). 0 closes it when the answer is written, as ss-redir and daetui pass the end on.
            "policy": {"levels": {"0": {"uplinkOnly": 0}}},
            "inbounds": [{
                "tag": "tproxy", "protocol": "dokodemo-door", "listen": "127.0.0.1", "port": REDIR_PORT,
                "settings": {"network": "tcp", "followRedirect": True},
                "streamSettings": {"sockopt": {"tproxy": "tproxy"}},
            }],
            "outbounds": [{
                "tag": "vmess-ws", "protocol": "vmess",
                "settings": {"vnext": [{"address": V2RAY_ADDR4, "port": VMESS_PORT, "users": [
                    {"id": VMESS_UUID, "alterId": 0, "security": VMESS_SECURITY}]}]},
                "streamSettings": {"network": "ws", "wsSettings": {"path": WS_PATH, "headers": {"Host": WS_HOST}}},
            }],
        }, indent=1))
        conf.chmod(0o600)
        check = subprocess.run([V2RAY, "-test", "-config", str(conf)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"v2ray rejects the client's config:\n{check.stdout}{check.stderr}")
        return [V2RAY, "-config", str(conf)]


def vmess_ws_link() -> str:
    """daetui's node for the bench's v2ray: a v2rayN vmess:// link, net=ws with the path and Host header."""
    obj = {"v": "2", "ps": "bench-vmess-ws", "add": V2RAY_ADDR4, "port": str(VMESS_PORT), "id": VMESS_UUID,
           "aid": "0", "scy": VMESS_SECURITY, "net": "ws", "type": "none", "host": WS_HOST, "path": WS_PATH,
           "tls": ""}
    return "vmess://" + base64.b64encode(json.dumps(obj).encode()).decode()


def start_daetui(lab: Lab, link: str) -> Daemon:
    config = CONFIG.format(target=TARGET, checks=LAB_CHECKS, link=link, workers=OPTIONS["workers"])
    old = os.umask(0o077)  # the config holds the node's password: readable by root only
    try:
        return Daemon.from_text(lab.router, config).start(timeout=90)
    finally:
        os.umask(old)


def stop_daetui(daemon: Daemon) -> None:
    daemon.stop()
    assert daemon.directory is not None
    shutil.rmtree(daemon.directory, ignore_errors=True)  # the config holds the node's password


# -- profile --------------------------------------------------------------------------------------------

def profile(lab: Lab, link: str, pyspy: str, seconds: float, native: bool = False) -> None:
    """An extra daetui round with py-spy sampling the daemon during an upload, a download and new connections."""
    daemon = start_daetui(lab, link)
    try:
        for what in ("upload", "download", "new connections"):
            raw = Path(tempfile.mkstemp(prefix="daetui-bench-pyspy-", suffix=".txt")[1])
            try:
                spy = subprocess.Popen([pyspy, "record", "--format", "raw", "-r", "250", "-d", f"{seconds + 1:g}",
                                        "-o", str(raw), "-p", str(daemon.pid)]
                                       + (["--native"] if native else ["--nonblocking"]),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                time.sleep(0.5)
                if what == "new connections":
                    figure = f"{cps(lab, seconds):.0f} conn/s"
                else:
                    figure = f"{iperf(lab, seconds, what == 'download'):.2f} Gbit/s"
                _, err = spy.communicate(timeout=seconds + 30)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy: {err.strip()}")
                print(f"\nprofile of daetui, {what} ({figure} while sampled):")
                print_profile(raw.read_text())
            finally:
                raw.unlink(missing_ok=True)
    finally:
        stop_daetui(daemon)


def print_profile(collapsed: str, top: int = 18) -> None:
    """Self and inclusive time per function, from py-spy's collapsed stacks ("frame;frame;... count")."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        print("  (no samples: the daemon was idle)")
        return
    print(f"  {total} samples of the busy thread(s); self % | inclusive % | function (file)")
    for f, n in own.most_common(top):
        print(f"  {100 * n / total:5.1f} {100 * incl[f] / total:6.1f}  {f}")
    print("  (Runner.run's self time is uvloop's C code: the loop, and the socket calls its sock_* make)")


def _short(frame: str) -> str:
    """py-spy's 'func (path/file.py:line)' with the path shortened to the package or the file name."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, colon, _line = where.rpartition(":")
    if not colon:  # a native frame: the library
        return f"{name} ({where})" if where else name
    for marker in ("/daetui/", "/asyncio/", "/site-packages/"):
        if not path.startswith("/"):  # relative to the daemon's directory: daetui/...
            break
        if marker in path:
            path = marker.strip("/") + "/" + path.split(marker, 1)[1]
            break
    else:
        path = Path(path).name
    return f"{name} ({path})" if path else name


# -- report ---------------------------------------------------------------------------------------------

def report(rounds: dict[str, list[Round]], seconds: float, method: str, firewall: str, obfs: str = "",
           peer: str = "ss-redir", server: str = "ss-server") -> None:
    """The table of daetui's rounds against the peer's (`daetui<obfs>` and `<peer><obfs>` in `rounds`)."""
    d, s = rounds[f"daetui{obfs}"], rounds[f"{peer}{obfs}"]

    def med(rs: list[Round], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rs)

    def cpu(rs: list[Round], who: str) -> float:
        return statistics.median(r.cpu[who] for r in rs)

    if peer == "ss-redir":
        behind = f" behind simple-obfs ({obfs.strip('+')})" if obfs else ""
        what = f"{method}, ss-server on {ADDR.hosts4[2]}{behind}"
    else:
        what = f"vmess ({VMESS_SECURITY}) over ws {WS_PATH}, v2ray 4.34 on {V2RAY_ADDR4}"
    print(f"\nproxied path, {what}; median of {len(d)} alternating rounds, {seconds:g}s each figure")
    print(f"{'':34} {'daetui':>9} {peer:>9} {'ratio':>6}")
    for label, attr, fmt in (("TCP upload, Gbit/s", "up", "9.2f"), ("TCP download, Gbit/s", "down", "9.2f"),
                             ("new connections/s", "cps", "9.0f")):
        a, b = med(d, attr), med(s, attr)
        print(f"{label:34} {a:{fmt}} {b:{fmt}} {a / b if b else float('nan'):6.2f}")
    for label, key in (("proxy CPU % during iperf3", "proxy"), (f"{server} CPU % during iperf3", "server"),
                       ("proxy CPU % during connections", "proxy cps"),
                       (f"{server} CPU % during connections", "server cps")):
        print(f"{label:34} {cpu(d, key):9.0f} {cpu(s, key):9.0f}")
    # What each proxy spends for its bytes and connections: steadier than the rates when
    # other processes share the machine's cores.
    a, b = (statistics.median(r.cpu["proxy"] / ((r.up + r.down) / 2) for r in rs) for rs in (d, s))
    print(f"{'proxy CPU % per Gbit/s (iperf3)':34} {a:9.1f} {b:9.1f} {a / b:6.2f}")
    a, b = (statistics.median(1e4 * r.cpu["proxy cps"] / r.cps for r in rs) for rs in (d, s))
    print(f"{'proxy CPU µs per connection':34} {a:9.0f} {b:9.0f} {a / b if b else float('nan'):6.2f}")
    print(f"TPROXY rule for {peer}: {firewall}")
    print("each round (upload / download Gbit/s, conn/s):")
    for i, (a, b) in enumerate(zip(d, s, strict=True)):
        print(f"  round {i + 1}: daetui {a.up:.2f} / {a.down:.2f}, {a.cps:.0f}   "
              f"{peer} {b.up:.2f} / {b.down:.2f}, {b.cps:.0f}")


def summarize(path: Path | None, d: list[Round], s: list[Round], method: str) -> None:
    """bench/all.py's rows: daetui against ss-redir, the same ss-server (no plugin), medians as the table's."""
    def med(rs: list[Round], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rs)

    record = _summary.record
    a, b = med(d, "cps"), med(s, "cps")
    record(path, _summary.PROXY_CPS, a, "conn/s", baseline=b, baseline_of="ss-redir", ratio=a / b if b else None,
           ratio_of="daetui/ss-redir", met=bool(b) and a / b >= 1.0,
           note=f"short request/answer connections, {method}, median of {len(d)} alternating rounds")
    a, b = (statistics.median(1e4 * r.cpu["proxy cps"] / r.cps for r in rs) if all(r.cps for r in rs)
            else float("nan") for rs in (d, s))
    record(path, "proxy CPU per connection", a, "µs", baseline=b, baseline_of="ss-redir", ratio=a / b,
           ratio_of="daetui/ss-redir", parent=_summary.PROXY_CPS)
    a, b = ((med(rs, "up") + med(rs, "down")) / 2 for rs in (d, s))
    record(path, _summary.PROXY_THROUGHPUT, a, "Gbit/s", baseline=b, baseline_of="ss-redir",
           ratio=a / b if b else None, ratio_of="daetui/ss-redir", met=bool(b) and a / b >= 1.1,
           note="iperf3, one stream: the mean of upload and download (each below)")
    for label, k in (("upload", "up"), ("download", "down")):
        a, b = med(d, k), med(s, k)
        record(path, f"TCP {label}", a, "Gbit/s", baseline=b, baseline_of="ss-redir", ratio=a / b if b else None,
               ratio_of="daetui/ss-redir", parent=_summary.PROXY_THROUGHPUT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", default="aes-256-gcm", help="aes-256-gcm or chacha20-ietf-poly1305 "
                    "(ss-server's aes-128-gcm is slow enough to be what is measured)")
    ap.add_argument("--firewall", default="nft", choices=("nft", "iptables", "iptables-legacy"),
                    help="what installs ss-redir's TPROXY rule")
    ap.add_argument("--profile", metavar="PY_SPY", help="py-spy binary: profile the daemon in an extra round")
    ap.add_argument("--native", action="store_true", help="with --profile: C frames too (py-spy --native)")
    ap.add_argument("--obfs", default="http", choices=("http", "tls", "none"),
                    help="also measure both proxies through simple-obfs in this mode (none: not)")
    ap.add_argument("--vmess-ws", action="store_true",
                    help="also measure vmess over ws: daetui and v2ray's own client against a v2ray server")
    ap.add_argument("--workers", type=int, default=0, help="daetui's global.relay_workers (default 0)")
    ap.add_argument("--clients", type=int, default=1,
                    help="client processes making the new connections at once (default 1: one after the other)")
    ap.add_argument("--lab", default="dtbenchpp")
    _summary.add_option(ap)
    args = ap.parse_args()
    OPTIONS.update(workers=args.workers, clients=args.clients)
    obfs = None if args.obfs == "none" else args.obfs
    for tool in (("iperf3", SS_REDIR, args.firewall) + (("obfs-local", "obfs-server") if obfs else ())
                 + (("v2ray",) if args.vmess_ws else ())):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found")

    from daetui.outbound.sip003 import parse_plugin
    from testkit.peers.shadowsocks import OBFS_SERVER, SsServer
    from testkit.peers.v2ray import V2ray, vmess_inbound, ws_settings

    lab = Lab(args.lab)
    if lab.is_up():
        sys.exit(f"lab {args.lab} is up already; take it down first (python -m daetui lab down?) or use --lab")
    lab.up()
    procs: list[subprocess.Popen[str]] = []
    ss = SsServer(lab, args.method, PASSWORD, SS_PORT, verbose=False)
    # The same cipher and password, behind obfs-server (no UDP: the bench measures TCP).
    ss_obfs = SsServer(lab, args.method, PASSWORD, SS_OBFS_PORT, verbose=False, udp=False, plugin=OBFS_SERVER,
                       plugin_opts=f"obfs={obfs};obfs-host={OBFS_HOST}",
                       client_plugin=parse_plugin(f"obfs-local;obfs={obfs};obfs-host={OBFS_HOST}")) if obfs else None
    # vmess over ws, no TLS; only warnings logged (access log to its file, the same for both clients).
    v2 = V2ray(lab, [vmess_inbound(VMESS_PORT, VMESS_UUID, network="ws", transport=ws_settings(WS_PATH))],
               address4=V2RAY_ADDR4, address6=V2RAY_ADDR6) if args.vmess_ws else None
    try:
        ns_exec(lab.lan, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1")
        procs += [iperf_server(lab.wan, TARGET, IPERF_PORT), cps_server(lab.wan, TARGET, RR_PORT, answer=True)]
        ss.start()
        if ss_obfs is not None:
            ss_obfs.start()
        if v2 is not None:
            v2.start()
        link = ss.node(4).link()
        time.sleep(0.3)
        direct = ask_once(lab)
        if direct != ADDR.client4:
            raise RuntimeError(f"without a proxy the server saw {direct}, not the client {ADDR.client4}")

        # Who runs against which server, and how its proxy starts.
        def ss_redir(port: int, plugin: str | None) -> Callable[[], Redir]:
            return lambda: Redir(lab, args.method, args.firewall, port, plugin)

        def daetui(link: str) -> Callable[[], Daemon]:
            return lambda: start_daetui(lab, link)

        sides: dict[str, tuple[LabPeer, Callable[[], Daemon | Redir]]] = {
            "daetui": (ss, daetui(link)), "ss-redir": (ss, ss_redir(SS_PORT, None))}
        if ss_obfs is not None:
            sides |= {f"daetui+{obfs}": (ss_obfs, daetui(ss_obfs.node(4).link())),
                      f"ss-redir+{obfs}": (ss_obfs, ss_redir(SS_OBFS_PORT, obfs))}
        if v2 is not None:
            sides |= {"daetui+vmess-ws": (v2, daetui(vmess_ws_link())),
                      "v2ray+vmess-ws": (v2, lambda: V2rayRedir(lab, args.firewall))}
        whos = list(sides)
        rounds: dict[str, list[Round]] = {who: [] for who in whos}
        print(f"proxied path: {args.rounds} alternating rounds, {args.method}, iperf3 and connections "
              f"{args.seconds:g}s each", flush=True)
        for i in range(args.rounds):
            for who in whos:
                t0 = time.monotonic()
                server, start = sides[who]
                proxy = start()
                try:
                    pid = proxy.pid
                    seen = ask_once(lab)
                    if seen == ADDR.client4:
                        raise RuntimeError(f"{who}: the flow was not proxied (the server saw the client itself)")
                    r = measure(lab, args.seconds, {"proxy": pid, "server": server.pid or 0})
                finally:
                    if isinstance(proxy, Daemon):
                        stop_daetui(proxy)
                    else:
                        proxy.stop()
                rounds[who].append(r)
                print(f"  round {i + 1} {who:15}: up {r.up:5.2f}  down {r.down:5.2f} Gbit/s  {r.cps:6.0f} conn/s  "
                      f"CPU proxy {r.cpu['proxy']:3.0f}/{r.cpu['proxy cps']:3.0f}% server {r.cpu['server']:3.0f}/"
                      f"{r.cpu['server cps']:3.0f}%  "
                      f"({time.monotonic() - t0:.0f}s)", flush=True)
        if args.rounds:
            report(rounds, args.seconds, args.method, args.firewall)
            summarize(args.summary, rounds["daetui"], rounds["ss-redir"], args.method)
            if ss_obfs is not None:
                report(rounds, args.seconds, args.method, args.firewall, f"+{obfs}")
            if v2 is not None:
                report(rounds, args.seconds, args.method, args.firewall, "+vmess-ws", peer="v2ray",
                       server="server")
        if args.profile:
            profile(lab, link, args.profile, args.seconds, args.native)
    finally:
        ss.stop()
        if ss_obfs is not None:
            ss_obfs.stop()
        if v2 is not None:
            v2.stop()
        end(procs)
        lab.down()
    return 0


if __name__ == "__main__":
    require_root("bench/proxy_path.py")
    sys.exit(main())
